"""The files a run leaves in its workdir beside its checkpoints, written and read here, and
the resume policy: which config changes a workdir's training survives.

``config.json`` (the resolved config), ``run.json`` (dataset name, input shape, classes) and
``metrics.jsonl`` (one record per epoch, written through ``lclmt_jax.writers``). Only process 0
writes. Needs neither TensorFlow nor the trainer, so reports and comparisons read runs cheaply.
Files written by older versions are read in today's terms (``LEGACY_METRIC_NAMES``,
``config_from_dict``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import flax
import jax
import ml_collections

from lclmt_jax.configs import default_config

METRICS_FILE = 'metrics.jsonl'
CONFIG_FILE = 'config.json'
RUN_INFO_FILE = 'run.json'

# Metric names older versions wrote -> today's names (``lclmt_jax.metrics``).
LEGACY_METRIC_NAMES = {'lipschitz': 'test_lipschitz', 'required_margin': 'test_required_margin',
                       'steps_per_sec': 'epochs_per_second'}

# Fields that may change between invocations on one workdir without invalidating its training:
# how long it trains (it resumes), how often it checkpoints, where the data files are, how it is
# evaluated (``attack``: the CW-L2 settings of older versions).
NOT_TRAINING_FIELDS = ('num_epochs', 'checkpoint_every_epochs', 'eval_batch_size', 'certificate',
                       'evaluators', 'evals', 'evaluation', 'attack', 'data.path',
                       'data.manual_dir', 'data.data_dir', 'data.pipeline',
                       'bound.sound_every_epochs')


def truncate_metrics(workdir: str, last_epoch: int) -> None:
    """Drops records after ``last_epoch`` (left by a run killed after its last checkpoint)."""
    path = os.path.join(workdir, METRICS_FILE)
    if jax.process_index() != 0 or not os.path.exists(path):
        return
    with open(path) as f:
        records = [line for line in f if line.strip() and json.loads(line)['epoch'] <= last_epoch]
    with open(path, 'w') as f:
        f.writelines(records)


def read_metrics(workdir: str) -> list[dict]:
    """The per-epoch records of a run, in epoch order, with today's metric names."""
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [{LEGACY_METRIC_NAMES.get(name, name): value for name, value in record.items()}
            for record in records]


def save_json(workdir: str, name: str, value: Mapping) -> None:
    """Writes ``value`` as ``workdir/name`` (process 0), e.g. the resolved config or run info."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, name), 'w') as f:
        json.dump(dict(value), f, indent=2, sort_keys=True)


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
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path} not found: is {workdir!r} the workdir of a training run?')
    with open(path) as f:
        return config_from_dict(json.load(f))


def check_same_training(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses to resume a workdir whose run was trained with other training fields.

    Compares the workdir's ``config.json`` with ``config``, field by field, except
    ``NOT_TRAINING_FIELDS``; a field only one of them has was added to (or dropped from) the code
    in between and does not count.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = flax.traverse_util.flatten_dict(json.load(f), sep='.')
    new = flax.traverse_util.flatten_dict(config_as_dict(config), sep='.')
    changed = sorted(key for key in old.keys() & new.keys() if old[key] != new[key] and not any(
        key == field or key.startswith(f'{field}.') for field in NOT_TRAINING_FIELDS))
    if changed:
        key = changed[0]
        raise ValueError(f'{workdir} was trained with {key}={old[key]!r}, the config now says '
                         f'{new[key]!r}; use another --workdir or delete that run')
