"""The resume policy: which checkpoint of a workdir a training run continues from, and which
config changes the training done there survives.

A workdir binds the training fields it was trained with (``config_schema.binds_training``:
everything but how long it trains, how often it checkpoints, where the data files are and how it
is evaluated): another value of one is refused with one line naming it and the two ways out,
before any work (``check_same_training``) and again against the checkpoint chosen
(``check_resumable``), which must also fit the data's input shape and classes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import flax
import ml_collections
import numpy as np

from lclmt_jax import checkpoints, config_schema, run_files


def training_differences(saved: Mapping, config: ml_collections.ConfigDict) -> list[str]:
    """The training fields in which ``config`` differs from the saved config ``saved`` (a
    ``config_as_dict``), as ``key=saved`` pairs with the new value, sorted by key.

    Every field that binds training counts (``config_schema.binds_training``); a field only one
    of them has was added to (or dropped from) the code in between and does not count.
    """
    old = flax.traverse_util.flatten_dict(dict(saved), sep='.')
    new = flax.traverse_util.flatten_dict(run_files.config_as_dict(config), sep='.')
    changed = sorted(key for key in old.keys() & new.keys()
                     if old[key] != new[key] and config_schema.binds_training(key))
    return [f'{key}={old[key]!r}, the config now says {new[key]!r}' for key in changed]


def _refusal(workdir: str, differences: list[str], where: str) -> str:
    more = f' (and {len(differences) - 1} more field(s))' if len(differences) > 1 else ''
    return (f'{workdir} was trained with {differences[0]}{more}; use another --workdir, or run '
            f'with the config it was trained with ({where})')


def check_same_training(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses to resume a workdir whose run was trained with other training fields.

    Compares ``config`` with the workdir's ``config.json`` (written with its checkpoints) and
    with the config saved in its newest checkpoint, so a deleted or edited ``config.json``
    changes nothing. Raises ``checkpoints.CheckpointMismatchError`` (a ValueError).
    """
    path = os.path.join(workdir, run_files.CONFIG_FILE)
    if os.path.exists(path):
        differences = training_differences(run_files.read_json(path), config)
        if differences:
            raise checkpoints.CheckpointMismatchError(_refusal(workdir, differences,
                                                               f'its {run_files.CONFIG_FILE}'))
    saved = checkpoints.saved_setup(workdir)
    if saved is not None:
        check_resumable(workdir, saved[0], saved[1], saved[2], config)


def check_resumable(workdir: str, epoch: int, saved_config: Mapping, saved_run: Mapping,
                    config: ml_collections.ConfigDict, run_info: Mapping | None = None) -> None:
    """Refuses the checkpoint of ``epoch``, saved with ``saved_config`` and ``saved_run``, for a
    run of ``config`` on data described by ``run_info`` (None: not loaded yet): another training
    field, input shape or number of classes is a mismatch, one line naming it and the ways out.
    Nothing is moved: the checkpoint is intact."""
    differences = training_differences(saved_config, config)
    for key in ('input_shape', 'num_classes'):
        if run_info is not None and key in saved_run and list(np.atleast_1d(saved_run[key])) \
                != list(np.atleast_1d(run_info[key])):
            differences.append(f'{key}={saved_run[key]!r}, the data now has {run_info[key]!r}')
    if differences:
        raise checkpoints.CheckpointMismatchError(_refusal(
            workdir, differences, f'saved in {checkpoints.CHECKPOINT_DIR}/{epoch}/config'))
