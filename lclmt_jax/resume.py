"""The resume policy: whether a training run may start in a workdir, which checkpoint it
continues from, and which config changes the training done there survives.

* A workdir binds the training fields it was trained with (``config_schema.binds_training``:
  everything but how long it trains, how often it checkpoints, where the data files are and how
  it is evaluated): another value of one is refused with one line naming it and the two ways
  out, before any work (``check_same_training``) and again against the checkpoint chosen
  (``check_resumable``), which must also fit the data's input shape and classes.
* ``num_epochs`` may change between invocations (a run is extended by rerunning it with more),
  except under a learning-rate schedule laid over the run's length (``Schedule.spans_run``:
  cosine, step, decay_after_half): there another length would reshape the schedule mid-run (a
  finished 2-epoch cosine run has decayed to 0; as a 4-epoch one its learning rate would jump
  back to half), so a length that trains more is refused with one line.
* ``num_epochs = 0`` is accepted on a trained workdir (it reports the run) and refused on one
  with nothing trained.

``plan_start`` applies all of these before any work; ``announce`` says what the run will do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import flax
import ml_collections
import numpy as np

from lclmt_jax import checkpoints, config_schema, console, optimizers, paths, run_files


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
    path = paths.confined(workdir, run_files.CONFIG_FILE)
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


def _schedule_change(workdir: str, epoch: int, saved_config: Mapping,
                     config: ml_collections.ConfigDict) -> str | None:
    """The refusal of a resume at ``epoch`` that would lay a run-spanning schedule over another
    length than the one it was trained under, or None."""
    trained_for = saved_config.get('num_epochs')
    if trained_for is None or trained_for == config.num_epochs or epoch >= config.num_epochs \
            or not optimizers.SCHEDULES.get(config.schedule, 'config.schedule').spans_run:
        return None
    return (f'{workdir} has trained {epoch} of the {trained_for} epochs of its {config.schedule} '
            f'learning-rate schedule; num_epochs={config.num_epochs} would stretch that schedule '
            'mid-run (the epochs left would follow neither length): keep '
            f'--config.num_epochs={trained_for}, or train {config.num_epochs} epochs in another '
            '--workdir')


def plan_start(workdir: str, config: ml_collections.ConfigDict) -> int:
    """The epoch a training run of ``config`` in ``workdir`` resumes from (0: a new run), after
    refusing, with one ValueError line and before any work, what cannot start there: other
    training fields (``check_same_training``), ``num_epochs=0`` with nothing trained, and a new
    length under a schedule laid over the run (``Schedule.spans_run``)."""
    check_same_training(workdir, config)
    saved = checkpoints.saved_setup(workdir)
    epoch = saved[0] if saved else 0
    if not epoch and config.num_epochs == 0:
        raise ValueError(f'num_epochs=0 and {workdir} holds no trained run: there is nothing to '
                         'train or report; set --config.num_epochs to the epochs to train')
    refusal = saved and _schedule_change(workdir, epoch, saved[1], config)
    if refusal:
        raise ValueError(refusal)
    return epoch


def announce(workdir: str, start_epoch: int, num_epochs: int) -> None:
    """One line when a run continues an earlier one: it resumes, or it had already finished."""
    if start_epoch >= num_epochs and start_epoch:
        console.say(f'{workdir} has already trained {start_epoch} of num_epochs={num_epochs} '
                    'epochs: nothing to train', stderr=True)
    elif start_epoch:
        console.say(f'resuming from the checkpoint of epoch {start_epoch}', stderr=True)
