"""Progress lines with an ETA for long evaluations (certificates, attacks).

A computation that runs for minutes says how far it is, at most every ``every_s`` seconds:

    cw_l2: 600/2000 units of work (30%), 0:01:12 elapsed, ETA 0:02:48

The ETA extrapolates the rate since the first update, not since the start: the first unit of
work of a jitted computation includes its compilation, which the rest does not repeat. Lines go
through ``console.say`` on stderr (process 0 only), so they never mix with the results that
stdout carries.

A library function takes a ``progress`` callback, ``Callable[[int, int], None]`` called as
``progress(done, total)`` whenever ``done`` of ``total`` units are finished; ``Progress`` is such
a callback, and ``None`` means silence (tests, library use). ``batches`` drives it from a
batched loop (the certificates' float64 logits and rounding allowance, for instance).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator

ProgressFn = Callable[[int, int], None]


def duration(seconds: float) -> str:
    """``seconds`` as H:MM:SS, rounded to the second (the format of the training's ETA)."""
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


def eta_seconds(done: int, total: int, seconds_since_first: float,
                done_at_first: int) -> float | None:
    """Seconds left at the rate measured since the first update (``done_at_first`` units were
    finished then), or None while that rate is unknown (no unit finished since)."""
    if done >= total:
        return 0.0
    if done <= done_at_first or seconds_since_first <= 0.0:
        return None
    rate = (done - done_at_first) / seconds_since_first
    return (total - done) / rate


class Progress:
    """A ``progress(done, total)`` callback that prints ``what``'s progress with an ETA.

    Prints the first update, then at most one line every ``every_s`` seconds, and always the
    last one (``done == total``), as ``what: done/total unit (pct), elapsed, ETA``.
    """

    def __init__(self, what: str, unit: str = 'points', every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 write: Callable[[str], None] | None = None):
        self.what, self.unit, self.every_s, self.clock = what, unit, every_s, clock
        self._write = write
        self.started = clock()
        self._first: tuple[float, int] | None = None  # (time, done) of the first update
        self._printed_at: float | None = None

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if self._first is None:
            self._first = (now, done)
        due = self._printed_at is None or now - self._printed_at >= self.every_s
        if due or done >= total:
            self._printed_at = now
            self.emit(self.line(done, total, now))

    def line(self, done: int, total: int, now: float) -> str:
        """The progress line for ``done`` of ``total`` at time ``now``."""
        first_time, first_done = self._first if self._first is not None else (now, done)
        share = f' ({100.0 * done / total:.0f}%)' if total > 0 else ''
        text = (f'{self.what}: {done}/{total} {self.unit}{share}, '
                f'{duration(now - self.started)} elapsed')
        if done >= total:
            return text + ', done'
        eta = eta_seconds(done, total, now - first_time, first_done)
        return text + (f', ETA {duration(eta)}' if eta is not None else '')

    def emit(self, line: str) -> None:
        """Writes ``line``: through ``console.say`` on stderr unless a writer was given."""
        if self._write is not None:
            self._write(line)
            return
        from lclmt_jax import console

        console.say(line, stderr=True)


def batches(count: int, batch_size: int,
            progress: ProgressFn | None = None) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive batches over ``count`` rows, calling
    ``progress(stop, count)`` as each batch is finished (when the loop asks for the next): the
    hook for a batched loop, e.g. ``for start, stop in batches(len(images), 1000, progress):``.
    """
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        yield start, stop
        if progress is not None:
            progress(stop, count)
