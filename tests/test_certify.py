"""Sound certificates vs exact computations, sampled and gradient attacks, and the self-check."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lclmt_jax import certify, configs, evaluate, inflation, models, train

INPUT_SHAPE = (6, 6, 1)


def tiny_network(seed: int, num_classes: int = 4):
    model = models.MLP(hidden_sizes=(12, 12), num_classes=num_classes)
    variables = model.init({'params': jax.random.key(seed)}, jnp.zeros((1, *INPUT_SHAPE)))
    return model, variables


def test_sound_bound_dominates_the_exact_float64_norm_product():
    model, variables = tiny_network(0)
    bounds = certify.sound_bounds(model, variables, INPUT_SHAPE)
    norms = [np.linalg.svd(np.asarray(layer['kernel'], np.float64), compute_uv=False)[0]
             for layer in variables['params'].values()]
    assert bounds.lipschitz >= np.prod(norms)
    assert bounds.body_lipschitz >= np.prod(norms[:-1])
    np.testing.assert_allclose(bounds.lipschitz, np.prod(norms), rtol=1e-5)


def _points(seed, count=64):
    return np.asarray(jax.random.uniform(jax.random.key(seed), (count, *INPUT_SHAPE)), np.float64)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_pairwise_radius_is_never_below_the_global_radius(seed):
    model, variables = tiny_network(seed)
    x = _points(seed)
    logits = certify.logits_float64(model, variables, x)
    labels = np.argmax(logits, axis=1)
    labels[::5] = (labels[::5] + 1) % 4  # some misclassified points too
    bounds = certify.sound_bounds(model, variables, INPUT_SHAPE)
    pairwise = certify.pairwise_radii(logits, labels, bounds)
    global_ = certify.global_radii(logits, labels, bounds)
    assert np.all(pairwise >= global_ * (1 - 1e-12))
    assert np.all(pairwise[labels != np.argmax(logits, 1)] == 0)
    assert np.mean(pairwise > global_ * 1.01) > 0.5  # it is tighter, not just equal


@functools.cache
def _margin_fn(model):
    def margin(variables, z, label):
        return inflation.margin(model.apply(variables, z[None]).logits, label[None])[0]
    return jax.jit(margin)


@functools.cache
def _margin_grad_fn(model):
    return jax.jit(jax.grad(_margin_fn(model), argnums=1))


def _worst_perturbation_inside(model, variables, x, label, radius, rng):
    """Random directions and gradient-directed steps of length just under the radius."""
    margin_at = lambda z: _margin_fn(model)(variables, jnp.asarray(z, jnp.float32), label)
    grad_at = lambda z: _margin_grad_fn(model)(variables, jnp.asarray(z, jnp.float32), label)
    grad = np.asarray(grad_at(x), np.float64)
    directions = [-grad] + [rng.standard_normal(x.shape) for _ in range(20)]
    candidates = [x + 0.999 * radius * d / np.linalg.norm(d) for d in directions]
    # Projected gradient descent on the margin, staying inside the ball.
    z = x.copy()
    for _ in range(30):
        g = np.asarray(grad_at(z), np.float64)
        z = z - 0.2 * radius * g / (np.linalg.norm(g) + 1e-12)
        delta = z - x
        z = x + delta * min(1.0, 0.999 * radius / np.linalg.norm(delta))
    candidates.append(z)
    return min(float(margin_at(c)) for c in candidates)


@pytest.mark.parametrize('certificate', ['global', 'pairwise'])
def test_no_perturbation_inside_the_certified_radius_changes_the_prediction(certificate):
    model, variables = tiny_network(3)
    x = _points(3, count=80)
    logits = certify.logits_float64(model, variables, x)
    labels = np.argmax(logits, axis=1)
    bounds = certify.sound_bounds(model, variables, INPUT_SHAPE)
    radii = certify.certified_radii(logits, labels, bounds, certificate)
    rng = np.random.default_rng(0)
    for xi, yi, ri in zip(x, labels, radii, strict=True):
        assert _worst_perturbation_inside(model, variables, xi, yi, ri, rng) > 0


def test_certified_accuracy_curve_is_monotone_and_starts_at_clean_accuracy():
    radii = np.array([0.0, 0.2, 0.5, 0.5, 1.5, 0.0])
    correct = np.array([False, True, True, True, True, True])
    grid = np.linspace(0, 2, 41)
    curve = certify.certified_accuracy(radii, correct, grid)
    assert np.all(np.diff(curve) <= 0)
    np.testing.assert_allclose(curve[0], correct.mean())
    np.testing.assert_allclose(certify.certified_accuracy(radii, correct, [0.5]), [3 / 6])
    assert curve[-1] == 0


def test_broken_certificates_counts_attacks_inside_the_radius():
    radii = np.array([1.0, 1.0, 0.0, 2.0])
    correct = np.array([True, True, False, True])
    norms = np.array([0.5, 1.5, 0.0, np.inf])
    np.testing.assert_array_equal(certify.broken_certificates(radii, correct, norms), [0])


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('run'))
    config = configs.mnist_variant(configs.default_config(), 'embedded')
    config.num_epochs = 3
    config.attack.steps = 30
    config.attack.binary_search_steps = 3
    config.attack.batch_size = 200
    train.train_and_evaluate(config, workdir)
    return workdir


def test_evaluation_is_sound_on_a_trained_model(trained_workdir):
    results = evaluate.evaluate_run(trained_workdir, max_examples=200)
    assert results['broken_certificates_both'] == 0
    for name in certify.CERTIFICATES:
        accuracies = list(results['certified_accuracy'][name].values())
        assert all(a <= results['clean_accuracy'] for a in accuracies)
        assert accuracies == sorted(accuracies, reverse=True)
    attack_curve = evaluate.read_curves(trained_workdir)['attack_accuracy']
    assert np.all(np.diff(attack_curve) <= 0)


def test_an_understated_bound_makes_the_self_check_fail(trained_workdir, monkeypatch):
    honest = certify.sound_bounds

    def understated(*args, **kwargs):
        bounds = honest(*args, **kwargs)
        return bounds._replace(lipschitz=bounds.lipschitz / 50,
                               body_lipschitz=bounds.body_lipschitz / 50)

    monkeypatch.setattr(certify, 'sound_bounds', understated)
    with pytest.raises(evaluate.BrokenCertificateError, match='a Lipschitz bound is not'):
        evaluate.evaluate_run(trained_workdir, max_examples=200)


def test_restore_api(trained_workdir):
    import lclmt_jax

    restored = lclmt_jax.restore(trained_workdir)
    x = np.random.default_rng(0).uniform(size=(5, 28, 28, 1)).astype(np.float32)
    logits = restored.logits(x)
    chex.assert_shape(logits, (5, 10))
    bound = restored.lipschitz_upper_bound()
    norms = [np.linalg.norm(np.asarray(p['kernel'], np.float64), 2)
             for p in restored.params.values()]
    assert bound >= np.prod(norms)
    radii = restored.certified_radius(x, np.argmax(logits, 1))
    chex.assert_shape(radii, (5,))
    assert np.all(radii >= 0)
    assert restored.epoch == 3
