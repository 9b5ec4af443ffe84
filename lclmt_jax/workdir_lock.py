"""One training run per workdir: an exclusive lock file, ``<workdir>/lock``.

Two runs writing one workdir interleave their checkpoints and metrics: one saves while the other
restores, a checkpoint loses its manifest, ``metrics.jsonl`` gains a second copy of every epoch.
Training therefore holds ``<workdir>/lock`` for as long as it runs. The file is created with
``O_CREAT | O_EXCL`` (atomic: of two runs started together exactly one creates it) and holds
``{"pid", "host", "started"}`` so that a refused run names the holder in its one error line.

A lock outlives its process only when that process was killed (``kill -9``, a lost node); every
other exit, errors and Ctrl-C included, removes it. A lock whose process is gone (same host, no
such pid, or a pid reused by a process started later) is stale and is taken over with a one-line
warning; a lock held from another host cannot be checked from here and is never taken over.

In a multi-process job process 0 takes the lock for all, and every process learns the outcome
from it, so a refused job stops on every process.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
from collections.abc import Iterator

import jax
import numpy as np

from lclmt_jax import console, paths

LOCK_FILE = 'lock'


class WorkdirLockedError(RuntimeError):
    """Another run holds the workdir's lock."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _own_record() -> dict:
    return {'pid': os.getpid(), 'host': socket.gethostname(),
            'started': _now().isoformat(timespec='seconds'), 'command': ' '.join(sys.argv)}


def _read(path: str) -> dict | None:
    """The lock's record, ``{}`` if it cannot be parsed (a writer killed mid-write), None if the
    file is gone."""
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _process_start(pid: int) -> datetime.datetime | None:
    """When process ``pid`` started (Linux ``/proc``), or None where that cannot be read."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            ticks = int(f.read().rsplit(')', 1)[1].split()[19])  # field 22: starttime
        with open('/proc/stat') as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith('btime '))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    seconds = boot + ticks / os.sysconf('SC_CLK_TCK')
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


def is_stale(record: dict) -> bool:
    """Whether the lock ``record`` was left by a process of this host that no longer runs.

    A pid that runs again but started after the lock was taken belongs to another process. A
    lock of another host, or one without a readable record, is never called stale.
    """
    try:
        pid, host = int(record['pid']), str(record['host'])
        started = datetime.datetime.fromisoformat(str(record['started']))
    except (KeyError, TypeError, ValueError):
        return False
    if host != socket.gethostname() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    process_started = _process_start(pid)
    return process_started is not None and \
        process_started > started + datetime.timedelta(seconds=2)


def describe(record: dict) -> str:
    """The holder of a lock, for the one line that refuses a run."""
    if not record:
        return 'a run whose lock record is unreadable'
    return (f'process {record.get("pid")} on host {record.get("host")} '
            f'(started {record.get("started")})')


def live_holder(workdir: str) -> str | None:
    """The training run that holds ``workdir``'s lock and still runs (``describe``d), or None:
    its newest checkpoint may be between its save and its manifest."""
    record = _read(paths.confined(workdir, LOCK_FILE))
    if record is None or (record and is_stale(record)):
        return None
    return describe(record)


def _create(path: str) -> bool:
    """Creates the lock holding this process's record; False if it exists."""
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, 'w') as f:
        json.dump(_own_record(), f)
    return True


def _take_over(path: str, stale: dict) -> None:
    """Moves the stale lock ``stale`` out of the way, unless another run took it over first.

    The lock is renamed to a name of this process's own (only one renamer can succeed), then
    compared with what was judged stale: a fresh lock moved by mistake is put back.
    """
    moved = f'{path}.stale.{os.getpid()}'
    try:
        os.rename(path, moved)
    except FileNotFoundError:  # another run moved it first
        return
    if _read(moved) == stale:
        os.remove(moved)
        return
    with contextlib.suppress(FileExistsError):
        os.link(moved, path)
    os.remove(moved)


def acquire(workdir: str) -> str:
    """Takes ``<workdir>/lock`` (creating the workdir); returns its path.

    Raises:
      WorkdirLockedError: naming the holder, when a live run holds it.
      OSError: when the workdir cannot be written (a read-only filesystem, no permission).
    """
    path = paths.confined(workdir, LOCK_FILE)
    os.makedirs(workdir, exist_ok=True)
    for _ in range(3):
        if _create(path):
            return path
        record = _read(path)
        if record is None:
            continue  # released in between: try again
        if not is_stale(record):
            raise WorkdirLockedError(
                f'{workdir} is in use by {describe(record)}: one run per workdir; wait for it to '
                f'end, or delete {path} if that process is gone')
        console.say(f'warning: taking over the stale lock {path} of {describe(record)}, which '
                    'no longer runs', stderr=True)
        _take_over(path, record)
    raise WorkdirLockedError(f'{workdir} is in use: {path} keeps reappearing; another run is '
                             'starting there')


def release(path: str) -> None:
    """Removes the lock at ``path`` if this process holds it."""
    record = _read(path)
    if record and record.get('pid') == os.getpid() and record.get('host') == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _agree(ok: bool) -> bool:
    """Process 0's ``ok`` on every process (itself where there is one process)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
    """Holds ``<workdir>/lock`` (process 0, for every process of the job) inside the block and
    releases it however the block ends."""
    path, failure = None, None
    if jax.process_index() == 0:
        try:
            path = acquire(workdir)
        except (WorkdirLockedError, OSError) as error:
            failure = error
    if not _agree(failure is None):
        if failure is not None:
            raise failure
        raise WorkdirLockedError(f'{workdir}: process 0 of this job could not lock it')
    try:
        yield
    finally:
        if path is not None:
            release(path)
