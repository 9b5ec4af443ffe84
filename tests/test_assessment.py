"""Evaluation of a trained run: the evaluators, their files, the self-check and comparisons."""

import json
import os

import numpy as np
import pytest

from lclmt_jax import assessment, certify, comparison, evaluators, margins

pytestmark = pytest.mark.fast


def test_evaluation_is_sound_on_a_trained_model(trained_workdir):
    results = assessment.evaluate_run(trained_workdir, max_examples=200)
    assert results['broken_certificates_both'] == 0
    assert results['evaluators'] == ['certificates', 'cw_l2'] and results['epoch'] == 3
    for name in margins.CERTIFICATES:
        accuracies = [results[f'certified_{name}@{eps:g}'] for eps in (0.1, 0.3, 0.5, 1, 1.58)]
        assert all(a <= results['clean_accuracy'] for a in accuracies)
        assert accuracies == sorted(accuracies, reverse=True)
    curves = comparison.read_curves(trained_workdir)
    assert set(curves) == {'radius', 'attack', 'certified_global', 'certified_pairwise'}
    assert np.all(np.diff(curves['attack']) <= 0)
    assert np.all(curves['certified_pairwise'] <= curves['attack'] + 1e-12)  # lower <= upper
    out = os.path.join(trained_workdir, assessment.EVALUATION_DIR)
    for name in ('evaluation.json', 'curves.csv', 'per_example.csv', 'certified_vs_attack.png'):
        assert os.path.getsize(os.path.join(out, name)) > 0
    with open(os.path.join(out, 'evaluation.json')) as f:
        assert json.load(f)['certified_pairwise@0.1'] == results['certified_pairwise@0.1']


def test_an_understated_bound_makes_the_self_check_fail(trained_workdir, monkeypatch):
    honest = certify.sound_bounds

    def understated(*args, **kwargs):
        bounds = honest(*args, **kwargs)
        return bounds._replace(lipschitz=bounds.lipschitz / 50,
                               body_lipschitz=bounds.body_lipschitz / 50)

    monkeypatch.setattr(certify, 'sound_bounds', understated)
    with pytest.raises(assessment.BrokenCertificateError, match='a Lipschitz bound is not'):
        assessment.evaluate_run(trained_workdir, max_examples=200)


def test_evaluators_are_chosen_by_name(trained_workdir):
    assert {'certificates', 'cw_l2'} <= set(evaluators.EVALUATORS.names())
    results = assessment.evaluate_run(trained_workdir, max_examples=50, evaluators=['certificates'])
    assert 'certified_pairwise@0.1' in results and 'attack@0.1' not in results
    with pytest.raises(ValueError, match="unknown evaluator 'pgd'; allowed: certificates, cw_l2"):
        assessment.evaluate_run(trained_workdir, max_examples=50, evaluators=['pgd'])


def test_the_attack_can_cover_fewer_points_than_the_certificates(trained_workdir):
    results = assessment.evaluate_run(trained_workdir, max_examples=60,
                                      evaluator_settings=['cw_l2.max_examples=20'])
    assert results['num_examples'] == 60 and results['attack_examples'] == 20
    assert results['broken_certificates_both'] == 0
    with open(os.path.join(trained_workdir, assessment.EVALUATION_DIR, 'per_example.csv')) as f:
        norms = [float(row.split(',')[-1]) for row in f.read().splitlines()[1:]]
    header = open(os.path.join(trained_workdir, assessment.EVALUATION_DIR,
                               'per_example.csv')).readline().strip().split(',')
    assert header[-1] == 'attack_norm' and len(norms) == 60
    attacked = ~np.isnan(norms)  # the fixed stratified sample, not the first 20
    labels = np.asarray([int(row.split(',')[header.index('label')]) for row in open(
        os.path.join(trained_workdir, assessment.EVALUATION_DIR,
                     'per_example.csv')).read().splitlines()[1:]])
    assert attacked.sum() == 20 and np.array_equal(
        np.flatnonzero(attacked), evaluators.stratified_sample(labels, 20))


def test_compare_tabulates_every_evaluator_scalar_and_overlays_curves(trained_workdir, tmp_path):
    assessment.evaluate_run(trained_workdir, max_examples=100)
    table = comparison.compare_runs([trained_workdir], str(tmp_path))
    row = table[0]
    assert row['run'] == 'LC-LMT-pw(1.0)' and row['epochs'] == 3
    assert row['broken_certificates'] == 0 and 0 <= row['certified_pairwise@0.3'] <= 1
    assert 'attack@1.58' in row and 'lipschitz_sound' in row
    for name in ('fig1a_margins.png', 'fig1b_loss.png', 'fig2_attack.png',
                 'fig2_certified_pairwise.png', 'comparison.csv', 'comparison.md'):
        assert os.path.getsize(tmp_path / name) > 0


def test_evaluation_json_is_standard_json(tmp_path):
    """A figure that is not finite (a median attack norm where no attack succeeded) is null."""
    assessment.save_evaluation(str(tmp_path), {'median_attack_norm': float('inf'), 'n': 1.5}, {},
                               (0.1,))
    with open(tmp_path / 'evaluation' / 'evaluation.json') as f:
        text = f.read()
    def refuse(name):
        raise ValueError(name)
    assert json.loads(text, parse_constant=refuse) == {'median_attack_norm': None, 'n': 1.5}
