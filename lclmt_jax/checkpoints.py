"""The checkpoint store: orbax checkpoints of the whole train state, indexed by completed epoch,
that carry their config.

Each checkpoint ``workdir/checkpoints/<epoch>`` holds three items: ``state`` (the train state:
step, parameters, optimizer state, power-iteration vectors, BN statistics), ``config`` (the
resolved config as JSON) and ``run`` (dataset name, input shape, number of classes). So a
checkpoint alone rebuilds its model (:func:`restore_variables`), without the trainer or the
optimizer.

The data order and every random draw of epoch e are derived from (seed, e), so restoring the
state saved after epoch e and continuing from e + 1 reproduces an uninterrupted run exactly.

Once a save has finished, process 0 writes the checkpoint's manifest (``lclmt_jax.manifest``),
and before orbax opens anything of a checkpoint its files are checked against it. Two failures
are told apart:

* **damage** (the files do not match the manifest, or orbax cannot read them): the checkpoint is
  moved aside to ``<epoch>.damaged`` with a one-line warning, never deleted or overwritten, and
  the next older one is tried. Where the workdir is read-only it is skipped, with the warning.
* **mismatch** (intact files, but saved for another config, dataset shape or parameter tree):
  :class:`CheckpointMismatchError`, one line naming the differences; nothing is moved.

A checkpoint without a manifest (a run killed between the two writes) cannot be checked: it is
read as it is, with a one-line warning, and counts as damaged if it holds a non-finite value.
What a training run does when a save fails (Ctrl-C, a full disk) is ``lclmt_jax.recovery``'s;
which checkpoint a run may resume from is ``lclmt_jax.resume``'s.
"""

from __future__ import annotations

import contextlib
import glob
import logging as std_logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from lclmt_jax import console, manifest, paths, workdir_lock

CHECKPOINT_DIR = 'checkpoints'
DAMAGED_SUFFIX = '.damaged'
NONFINITE_SUFFIX = '.nonfinite'  # a checkpoint training diverged from at once (``train.py``)
MAX_NAMED = 3  # differences named in a mismatch line


class NoCheckpointError(FileNotFoundError):
    """A workdir holds no checkpoint that restores."""


class CheckpointBeingWrittenError(NoCheckpointError):
    """The newest checkpoint has no manifest yet because a live training run is writing it."""


class CheckpointMismatchError(ValueError):
    """An intact checkpoint was saved for another config, dataset shape or parameter tree.

    Never a reason to move the checkpoint aside: the run stops with one line naming the
    differences and the two ways out.
    """


def checkpoint_directory(workdir: str) -> str:
    """``workdir/checkpoints``, absolute; a ValueError line when it is a link leading out of the
    workdir (``paths.confined``)."""
    return paths.confined(workdir, CHECKPOINT_DIR)


def step_directory(root: str, epoch: int) -> str:
    """The directory of the checkpoint of ``epoch`` in the checkpoints folder ``root``."""
    return os.path.join(root, str(epoch))


def saved_epochs(root: str) -> list[int]:
    """The epochs of the checkpoints in ``root`` (``<epoch>`` folders; no temporary or
    moved-aside ones), ascending; none if ``root`` does not exist. Opens no checkpoint."""
    if not os.path.isdir(root):
        return []
    return sorted(int(name) for name in os.listdir(root)
                  if name.isdigit() and os.path.isdir(os.path.join(root, name)))


def _barrier(name: str) -> None:
    """Waits for every process of a multi-process job (nothing to wait for in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def set_aside(root: str, epoch: int, error: BaseException, suffix: str = DAMAGED_SUFFIX,
              what: str = 'is damaged') -> None:
    """Renames the checkpoint of ``epoch`` to ``<epoch><suffix>`` (process 0; never over an
    existing name) and says so in one warning line. Where it cannot be renamed (a read-only
    workdir) it is left in place, skipped, with the warning."""
    path = step_directory(root, epoch)
    _barrier('lclmt_set_aside')  # every process has judged it before it disappears
    target, failure = path + suffix, None
    if jax.process_index() == 0:
        count = 1
        while os.path.lexists(target):
            target, count = f'{path}{suffix}{count}', count + 1
        try:
            os.rename(path, target)
        except OSError as rename_error:
            failure = rename_error
    reason = console.one_line(error, with_type=True)
    where = (f'moved aside to {target}' if failure is None else
             f'skipped and left in place (cannot move it aside: {console.one_line(failure)})')
    console.say(f'warning: checkpoint {path} {what} ({reason}); {where}', stderr=True)
    _barrier('lclmt_set_aside_done')


def _warn_unchecked(directory: str) -> None:
    console.say(f'warning: checkpoint {directory} has no manifest (a run stopped between its save '
                'and its manifest?): its files cannot be checked; reading them as they are',
                stderr=True)


class _WithoutOrbaxRecords(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        return f'{os.sep}orbax{os.sep}' not in record.pathname


def _without_closed_loop_callbacks(hook: Callable) -> Callable:
    """``sys.unraisablehook`` less the 'Event loop is closed' errors of tensorstore writes that
    complete after orbax gave up on a failed save or restore (one traceback per array)."""
    def filtered(unraisable: Any) -> None:
        if not (unraisable.exc_type is RuntimeError
                and str(unraisable.exc_value) == 'Event loop is closed'):
            hook(unraisable)

    filtered.lclmt_filtered = True
    return filtered


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Drops orbax's log records while it saves or restores here: a failure reaches the caller
    as an exception, reported once in one line, instead of a traceback from every background
    thread (a full disk printed ~400 lines). After a failure, the late callbacks of its
    abandoned writes are silenced too."""
    logger, drop = std_logging.getLogger('absl'), _WithoutOrbaxRecords()
    logger.addFilter(drop)
    try:
        yield
    except BaseException:
        if not getattr(sys.unraisablehook, 'lclmt_filtered', False):
            sys.unraisablehook = _without_closed_loop_callbacks(sys.unraisablehook)
        raise
    finally:
        logger.removeFilter(drop)


def _checkpointer() -> ocp.Checkpointer:
    """Reads one checkpoint folder, and nothing else (a manager reads the metadata of all)."""
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(
        state=ocp.StandardCheckpointHandler(), config=ocp.JsonCheckpointHandler(),
        run=ocp.JsonCheckpointHandler()))


def _read(directory: str, **items: Any) -> dict:
    """The named items of the checkpoint in ``directory`` (``state=ocp.args.StandardRestore``,
    ``config=ocp.args.JsonRestore()``, ...)."""
    with _quiet_orbax(), _checkpointer() as checkpointer:
        return dict(checkpointer.restore(directory, args=ocp.args.Composite(**items)).items())


def _state_metadata(directory: str) -> Any:
    """The saved state's tree of shapes and dtypes (read after the manifest is checked)."""
    with _quiet_orbax(), _checkpointer() as checkpointer:
        metadata = checkpointer.metadata(directory).item_metadata['state']
    if metadata is None:
        raise ValueError('no readable state metadata')
    return metadata


def _key_name(key: Any) -> str:
    for field in ('key', 'name', 'idx'):
        if hasattr(key, field):
            return str(getattr(key, field))
    return str(key)


def _leaves_by_path(tree: Any) -> dict[str, Any]:
    """``'params/Dense_0/kernel' -> leaf``: dict keys, attributes and indices alike, so that a
    saved tree (dicts and lists) and a live one (dataclasses, named tuples) compare."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {'/'.join(_key_name(key) for key in path): leaf for path, leaf in leaves}


def shape_differences(saved: Any, like: Any) -> list[str]:
    """The leaves of ``saved`` (a checkpoint's state metadata) and ``like`` (the state this run
    builds) that differ in presence, shape or dtype, one phrase each, the parameters first."""
    old, new = _leaves_by_path(saved), _leaves_by_path(like)

    def describe(leaf: Any) -> str:
        return f'{tuple(leaf.shape)} {np.dtype(leaf.dtype).name}'

    differences = []
    for path in sorted(old.keys() | new.keys(), key=lambda path: (not path.startswith('params/'),
                                                                   path)):
        if path not in new:
            differences.append(f'{path} is saved but not in the model now')
        elif path not in old:
            differences.append(f'{path} is in the model now but not saved')
        elif describe(old[path]) != describe(new[path]):
            differences.append(f'{path} saved {describe(old[path])}, now {describe(new[path])}')
    return differences


def mismatch_error(workdir: str, epoch: int, differences: Sequence[str]) -> CheckpointMismatchError:
    """The one line refusing to resume an intact checkpoint made for something else: the first
    differences and the two ways out."""
    named = '; '.join(differences[:MAX_NAMED])
    if len(differences) > MAX_NAMED:
        named += f'; and {len(differences) - MAX_NAMED} more'
    return CheckpointMismatchError(
        f'{workdir} was trained with another model ({named}); use another --workdir, or run '
        f'with the config it was trained with (saved in {CHECKPOINT_DIR}/{epoch}/config)')


def _first_non_finite(tree: Any) -> str | None:
    """The path of the first leaf of ``tree`` holding a NaN or infinity (this process's copy)."""
    for path, leaf in _leaves_by_path(tree).items():
        local = leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf
        values = np.asarray(local)
        if np.issubdtype(values.dtype, np.inexact) and not np.isfinite(values).all():
            return path
    return None


def _check_finite(tree: Any) -> None:
    """Unchecked data holding NaN or infinity was not written by training: damage."""
    path = _first_non_finite(tree)
    if path is not None:
        raise manifest.DamagedCheckpointError(f'no manifest, and {path} holds non-finite values')


def screen(root: str) -> dict[int, bool]:
    """Checks every checkpoint in ``root`` against its manifest, newest first, before orbax opens
    any of them; damaged ones are set aside. ``{epoch: verified}``, False where there is no
    manifest to check against."""
    good = {}
    for epoch in reversed(saved_epochs(root)):
        try:
            good[epoch] = manifest.verify(step_directory(root, epoch))
        except manifest.DamagedCheckpointError as error:
            set_aside(root, epoch, error)
    return good


def checkpoint_manager(workdir: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
    """A manager of ``workdir/checkpoints/<epoch>``, for saving; saves are collective across
    processes. It reads the metadata of every checkpoint there: create it after :func:`screen`."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    handlers = {'state': ocp.StandardCheckpointHandler(), 'config': ocp.JsonCheckpointHandler(),
                'run': ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(checkpoint_directory(workdir), options=options,
                                 item_handlers=handlers)


def save(manager: ocp.CheckpointManager, epoch: int, state: Any, config: dict,
         run_info: dict) -> None:
    """Saves ``state`` with its config and run info as epoch ``epoch``, waits until written, then
    writes its manifest (process 0). ``lclmt_jax.recovery.save_checkpoint`` is the trainer's
    entry: Ctrl-C deferred, a full disk reported in one line."""
    with _quiet_orbax():
        manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config),
            run=ocp.args.JsonSave(run_info)), force=True)
        manager.wait_until_finished()
        if jax.process_index() == 0:
            manifest.write_manifest(step_directory(str(manager.directory), epoch))


def remove_partial(root: str, epoch: int) -> None:
    """Removes what an unfinished save of ``epoch`` left in ``root`` (orbax's temporary folder;
    process 0); the finished checkpoints are untouched."""
    if jax.process_index() == 0:
        for partial in glob.glob(step_directory(root, epoch) + '.orbax-checkpoint-tmp*'):
            shutil.rmtree(partial, ignore_errors=True)


def size(path: str) -> int:
    """The bytes of every file below ``path``."""
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


Check = Callable[[int, Mapping, Mapping], None]


def restore_train_state(workdir: str, like: Any, check: Check | None = None,
                        below: int | None = None) -> tuple[Any, int]:
    """(state, completed epochs) from the newest good checkpoint of ``workdir`` (only epochs
    before ``below`` when given), or (like, 0) if there is none.

    ``like`` supplies the tree structure, shapes, dtypes and shardings to restore into. Every
    checkpoint is screened first (a manager created afterwards only sees checked ones). For the
    chosen one, ``check(epoch, saved config, saved run info)`` runs before its state is read and
    may raise CheckpointMismatchError; so does a parameter tree whose shapes or dtypes differ
    from ``like``'s. A checkpoint that fails to read is set aside and the next older one tried.
    """
    root = checkpoint_directory(workdir)
    good = screen(root)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    for epoch in sorted(good, reverse=True):
        if below is not None and epoch >= below:
            continue
        directory = step_directory(root, epoch)
        if not good[epoch]:
            _warn_unchecked(directory)
        try:
            saved = _read(directory, config=ocp.args.JsonRestore(), run=ocp.args.JsonRestore())
            tree = _state_metadata(directory)
        except Exception as error:  # noqa: BLE001 -- checked files that do not read: damage
            set_aside(root, epoch, error)
            continue
        if check is not None:
            check(epoch, saved['config'], saved['run'])
        differences = shape_differences(tree, like)
        if differences:
            raise mismatch_error(workdir, epoch, differences)
        try:
            state = _read(directory, state=ocp.args.StandardRestore(abstract))['state']
            if not good[epoch]:
                _check_finite(state)
        except Exception as error:  # noqa: BLE001 -- same shapes, unreadable data: damage
            set_aside(root, epoch, error)
            continue
        return state, epoch
    return like, 0


def same_state(workdir: str, epoch: int, state: Any) -> bool:
    """Whether the checkpoint of ``epoch`` holds exactly ``state`` (this process's copies)."""
    directory = step_directory(checkpoint_directory(workdir), epoch)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    saved = _read(directory, state=ocp.args.StandardRestore(abstract))['state']
    local = lambda leaf: np.asarray(leaf.addressable_data(0))  # noqa: E731
    return all(np.array_equal(local(a), local(b), equal_nan=True) for a, b in
               zip(jax.tree.leaves(saved), jax.tree.leaves(state), strict=True))


class SavedModel(NamedTuple):
    """What a checkpoint holds besides the optimizer: enough to rebuild the model."""

    config: dict
    run_info: dict
    params: Any
    model_state: Any
    epoch: int


def _read_model(directory: str, epoch: int, verified: bool) -> SavedModel:
    """Reads one checkpoint's config, run info and variables onto this process's first device."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                            sharding=device),
                          _state_metadata(directory))
    items = _read(directory, state=ocp.args.StandardRestore(target),
                  config=ocp.args.JsonRestore(), run=ocp.args.JsonRestore())
    state = items['state']
    if not verified:
        _check_finite(state)
    return SavedModel(items['config'], items['run'], state['params'], state['model_state'],
                      int(epoch))


def _existing_root(workdir: str) -> str:
    """``workdir/checkpoints`` of an existing run, or NoCheckpointError; creates nothing."""
    if not os.path.exists(workdir):
        raise NoCheckpointError(f'{workdir} does not exist: there is no run to restore')
    if not os.path.isdir(workdir):
        raise NoCheckpointError(f'{workdir} is a file, not the workdir of a run')
    root = checkpoint_directory(workdir)
    if not saved_epochs(root):
        raise NoCheckpointError(f'{workdir} holds no checkpoint; train it first')
    return root


def _checked_read(root: str, epoch: int, writer: str | None) -> SavedModel:
    """The model of checkpoint ``epoch``, read only after its files match its manifest (one
    warning when it has none); raises on any mismatch or read failure, and
    CheckpointBeingWrittenError when it has no manifest while ``writer``, a live training run of
    the workdir, may still be writing it."""
    directory = step_directory(root, epoch)
    verified = manifest.verify(directory)
    if not verified and writer is not None:
        raise CheckpointBeingWrittenError(f'checkpoint {directory} has no manifest yet: the '
                                          f'training run of {writer} is still writing it')
    if not verified:
        _warn_unchecked(directory)
    return _read_model(directory, epoch, verified)


def _epoch_number(epoch: Any, workdir: str, root: str) -> int:
    """``epoch`` as a saved epoch's int; one ValueError line for another type ('2', 2.0)."""
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
        raise ValueError(f'epoch must be an integer, one of the saved epochs of {workdir} '
                         f'({saved_epochs(root) or "none"}), got {epoch!r}')
    return int(epoch)


def restore_variables(workdir: str, epoch: int | None = None) -> SavedModel:
    """The model of the newest good checkpoint in ``workdir`` (or of ``epoch``, which must read).

    Reads one checkpoint folder after checking it against its manifest; damaged newer ones are
    set aside on the way (skipped where the workdir is read-only), and one that a live training
    run of the workdir is still writing (no manifest yet) is passed over with a note. Creates
    nothing. Raises NoCheckpointError when there is none, with one line saying so, and
    ValueError for an ``epoch`` that is not an integer.
    """
    root = _existing_root(workdir)
    writer = workdir_lock.live_holder(workdir)
    if epoch is not None:
        epoch = _epoch_number(epoch, workdir, root)
        if epoch not in saved_epochs(root):
            raise NoCheckpointError(f'{workdir} has no checkpoint of epoch {epoch}; it has '
                                    f'{saved_epochs(root) or "none"}')
        try:
            return _checked_read(root, epoch, writer)
        except CheckpointBeingWrittenError as error:
            raise CheckpointBeingWrittenError(f'{error}; retry once it has one') from None
        except Exception as error:  # noqa: BLE001 -- explicit choice: report, keep it
            raise NoCheckpointError(f'checkpoint of epoch {epoch} in {workdir} cannot be '
                                    f'read ({console.one_line(error, with_type=True)})') from None
    for epoch in reversed(saved_epochs(root)):
        try:
            return _checked_read(root, epoch, writer)
        except CheckpointBeingWrittenError as error:
            console.say(f'note: {error}; reading the checkpoint before it', stderr=True)
        except Exception as error:  # noqa: BLE001 -- any failure to read means damage
            set_aside(root, epoch, error)
    raise NoCheckpointError(f'no checkpoint in {workdir} restores; train it first')


def _checked_epochs(workdir: str) -> Iterator[int]:
    """The epochs whose checkpoints verify or have no manifest, newest first; moves nothing."""
    root = checkpoint_directory(workdir)
    for epoch in reversed(saved_epochs(root)):
        try:
            manifest.verify(step_directory(root, epoch))
        except manifest.DamagedCheckpointError:
            continue
        yield epoch


def latest_epoch(workdir: str) -> int:
    """The epoch of the newest checkpoint in ``workdir`` that is not damaged (0 if none),
    checked against its manifest, without orbax reading it and without moving anything."""
    return next(_checked_epochs(workdir), 0)


def saved_setup(workdir: str) -> tuple[int, dict, dict] | None:
    """(epoch, config, run info) saved in the newest checkpoint of ``workdir`` that is not
    damaged, or None; moves nothing."""
    for epoch in _checked_epochs(workdir):
        directory = step_directory(checkpoint_directory(workdir), epoch)
        try:
            saved = _read(directory, config=ocp.args.JsonRestore(), run=ocp.args.JsonRestore())
        except Exception:  # noqa: BLE001 -- unreadable: training will set it aside
            continue
        return epoch, saved['config'], saved['run']
    return None
