"""Runs trained by older versions still restore, read and certify to the radii they had.

``tests/fixtures/<model>_151ddc4`` are small runs (an MLP and a CNN on the embedded digits, two
epochs) trained with commit 151ddc4, before the certificates, metrics and config sections were
reorganised; ``expected.json`` holds the logits and sound radii that version computed for the
first 32 test digits. ``tests/fixtures/<kind>_7a89d3b`` (an MLP, a CNN, a LiResNet and an AOL
LipConvNet, small, two epochs) were trained with commit 7a89d3b, before the layer families and the
float32 rounding analysis were reorganised; their ``expected.json`` adds the float32-sound radii
that version certified, which today's analysis must reproduce.
"""

import json
import os
import shutil

import numpy as np
import pytest

import lclmt_jax
from lclmt_jax import data, run_files

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')
RUNS = ('run_151ddc4', 'cnn_151ddc4')


@pytest.fixture(params=RUNS)
def legacy_run(request, tmp_path):
    """A copy of the fixture run (restoring may move a damaged checkpoint aside: never the
    repository's own files)."""
    workdir = str(tmp_path / request.param)
    shutil.copytree(os.path.join(FIXTURES, request.param), workdir)
    return workdir


def test_a_legacy_run_restores_and_certifies_to_the_same_radii(legacy_run):
    with open(os.path.join(legacy_run, 'expected.json')) as f:
        expected = json.load(f)
    model = lclmt_jax.restore(legacy_run)
    assert model.epoch == 2
    dataset = data.load_dataset(model.config.data)
    x = np.asarray(dataset.test_images[:32], np.float32) / 255.0
    y = dataset.test_labels[:32]
    np.testing.assert_array_equal(y, expected['labels'])
    np.testing.assert_allclose(model.logits(x), expected['logits'], rtol=1e-6, atol=1e-6)
    assert model.lipschitz_upper_bound() == pytest.approx(expected['lipschitz_upper_bound'],
                                                          rel=1e-12)
    for certificate in ('pairwise', 'global'):  # that version certified exact arithmetic
        exact = model.certified_radius(x, y, certificate, arithmetic='exact')
        np.testing.assert_allclose(exact, expected[f'radius_{certificate}'], rtol=1e-9,
                                   atol=1e-12)
        assert np.all(model.certified_radius(x, y, certificate) <= exact)  # float32: never more


def test_legacy_files_read_in_todays_terms(legacy_run):
    records = run_files.read_metrics(legacy_run)
    assert [r['epoch'] for r in records] == [1, 2]
    for record in records:  # older names mapped to today's
        assert {'test_lipschitz', 'test_required_margin', 'epochs_per_second'} <= set(record)
        assert not {'lipschitz', 'required_margin', 'steps_per_sec'} & set(record)
    config = run_files.load_config(legacy_run)
    assert config.evals.cw_l2.steps == 100 and 'attack' not in config  # was config.attack


FLOAT32_RUNS = ('mlp_7a89d3b', 'cnn_7a89d3b', 'liresnet_7a89d3b', 'aol_7a89d3b')


@pytest.mark.parametrize('run', FLOAT32_RUNS)
def test_a_run_of_every_kind_certifies_its_float32_radii_as_before(run, tmp_path):
    workdir = str(tmp_path / run)
    shutil.copytree(os.path.join(FIXTURES, run), workdir)
    with open(os.path.join(workdir, 'expected.json')) as f:
        expected = json.load(f)
    model = lclmt_jax.restore(workdir)
    dataset = data.load_dataset(model.config.data)
    x = np.asarray(dataset.test_images[:32], np.float32) / 255.0
    y = dataset.test_labels[:32]
    np.testing.assert_allclose(model.logits(x), expected['logits'], rtol=1e-6, atol=1e-6)
    assert model.lipschitz_upper_bound() == pytest.approx(expected['lipschitz_upper_bound'],
                                                          rel=1e-12)
    for certificate in ('pairwise', 'global'):
        radii = model.certified_radius(x, y, certificate)
        assert np.count_nonzero(radii) >= 16  # the fixture certifies something
        np.testing.assert_allclose(radii, expected[f'radius_{certificate}'], rtol=1e-9,
                                   atol=1e-12)
        np.testing.assert_allclose(model.certified_radius(x, y, certificate, arithmetic='exact'),
                                   expected[f'exact_radius_{certificate}'], rtol=1e-9,
                                   atol=1e-12)
