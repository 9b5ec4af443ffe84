"""The files a run leaves in its workdir beside its checkpoints, written and read here.

``config.json`` (the resolved config), ``run.json`` (dataset name, input shape, classes) and
``metrics.jsonl`` (one record per epoch, written through ``lclmt_jax.writers``). Only process 0
writes. ``config.json`` and ``run.json`` are written with each checkpoint, so they bind a workdir
only once something was trained there: a run that diverged before its first checkpoint leaves
none, and the next command may use another config. On resume ``metrics.jsonl`` is rewritten to
hold exactly the epochs of the checkpoint resumed from, once each. Needs neither TensorFlow
nor the trainer, so reports and comparisons read runs cheaply. Which config changes a workdir's
training survives is ``lclmt_jax.resume``'s.
Files written by older versions are read in today's terms (``LEGACY_METRIC_NAMES``,
``config_from_dict``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import jax
import ml_collections

from lclmt_jax import console, paths
from lclmt_jax.config_schema import default_config

METRICS_FILE = 'metrics.jsonl'
CONFIG_FILE = 'config.json'
RUN_INFO_FILE = 'run.json'

# Metric names older versions wrote -> today's names (``lclmt_jax.metrics``).
LEGACY_METRIC_NAMES = {'lipschitz': 'test_lipschitz', 'required_margin': 'test_required_margin',
                       'steps_per_sec': 'epochs_per_second'}


def check_workdir(workdir: str) -> None:
    """Refuses a ``--workdir`` that cannot be one, before any work: empty, a file, or below a
    file. Creates nothing."""
    if not workdir:
        raise ValueError('--workdir is empty')
    path = os.path.abspath(workdir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        if path == os.path.abspath(workdir):
            raise ValueError(f'--workdir {workdir} is a file, not a directory')
        raise ValueError(f'--workdir {workdir} lies below {path}, which is a file')


def _atomic_write(path: str, text: str) -> None:
    """Replaces ``path`` by ``text`` in one step: a reader sees the old or the new file."""
    temporary = f'{path}.tmp'
    with open(temporary, 'w') as f:
        f.write(text)
    os.replace(temporary, path)


def _records(path: str, skip_broken: bool = False) -> list[dict]:
    """The JSON records of a JSON-lines file; a broken line raises ValueError naming the file
    and line, or is dropped with ``skip_broken`` (a run killed mid-write leaves half a line)."""
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                int(record['epoch'])
            except OverflowError:  # an infinite epoch: resuming drops it, readers name it
                if skip_broken:
                    continue
            except (ValueError, TypeError, KeyError) as error:
                if skip_broken:
                    continue
                raise ValueError(f'{path}, line {number}: not a metrics record '
                                 f'({console.one_line(error, with_type=True)})') from None
            records.append(record)
    return records


def rewrite_metrics(workdir: str, last_epoch: int) -> None:
    """Rewrites ``metrics.jsonl`` to hold the epochs 1..``last_epoch`` once each, in order
    (process 0, atomically).

    Called on every (re)start with the epoch resumed from: records after it (a run stopped
    after its last checkpoint, or one that fell back) and repeated or broken lines go; of an
    epoch written twice the last record, written by the run that reached the checkpoint, stays.
    """
    path = paths.confined(workdir, METRICS_FILE)
    if jax.process_index() != 0 or not os.path.exists(path):
        return
    last = {int(record['epoch']): record for record in _records(path, skip_broken=True)
            if 1 <= int(record['epoch']) <= last_epoch}
    _atomic_write(path, ''.join(json.dumps(last[epoch]) + '\n' for epoch in sorted(last)))


def read_metrics(workdir: str) -> list[dict]:
    """The per-epoch records of a run, in epoch order, with today's metric names; a null figure
    (not finite when written, ``writers.JsonlWriter``) reads as NaN."""
    records = _records(paths.confined(workdir, METRICS_FILE))
    return [{LEGACY_METRIC_NAMES.get(name, name): math.nan if value is None else value
             for name, value in record.items()} for record in records]


def read_json(path: str) -> dict:
    """A JSON object from ``path``; a broken file raises ValueError naming it."""
    try:
        with open(path) as f:
            value = json.load(f)
    except ValueError as error:
        raise ValueError(f'{path} is not valid JSON ({console.one_line(error)}): restore or '
                         'delete it') from None
    if not isinstance(value, dict):
        raise ValueError(f'{path} holds {type(value).__name__}, not a JSON object')
    return value


def save_json(workdir: str, name: str, value: Mapping) -> None:
    """Writes ``value`` as ``workdir/name`` (process 0, atomically), e.g. the resolved config or
    run info."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    _atomic_write(paths.confined(workdir, name), json.dumps(dict(value), indent=2, sort_keys=True))


def config_as_dict(config: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON values (tuples become lists)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def config_from_dict(saved: Mapping) -> ml_collections.ConfigDict:
    """A saved config laid over today's defaults, so runs saved before a field existed still load
    (with that field's default); JSON lists become the defaults' tuples. Older layouts are moved
    to today's: ``attack`` (CW-L2 settings) is ``evals.cw_l2``."""
    saved = dict(saved)
    if 'attack' in saved:
        saved.setdefault('evals', {})
        saved['evals'] = {**saved['evals'], 'cw_l2': saved.pop('attack')}
    config = default_config()
    config.update(saved)
    return config


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run in ``workdir`` was trained with (its ``config.json``)."""
    path = paths.confined(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path} not found: is {workdir!r} the workdir of a training run?')
    return config_from_dict(read_json(path))
