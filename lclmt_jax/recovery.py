"""What a training run does when something goes wrong in its epoch loop: the policy, kept out of
``train.py`` so the loop reads as training.

* A non-finite loss in the first epoch after a resume falls back once to the checkpoint before
  the one resumed from (which may hold data no manifest vouched for); when the epochs retrained
  from there reach the suspect checkpoint's epoch, it is kept if identical and otherwise set
  aside to ``<epoch>.nonfinite`` (``NonFiniteGuard``). A second non-finite loss, or one with
  nothing to fall back to, stops the run with one line (``NonFiniteLossError``).
* Ctrl-C becomes ``TrainingInterrupted`` and a full disk ``DiskFullError``, each one line naming
  what is kept (``translated_failures``); every earlier checkpoint stays. A checkpoint is
  written with its manifest or not at all: Ctrl-C waits for both (``save_checkpoint``), and the
  partial write of a save that found the disk full is removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax

from lclmt_jax import checkpoints, console, run_files


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or Inf loss; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C (SIGINT) stopped training; every checkpoint is kept and the same command resumes."""


class DiskFullError(OSError):
    """No space was left on the device while a run wrote its workdir."""


def kept_line(epochs: list[int]) -> str:
    """What a stopped run with checkpoints of ``epochs`` leaves to resume from, for its line."""
    return f'the checkpoint of epoch {epochs[-1]} is kept' if epochs else \
        'no checkpoint was written'


def kept(workdir: str) -> str:
    """What a stopped run leaves in ``workdir`` to resume from, for its one line."""
    return kept_line(checkpoints.saved_epochs(checkpoints.checkpoint_directory(workdir)))


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C inside the block takes effect when it ends: a checkpoint is written with its
    manifest, or not at all (a save takes seconds at most)."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    received = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


def is_disk_full(error: BaseException | None) -> bool:
    """Whether ``error``, or an error it was raised from, says the device is full (orbax reports
    it as a ValueError quoting the OS error)."""
    while error is not None:
        if (isinstance(error, OSError) and error.errno == errno.ENOSPC) \
                or 'No space left on device' in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_error(workdir: str, path: str, needed: int) -> DiskFullError:
    """The one line for a full disk: where, how much is needed and free, what is kept."""
    root = checkpoints.checkpoint_directory(workdir)
    kept = checkpoints.saved_epochs(root)
    free = shutil.disk_usage(next(p for p in (path, workdir, root, os.path.dirname(path), '/')
                                  if os.path.exists(p))).free
    return DiskFullError(f'no space left on device writing {path}: it needs about '
                         f'{needed / 1e6:.1f} MB, {free / 1e6:.1f} MB are free; {kept_line(kept)}; '
                         'free some space and resume with the same command')


def save_checkpoint(manager: Any, epoch: int, state: Any, config: dict, run_info: dict) -> None:
    """``checkpoints.save`` as a training run needs it: Ctrl-C during the save and the manifest
    takes effect once both are written; a full disk raises DiskFullError naming the path and the
    space needed (the size of the previous checkpoint, or of the state), after the partial write
    is removed (older checkpoints are untouched)."""
    root = str(manager.directory)
    try:
        with interrupts_deferred():
            checkpoints.save(manager, epoch, state, config, run_info)
    except Exception as error:
        if not is_disk_full(error):
            raise
        previous = [e for e in checkpoints.saved_epochs(root) if e < epoch]
        needed = checkpoints.size(checkpoints.step_directory(root, previous[-1])) if previous \
            else sum(leaf.nbytes for leaf in jax.tree.leaves(state) if hasattr(leaf, 'nbytes'))
        checkpoints.remove_partial(root, epoch)
        raise disk_full_error(os.path.dirname(root), checkpoints.step_directory(root, epoch),
                              needed) from None




class NonFiniteGuard:
    """The non-finite-loss policy of one training run resumed from ``start_epoch``.

    ``abstract`` is the train state's shapes, dtypes and shardings; ``check`` the run's
    checkpoint-compatibility check (``checkpoints.restore_train_state``).
    """

    def __init__(self, workdir: str, start_epoch: int, abstract: Any, check: Callable):
        self.workdir, self.start_epoch = workdir, start_epoch
        self.abstract, self.check = abstract, check
        self.fell_back: tuple[int, str] | None = None  # (epoch resumed from, its failure)

    def fall_back(self, epoch: int, bad_step: int) -> tuple[Any, int]:
        """``(state, next epoch)`` to continue from after a non-finite loss at ``epoch``, or
        NonFiniteLossError when the policy says stop."""
        failure = f'non-finite loss at epoch {epoch}, step {bad_step + 1} of the epoch'
        if self.fell_back is None and self.start_epoch and epoch == self.start_epoch + 1:
            previous, previous_epoch = checkpoints.restore_train_state(
                self.workdir, self.abstract, self.check, below=self.start_epoch)
            if previous_epoch:
                console.say(f'warning: {failure}, right after resuming from the checkpoint of '
                            f'epoch {self.start_epoch}; falling back once to the checkpoint of '
                            f'epoch {previous_epoch}', stderr=True)
                self.fell_back = (self.start_epoch, failure)
                run_files.rewrite_metrics(self.workdir, previous_epoch)
                return previous, previous_epoch + 1
        if self.fell_back is not None:
            failure = (f'{self.fell_back[1]}, right after resuming from the checkpoint of epoch '
                       f'{self.fell_back[0]}, and again ({failure}) after falling back: the '
                       'divergence is the training\'s, not a checkpoint\'s')
        raise NonFiniteLossError(f'{failure}; {kept(self.workdir)}')

    def replaces_suspect(self, epoch: int, state: Any) -> bool:
        """After a fall-back, at the epoch of the checkpoint training diverged from: sets that
        checkpoint aside (``<epoch>.nonfinite``) unless the retrained state equals it, and says
        whether the caller must save the retrained state in its place."""
        if self.fell_back is None or epoch != self.fell_back[0]:
            return False
        if checkpoints.same_state(self.workdir, epoch, state):
            return False
        checkpoints.set_aside(
            checkpoints.checkpoint_directory(self.workdir), epoch,
            NonFiniteLossError(self.fell_back[1]), checkpoints.NONFINITE_SUFFIX,
            'differs from its epoch trained again and training diverged from it')
        return True

    def at_suspect(self, epoch: int) -> bool:
        """Whether ``epoch`` is the suspect checkpoint's, retrained after a fall-back."""
        return self.fell_back is not None and epoch == self.fell_back[0]


@contextlib.contextmanager
def translated_failures(workdir: str, abstract: Any) -> Iterator[dict]:
    """Turns Ctrl-C and a full disk inside the block into one-line errors naming what is kept.

    Yields a dict whose ``'epoch'`` the loop keeps current, for the Ctrl-C line.
    """
    progress = {'epoch': 0}
    try:
        yield progress
    except KeyboardInterrupt:
        raise TrainingInterrupted(f'interrupted at epoch {progress["epoch"]}; {kept(workdir)}; '
                                  'resume with the same command') from None
    except OSError as error:
        if isinstance(error, DiskFullError) or not is_disk_full(error):
            raise
        needed = sum(leaf.nbytes for leaf in jax.tree.leaves(abstract))
        raise disk_full_error(workdir, error.filename or workdir, needed) from None
