"""Where metrics go: JSON lines and TensorBoard scalars in the workdir, one line on the console.

Only process 0 writes, so a multi-host run leaves one copy of the truth.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping

import jax
import ml_collections

METRICS_FILE = 'metrics.jsonl'
CONFIG_FILE = 'config.json'
RUN_INFO_FILE = 'run.json'


class MetricWriter:
    """Appends per-epoch scalars to ``metrics.jsonl`` and TensorBoard event files in ``workdir``."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, METRICS_FILE)
        self._tensorboard = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            from tensorboardX import SummaryWriter  # imported lazily: only process 0 needs it

            self._tensorboard = SummaryWriter(os.path.join(workdir, 'tensorboard'))

    def write(self, epoch: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {'epoch': epoch, **{k: float(v) for k, v in scalars.items()}}
        with open(self.path, 'a') as f:
            f.write(json.dumps(record) + '\n')
        for name, value in scalars.items():
            self._tensorboard.add_scalar(name, float(value), epoch)
        self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


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


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes the resolved config beside the metrics, so every run says how it was made."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run in ``workdir`` was trained with.

    Saved values are laid over today's defaults, so runs saved before a field existed still load
    (with that field's default).
    """
    from lclmt_jax.configs import default_config  # configs imports the model zoo; keep it lazy

    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path} not found: is {workdir!r} the workdir of a training run?')
    with open(path) as f:
        saved = json.load(f)
    config = default_config()
    _overlay(config, saved)
    return config


def _overlay(config: ml_collections.ConfigDict, saved: Mapping) -> None:
    """Writes JSON values into ``config`` recursively (JSON lists become the default's tuples)."""
    for key, value in saved.items():
        current = config.get(key)
        if isinstance(current, ml_collections.ConfigDict) and isinstance(value, Mapping):
            _overlay(current, value)
        elif isinstance(current, tuple) and isinstance(value, list):
            config[key] = tuple(value)
        elif key in config and current is not None and value is not None \
                and type(current) is not type(value):
            config[key] = type(current)(value)
        else:
            config[key] = value


def save_run_info(workdir: str, info: Mapping) -> None:
    """Writes what restoring the model needs beyond the config (input shape, number of classes)."""
    if jax.process_index() != 0:
        return
    with open(os.path.join(workdir, RUN_INFO_FILE), 'w') as f:
        json.dump(dict(info), f, indent=2)


def progress_line(epoch: int, num_epochs: int, scalars: Mapping[str, float], eta_s: float) -> str:
    """One console line per epoch: the headline metrics and the time left."""
    eta = datetime.timedelta(seconds=round(eta_s))
    return (f'epoch {epoch:>3}/{num_epochs}  loss {scalars["train_loss"]:.4f}  '
            f'train_acc {scalars["train_accuracy"]:.4f}  test_acc {scalars["test_accuracy"]:.4f}  '
            f'L {scalars["lipschitz"]:.3g}  margin {scalars["test_margin"]:.3f}'
            f' / req {scalars["required_margin"]:.3f}  '
            f'bound_met {scalars["test_bound_met"]:.3f}  '
            f'{scalars["epoch_seconds"]:.2f}s  ETA {eta}')
