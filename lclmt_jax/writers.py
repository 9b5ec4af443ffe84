"""Where metrics go: ``metrics.jsonl``, TensorBoard event files and one console line.

The trainer writes every epoch's scalars through one ``MultiWriter`` and flushes it at the end
of the epoch: one JSON record per epoch in ``metrics.jsonl`` (the file the reports and
``--mode=compare`` read), TensorBoard event files and one console line with the time left. Only
process 0 writes, so a multi-host run leaves one copy of the truth.

``standard_json`` is the one rule for the JSON files the reports write (``comparison.json``,
``sweep_member.json``): a non-finite number is written as ``null``, never as Python's ``NaN`` or
``Infinity``, which JSON does not have.

The writers follow clu's ``MetricWriter`` interface (``write_scalars``, ``flush``, ``close``) but
not its classes: importing anything from ``clu.metric_writers`` imports TensorFlow (~3-8 s, 5-10%
of a paper-MLP run); TensorBoard's record format is written here with plain file I/O.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from lclmt_jax import paths
from lclmt_jax.run_files import METRICS_FILE


def standard_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-infinity) replaced by None, inside dicts,
    lists and tuples too: JSON has no such numbers (Python's ``json`` would write ``NaN`` or
    ``Infinity``, which other readers refuse), and ``null`` says "no finite value"."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: standard_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [standard_json(item) for item in value]
    return value


def write_json(path: str, value: Any) -> None:
    """``value`` as standard JSON (``standard_json``), indented, in ``path``."""
    text = json.dumps(standard_json(value), indent=2, allow_nan=False)
    with open(path, 'w') as f:
        f.write(text + '\n')


class ScalarWriter:
    """Keeps the scalars of each step until ``flush`` (clu's ``MetricWriter`` interface, scalars
    only). Subclasses implement ``write_record(step, scalars)``, called once per step at
    ``flush`` with everything written for that step (several ``write_scalars`` calls merged)."""

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


class MultiWriter:
    """Sends every call to each of ``writers`` (clu's ``MultiWriter``, scalars only)."""

    def __init__(self, writers: Sequence[ScalarWriter]):
        self.writers = list(writers)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for writer in self.writers:
            writer.write_scalars(step, scalars)

    def flush(self) -> None:
        for writer in self.writers:
            writer.flush()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


class TensorBoardWriter(ScalarWriter):
    """Scalars as TensorBoard events in ``logdir`` (``tensorboard --logdir``), one per name.

    One event file per writer, in TensorBoard's record format, written with plain file I/O:
    TensorBoard's ``EventFileWriter`` would import TensorFlow for ``tf.io.gfile`` when installed.
    """

    def __init__(self, logdir: str):
        super().__init__()
        os.makedirs(logdir, exist_ok=True)
        name = f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.0'
        self._records = RecordWriter(open(os.path.join(logdir, name), 'wb'))  # noqa: SIM115
        self._add(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

    def _add(self, event: event_pb2.Event) -> None:
        self._records.write(event.SerializeToString())

    def write_record(self, step: int, scalars: Mapping[str, float]) -> None:
        values = [summary_pb2.Summary.Value(tag=name, simple_value=value)
                  for name, value in scalars.items()]
        self._add(event_pb2.Event(wall_time=time.time(), step=step,
                                  summary=summary_pb2.Summary(value=values)))

    def flush(self) -> None:
        super().flush()
        self._records.flush()

    def close(self) -> None:
        super().close()
        if not self._records.closed:
            self._records.close()


class JsonlWriter(ScalarWriter):
    """Appends one JSON record ``{"epoch": step, **scalars}`` per step to a file, in standard
    JSON (``standard_json``: a figure that is not finite, e.g. a diverged loss, is null, which
    ``run_files.read_metrics`` reads back as NaN)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def write_record(self, step: int, scalars: Mapping[str, float]) -> None:
        with open(self.path, 'a') as f:
            f.write(json.dumps(standard_json({'epoch': step, **scalars}), allow_nan=False) + '\n')


class ConsoleWriter(ScalarWriter):
    """Prints one line per epoch: the headline metrics and the time left.

    The time left comes from ``ReportProgress`` (``epochs_per_second``).
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
            f'L {scalars["test_lipschitz"]:.3g}  margin {scalars["test_margin"]:.3f}'
            f' / req {scalars["test_required_margin"]:.3f}  '
            f'bound_met {scalars["test_bound_met"]:.3f}  {scalars["epoch_seconds"]:.2f}s')
    rate = scalars.get('epochs_per_second', 0.0)
    if rate > 0:
        line += f'  ETA {datetime.timedelta(seconds=round((num_epochs - epoch) / rate))}'
    return line


def create_writer(workdir: str, num_epochs: int) -> MultiWriter:
    """metrics.jsonl + TensorBoard + console on process 0; nothing elsewhere."""
    if jax.process_index() != 0:
        return MultiWriter([])
    os.makedirs(workdir, exist_ok=True)
    return MultiWriter([
        JsonlWriter(paths.confined(workdir, METRICS_FILE)),
        TensorBoardWriter(paths.confined(workdir, 'tensorboard')),
        ConsoleWriter(num_epochs),
    ])


class ReportProgress:
    """Adds ``uptime`` (seconds since the run (re)started) and, from the second epoch of this
    invocation on, ``epochs_per_second`` (measured from the end of the first epoch, so that
    compilation and the first epoch's warm-up do not enter the console's ETA) to ``writer``
    for each epoch it is called with, as clu's ``periodic_actions.ReportProgress`` does with
    one step per epoch."""

    def __init__(self, writer: MultiWriter):
        self.writer = writer
        self.start_time = time.monotonic()
        self.first: tuple[int, float] | None = None  # (epoch, time) at the first call

    def __call__(self, epoch: int) -> None:
        now = time.monotonic()
        scalars = {'uptime': now - self.start_time}
        if self.first is None:
            self.first = (epoch, now)
        elif epoch > self.first[0] and now > self.first[1]:
            scalars['epochs_per_second'] = (epoch - self.first[0]) / (now - self.first[1])
        self.writer.write_scalars(epoch, scalars)


def create_progress(writer: MultiWriter) -> ReportProgress:
    """The progress reporter; call it with each finished epoch before writing that epoch's
    scalars."""
    return ReportProgress(writer)
