"""The edges a user meets (issue 27), through the public API: links out of a workdir, a resume
that would reshape its schedule, a finished run rerun, a checkpoint a live run is still writing,
empty batches, epochs of the wrong type, and the attack's fixed stratified sample."""

import json
import os
import shutil
import sys

import numpy as np
import pytest

import lclmt_jax
from lclmt_jax import (
    assessment,
    checkpoints,
    config_schema,
    configs,
    evaluators,
    manifest,
    outcomes,
    train,
    workdir_lock,
)

pytestmark = pytest.mark.fast


@pytest.fixture
def run(trained_run_copy):
    """A copy of the trained run with its checkpoint of epoch 3 only, free to be broken."""
    workdir = trained_run_copy()
    for epoch in (1, 2):
        shutil.rmtree(checkpoints.step_directory(checkpoints.checkpoint_directory(workdir),
                                                 epoch))
    return workdir


def _conftest_config(num_epochs=3):
    """The config ``trained_workdir`` was trained with (tests/conftest.py)."""
    config = configs.mnist_variant(config_schema.default_config(), 'embedded')
    config.num_epochs = num_epochs
    config.evals.cw_l2.update(steps=30, binary_search_steps=3, batch_size=200)
    return config


def _tree(directory):
    return sorted(os.path.relpath(os.path.join(root, name), directory)
                  for root, folders, names in os.walk(directory) for name in folders + names)


def _opened_below(directory):
    """Records every file opened below ``directory`` from now on (an audit hook)."""
    opened = []
    sys.addaudithook(lambda event, args: opened.append(str(args[0]))
                     if event == 'open' and str(args[0]).startswith(str(directory)) else None)
    return opened


# Links out of the workdir: never followed.

def test_a_checkpoint_file_linked_outside_is_not_read_even_without_a_manifest(run, tmp_path):
    directory = checkpoints.step_directory(checkpoints.checkpoint_directory(run), 3)
    os.remove(os.path.join(directory, manifest.MANIFEST))
    outside = tmp_path / 'outside'
    outside.mkdir()
    name = next(n for n in sorted(os.listdir(os.path.join(directory, 'state')))
                if os.path.isfile(os.path.join(directory, 'state', n)))
    shutil.move(os.path.join(directory, 'state', name), outside / name)
    os.symlink(outside / name, os.path.join(directory, 'state', name))
    opened = _opened_below(outside)
    with pytest.raises(checkpoints.NoCheckpointError, match='no checkpoint in .* restores'):
        lclmt_jax.restore(run)
    assert opened == [] and os.path.isdir(directory + checkpoints.DAMAGED_SUFFIX)
    with pytest.raises(manifest.DamagedCheckpointError, match='leads outside the checkpoint'):
        manifest.verify(directory + checkpoints.DAMAGED_SUFFIX)


def test_a_checkpoint_folder_linked_outside_is_set_aside_unread(run, tmp_path):
    root = checkpoints.checkpoint_directory(run)
    outside = tmp_path / 'elsewhere'
    shutil.move(checkpoints.step_directory(root, 3), outside)
    os.symlink(outside, checkpoints.step_directory(root, 3))
    before = _tree(outside)
    opened = _opened_below(outside)
    with pytest.raises(checkpoints.NoCheckpointError):
        lclmt_jax.restore(run)
    assert opened == [] and _tree(outside) == before
    assert os.path.islink(checkpoints.step_directory(root, 3) + checkpoints.DAMAGED_SUFFIX)


def test_a_checkpoints_folder_linked_outside_is_refused_by_every_mode(run, tmp_path):
    root = checkpoints.checkpoint_directory(run)
    outside = tmp_path / 'elsewhere'
    shutil.move(root, outside)
    os.symlink(outside, root)
    before = _tree(outside)
    message = 'is a link leading outside .*: lclmt_jax reads and writes only inside the workdir'
    with pytest.raises(ValueError, match=message):
        lclmt_jax.restore(run)
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(_conftest_config(num_epochs=4), run)
    assert _tree(outside) == before


def test_an_evaluation_folder_linked_outside_is_refused_before_any_work(run, tmp_path, capsys):
    outside = tmp_path / 'elsewhere'
    outside.mkdir()
    os.symlink(outside, os.path.join(run, assessment.EVALUATION_DIR))
    with pytest.raises(ValueError, match='evaluation is a link leading outside'):
        assessment.evaluate_run(run, max_examples=20)
    assert os.listdir(outside) == [] and 'evaluating' not in capsys.readouterr().out


# Resuming, and rerunning a finished run.

def test_a_run_spanning_schedule_is_not_stretched_on_resume(tmp_path, capsys):
    config = configs.mnist_variant(config_schema.default_config(), 'embedded')
    config.update(num_epochs=1, schedule='cosine')
    workdir = str(tmp_path / 'cosine')
    train.train_and_evaluate(config, workdir)
    out = capsys.readouterr().out
    assert ('training mlp (lc_lmt_pairwise) on embedded_mnist: 4000 train / 1000 test images '
            f'of 28x28x1, 10 classes; epochs 1-1 on 4 cpu devices; workdir {workdir}') in out
    before = _tree(workdir)
    config.num_epochs = 2
    with pytest.raises(ValueError, match=f'{workdir} has trained 1 of the 1 epochs of its cosine '
                                         'learning-rate schedule; num_epochs=2 would stretch'):
        train.train_and_evaluate(config, workdir)
    assert _tree(workdir) == before
    config.schedule = 'constant'  # a binding field: refused as another training
    with pytest.raises(ValueError, match="schedule='cosine'"):
        train.train_and_evaluate(config, workdir)


def test_rerunning_a_finished_run_says_so_instead_of_resuming(run, capsys):
    train.train_and_evaluate(_conftest_config(), run)
    captured = capsys.readouterr()
    assert f'{run} has already trained 3 of num_epochs=3 epochs: nothing to train' in captured.err
    assert 'resuming' not in captured.err and 'training mlp' not in captured.out


def test_a_checkpoint_a_live_run_is_still_writing_is_passed_over_not_blamed(run, capsys):
    directory = checkpoints.step_directory(checkpoints.checkpoint_directory(run), 3)
    os.remove(os.path.join(directory, manifest.MANIFEST))
    with open(os.path.join(run, workdir_lock.LOCK_FILE), 'w') as f:
        json.dump(workdir_lock._own_record(), f)  # this process's: a live run
    with pytest.raises(checkpoints.CheckpointBeingWrittenError,
                       match='has no manifest yet: the training run of process .* is still '
                             'writing it; retry once it has one'):
        lclmt_jax.restore(run, epoch=3)
    with pytest.raises(checkpoints.NoCheckpointError):
        lclmt_jax.restore(run)
    err = capsys.readouterr().err
    assert 'note: checkpoint' in err and 'stopped between' not in err
    assert os.path.isdir(directory)  # not moved aside: nothing is wrong with it


# The public API's edges.

@pytest.mark.parametrize('epoch', ['3', 3.0, True])
def test_an_epoch_that_is_not_an_integer_is_one_line(trained_workdir, epoch):
    with pytest.raises(ValueError, match=rf"epoch must be an integer, one of the saved epochs of "
                                         rf".* \(\[1, 2, 3\]\), got {epoch!r}"):
        lclmt_jax.restore(trained_workdir, epoch=epoch)
    assert lclmt_jax.restore(trained_workdir, epoch=np.int64(3)).epoch == 3


def test_empty_batches_give_empty_answers(trained_workdir):
    model = lclmt_jax.restore(trained_workdir)
    none = np.zeros((0, 28, 28, 1), np.float32)
    assert model.logits(none).shape == (0, model.num_classes)
    radii = model.certified_radius(none, np.zeros(0, np.int32))
    assert radii.shape == (0,) and radii.dtype == np.float64


# The attack's points.

def test_the_attacked_sample_is_stratified_and_the_same_every_time():
    labels = np.repeat(np.arange(10), 100)  # sorted by class, as the embedded test split
    chosen = evaluators.stratified_sample(labels, 200)
    assert np.array_equal(chosen, evaluators.stratified_sample(labels, 200))
    assert np.array_equal(chosen, np.sort(chosen)) and len(set(chosen)) == 200
    assert np.array_equal(np.bincount(labels[chosen]), np.full(10, 20))
    uneven = np.r_[np.zeros(70, int), np.ones(20, int), np.full(10, 2)]
    assert list(np.bincount(uneven[evaluators.stratified_sample(uneven, 11)])) == [8, 2, 1]
    assert np.array_equal(evaluators.stratified_sample(labels, 5000), np.arange(1000))


def test_a_sampled_attack_stands_beside_the_certificates_of_the_same_points(trained_workdir):
    summary = assessment.evaluate_run(trained_workdir, max_examples=100,
                                      evaluator_settings=['cw_l2.max_examples=20'])
    labels = [label for label, _ in summary['table']]
    assert 'CW-L2 attack (20 points)' in labels and 'certified (pairwise), same 20 points' in labels
    for eps in (0.1, 0.3, 1.58):
        assert summary[f'certified_sample_pairwise@{eps:g}'] <= summary[f'attack@{eps:g}']


# What is printed.

def test_radii_print_as_pixel_levels_where_they_are_and_in_order(trained_workdir, capsys):
    assert [outcomes.radius_text(r) for r in (36 / 255, 0.2, 1 / 255, 1.58)] == [
        '36/255', '0.2', '1/255', '1.58']
    assert outcomes.epochs_text(1) == '1 epoch' and outcomes.epochs_text(2) == '2 epochs'
    epsilons = (36 / 255, 72 / 255, 0.2, 108 / 255)
    table = outcomes.evaluation_table({'num_examples': 4, 'table': [['c', 'c@{eps}']],
                                       **{f'c@{eps:g}': eps for eps in epsilons}}, epsilons)
    assert [line.split()[0] for line in table.splitlines()[2:]] == [
        '36/255', '0.2', '72/255', '108/255']
