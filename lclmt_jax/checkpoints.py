"""Orbax checkpoints of the whole train state, indexed by completed epoch, that carry their config.

Each checkpoint ``workdir/checkpoints/<epoch>`` holds three items: ``state`` (the train state:
step, parameters, optimizer state, power-iteration vectors, BN statistics), ``config`` (the
resolved config as JSON) and ``run`` (dataset name, input shape, number of classes). So a
checkpoint alone rebuilds its model (:func:`restore_variables`), without the trainer or the
optimizer.

The data order and every random draw of epoch e are derived from (seed, e), so restoring the
state saved after epoch e and continuing from e + 1 reproduces an uninterrupted run exactly.

Once a save has finished, process 0 writes a manifest (``lclmt_manifest.json``: every file's
size and SHA-256) into the checkpoint. Before a checkpoint is restored its files are checked
against the manifest, so a truncated or altered file (a full disk, an interrupted copy) is found
without handing broken data to the storage layer; a checkpoint without a manifest (a run killed
between the two writes) is tried as it is. A damaged checkpoint is never deleted or overwritten:
it is moved aside to ``<epoch>.damaged`` with a one-line warning, and the newest checkpoint that
restores is used instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp

from lclmt_jax import console

CHECKPOINT_DIR = 'checkpoints'
DAMAGED_SUFFIX = '.damaged'
MANIFEST = 'lclmt_manifest.json'


class NoCheckpointError(FileNotFoundError):
    """A workdir holds no checkpoint that restores."""


class DamagedCheckpointError(ValueError):
    """A checkpoint's files do not match its manifest."""


def _digest(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            sha.update(block)
    return sha.hexdigest()


def _files(directory: str) -> list[str]:
    """Every file below ``directory`` (relative paths), the manifest excepted."""
    return sorted(os.path.relpath(os.path.join(root, name), directory)
                  for root, _, names in os.walk(directory) for name in names
                  if name != MANIFEST or root != directory)


def write_manifest(directory: str) -> None:
    """Records every file's size and SHA-256 in ``directory/lclmt_manifest.json``."""
    manifest = {name: [os.path.getsize(os.path.join(directory, name)),
                       _digest(os.path.join(directory, name))] for name in _files(directory)}
    temporary = os.path.join(directory, MANIFEST + '.tmp')
    with open(temporary, 'w') as f:
        json.dump(manifest, f)
    os.replace(temporary, os.path.join(directory, MANIFEST))


def verify(directory: str) -> bool:
    """True when the files match the manifest, False when there is none to check against.

    Raises DamagedCheckpointError naming the first file that is missing, truncated or altered.
    """
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        return False
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as error:
        raise DamagedCheckpointError(
            f'unreadable manifest ({console.one_line(error, with_type=True)})') from None
    for name, (size, digest) in manifest.items():
        file = os.path.join(directory, name)
        if not os.path.isfile(file):
            raise DamagedCheckpointError(f'{name} is missing')
        if os.path.getsize(file) != size:
            raise DamagedCheckpointError(f'{name} has {os.path.getsize(file)} of its {size} bytes')
        if _digest(file) != digest:
            raise DamagedCheckpointError(f'{name} does not match its checksum')
    return True


def checkpoint_manager(workdir: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
    """A manager of ``workdir/checkpoints/<epoch>``; saves are collective across processes."""
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    handlers = {'state': ocp.StandardCheckpointHandler(), 'config': ocp.JsonCheckpointHandler(),
                'run': ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, epoch: int, state: Any, config: dict,
         run_info: dict) -> None:
    """Saves ``state`` with its config and run info as epoch ``epoch``; waits until written."""
    manager.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config),
        run=ocp.args.JsonSave(run_info)), force=True)
    manager.wait_until_finished()
    if jax.process_index() == 0:
        write_manifest(step_directory(manager, epoch))


def step_directory(manager: ocp.CheckpointManager, epoch: int) -> str:
    """The directory of the checkpoint of ``epoch``."""
    return os.path.join(str(manager.directory), str(epoch))


def _move_aside(manager: ocp.CheckpointManager, epoch: int, error: Exception) -> None:
    """Renames a damaged checkpoint to ``<epoch>.damaged`` (process 0) and warns in one line."""
    path = step_directory(manager, epoch)
    target = path + DAMAGED_SUFFIX
    if jax.process_index() == 0:
        suffix = 1
        while os.path.exists(target):
            target, suffix = f'{path}{DAMAGED_SUFFIX}{suffix}', suffix + 1
        os.rename(path, target)
    console.say(f'warning: checkpoint {path} is damaged '
                f'({console.one_line(error, with_type=True)}); moved aside to {target}',
                stderr=True)
    manager.reload()


def restore_newest(manager: ocp.CheckpointManager,
                   restore_epoch: Callable[[int], Any]) -> tuple[Any, int]:
    """``(restore_epoch(e), e)`` for the newest epoch e whose checkpoint verifies and restores;
    ``(None, 0)`` when none does. Damaged checkpoints on the way are moved aside."""
    for epoch in sorted(manager.all_steps(), reverse=True):
        try:
            verify(step_directory(manager, epoch))
            return restore_epoch(epoch), int(epoch)
        except Exception as error:  # noqa: BLE001 -- any failure to read means damage
            _move_aside(manager, epoch, error)
    return None, 0


def restore_train_state(manager: ocp.CheckpointManager, like: Any) -> tuple[Any, int]:
    """(state, completed epochs) from the newest good checkpoint, or (like, 0) if there is none.

    ``like`` supplies the tree structure, shapes, dtypes and shardings to restore into.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    state, epoch = restore_newest(manager, lambda epoch: manager.restore(
        epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))['state'])
    return (like, 0) if state is None else (state, epoch)


class SavedModel(NamedTuple):
    """What a checkpoint holds besides the optimizer: enough to rebuild the model."""

    config: dict
    run_info: dict
    params: Any
    model_state: Any
    epoch: int


def _read_model(manager: ocp.CheckpointManager, epoch: int) -> SavedModel:
    """Reads one checkpoint's config, run info and variables onto this process's first device."""
    metadata = manager.item_metadata(epoch)['state']
    if metadata is None:
        raise ValueError('no readable state metadata')
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                            sharding=device), metadata.tree)
    items = manager.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), config=ocp.args.JsonRestore(),
        run=ocp.args.JsonRestore()))
    state = items['state']
    return SavedModel(items['config'], items['run'], state['params'], state['model_state'],
                      int(epoch))


def restore_variables(workdir: str, epoch: int | None = None) -> SavedModel:
    """The model of the newest good checkpoint in ``workdir`` (or of ``epoch``, which must read).

    Raises NoCheckpointError when there is none, with one line saying so.
    """
    manager = checkpoint_manager(workdir)
    try:
        if epoch is not None:
            if epoch not in manager.all_steps():
                raise NoCheckpointError(f'{workdir} has no checkpoint of epoch {epoch}; it has '
                                        f'{sorted(manager.all_steps()) or "none"}')
            try:
                verify(step_directory(manager, epoch))
                return _read_model(manager, epoch)
            except Exception as error:  # noqa: BLE001 -- explicit choice: report, keep it
                raise NoCheckpointError(f'checkpoint of epoch {epoch} in {workdir} cannot be '
                                        f'read ({console.one_line(error, with_type=True)})'
                                        ) from None
        saved, _ = restore_newest(manager, lambda epoch: _read_model(manager, epoch))
        if saved is None:
            raise NoCheckpointError(f'no checkpoint in {workdir} restores; train it first')
        return saved
    finally:
        manager.close()


def latest_epoch(workdir: str) -> int:
    """The epoch of the newest checkpoint in ``workdir`` (0 if none), without reading it."""
    if not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
        return 0
    manager = checkpoint_manager(workdir)
    epoch = manager.latest_step()
    manager.close()
    return int(epoch or 0)
