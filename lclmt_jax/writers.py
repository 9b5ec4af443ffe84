"""Where metrics go: clu metric writers for ``metrics.jsonl``, TensorBoard and one console line.

The trainer writes every epoch's scalars through one clu ``MultiWriter`` and flushes it at the
end of the epoch: TensorBoard event files (clu's ``SummaryWriter``), one JSON record per epoch
in ``metrics.jsonl`` (the file the reports and ``--mode=compare`` read) and one line on the
console, whose time left comes from clu's ``ReportProgress``. Only process 0 writes, so a
multi-host run leaves one copy of the truth.

clu's writers import TensorFlow (for TensorBoard), so only ``train_and_evaluate`` imports this
module: the step functions, benchmarks and evaluation run without it.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
from clu import metric_writers, periodic_actions
from clu.metric_writers import interface

from lclmt_jax.run_files import METRICS_FILE


class ScalarWriter(interface.MetricWriter):
    """A clu writer that keeps the scalars of each step until ``flush``; other kinds are dropped.

    Subclasses implement ``write_record(step, scalars)``, called once per step at ``flush`` with
    everything written for that step (several ``write_scalars`` calls are merged).
    """

    def __init__(self):
        self._pending: dict[int, dict[str, float]] = {}

    def write_record(self, step: int, scalars: Mapping[str, float]) -> None:
        raise NotImplementedError

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        self._pending.setdefault(int(step), {}).update(
            {name: float(value) for name, value in scalars.items()})

    def flush(self) -> None:
        for step in sorted(self._pending):
            self.write_record(step, self._pending[step])
        self._pending = {}

    def close(self) -> None:
        self.flush()

    def write_summaries(self, step, values, metadata=None):
        pass

    def write_images(self, step, images):
        pass

    def write_videos(self, step, videos):
        pass

    def write_audios(self, step, audios, *, sample_rate):
        pass

    def write_texts(self, step, texts):
        pass

    def write_histograms(self, step, arrays, num_buckets=None):
        pass

    def write_hparams(self, hparams):
        pass


class JsonlWriter(ScalarWriter):
    """Appends one JSON record ``{"epoch": step, **scalars}`` per step to a file."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def write_record(self, step: int, scalars: Mapping[str, float]) -> None:
        with open(self.path, 'a') as f:
            f.write(json.dumps({'epoch': step, **scalars}) + '\n')


class ConsoleWriter(ScalarWriter):
    """Prints one line per epoch: the headline metrics and the time left.

    The time left comes from clu's ``ReportProgress`` (``steps_per_sec``, one step per epoch).
    """

    def __init__(self, num_epochs: int):
        super().__init__()
        self.num_epochs = num_epochs

    def write_record(self, step: int, scalars: Mapping[str, float]) -> None:
        print(progress_line(step, self.num_epochs, scalars), flush=True)


def progress_line(epoch: int, num_epochs: int, scalars: Mapping[str, float]) -> str:
    """One console line per epoch: the headline metrics, and the ETA when the rate is known."""
    line = (f'epoch {epoch:>3}/{num_epochs}  loss {scalars["train_loss"]:.4f}  '
            f'train_acc {scalars["train_accuracy"]:.4f}  test_acc {scalars["test_accuracy"]:.4f}  '
            f'L {scalars["lipschitz"]:.3g}  margin {scalars["test_margin"]:.3f}'
            f' / req {scalars["required_margin"]:.3f}  '
            f'bound_met {scalars["test_bound_met"]:.3f}  {scalars["epoch_seconds"]:.2f}s')
    rate = scalars.get('steps_per_sec', 0.0)
    if rate > 0:
        line += f'  ETA {datetime.timedelta(seconds=round((num_epochs - epoch) / rate))}'
    return line


def create_writer(workdir: str, num_epochs: int) -> metric_writers.MetricWriter:
    """metrics.jsonl + TensorBoard + console on process 0; nothing elsewhere."""
    if jax.process_index() != 0:
        return metric_writers.MultiWriter([])
    os.makedirs(workdir, exist_ok=True)
    return metric_writers.MultiWriter([
        JsonlWriter(os.path.join(workdir, METRICS_FILE)),
        metric_writers.SummaryWriter(os.path.join(workdir, 'tensorboard')),
        ConsoleWriter(num_epochs),
    ])


def create_progress(num_epochs: int, writer: metric_writers.MetricWriter,
                    start_epoch: int) -> periodic_actions.ReportProgress:
    """clu's progress reporter, one step per epoch, started at ``start_epoch``.

    Call it with each finished epoch before writing that epoch's scalars: it adds
    ``steps_per_sec`` (epochs per second, for the console's ETA) and ``uptime``.
    """
    progress = periodic_actions.ReportProgress(num_train_steps=num_epochs, writer=writer,
                                               every_steps=1, every_secs=None)
    progress(start_epoch)
    return progress
