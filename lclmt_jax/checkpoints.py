"""Orbax checkpoints of the whole train state, indexed by completed epoch.

The data order and every random draw of epoch e are derived from (seed, e), so restoring the
state saved after epoch e and continuing from e + 1 reproduces an uninterrupted run exactly.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = 'checkpoints'


def checkpoint_manager(workdir: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
    """A manager writing ``workdir/checkpoints/<epoch>``; saves are collective across processes."""
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, epoch: int, state: Any) -> None:
    """Saves ``state`` as the checkpoint of epoch ``epoch``, waiting until it is written."""
    manager.save(epoch, args=ocp.args.StandardSave(state), force=True)
    manager.wait_until_finished()


def restore_latest(manager: ocp.CheckpointManager, like: Any) -> tuple[Any, int]:
    """Returns (state, completed epochs) from the newest checkpoint, or (like, 0) if there is none.

    ``like`` supplies the tree structure, shapes, dtypes and shardings to restore into.
    """
    epoch = manager.latest_step()
    if epoch is None:
        return like, 0
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return manager.restore(epoch, args=ocp.args.StandardRestore(abstract)), int(epoch)
