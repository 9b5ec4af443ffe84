"""The files a run leaves in its workdir beside its checkpoints, written and read here.

``config.json`` (the resolved config), ``run.json`` (dataset name, input shape, classes) and
``metrics.jsonl`` (one record per epoch, written through ``lclmt_jax.writers``). Only process 0
writes. Needs neither TensorFlow nor the trainer, so reports and comparisons read runs cheaply.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax
import ml_collections

from lclmt_jax.configs import default_config

METRICS_FILE = 'metrics.jsonl'
CONFIG_FILE = 'config.json'
RUN_INFO_FILE = 'run.json'


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
    """The per-epoch records of a run, in epoch order."""
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]


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
    (with that field's default); JSON lists become the defaults' tuples."""
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
