"""Sound certificates vs exact computations, and vs sampled and gradient attacks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lclmt_jax import certify, margins
from lclmt_jax.models.mlp import MLP

pytestmark = pytest.mark.fast

INPUT_SHAPE = (6, 6, 1)


def tiny_network(seed: int, num_classes: int = 4):
    model = MLP(hidden_sizes=(12, 12), num_classes=num_classes)
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
    pairwise = certify.certified_radii(logits, labels, bounds, 'pairwise')
    global_ = certify.certified_radii(logits, labels, bounds, 'global')
    assert pairwise.dtype == global_.dtype == np.float64
    assert np.all(pairwise >= global_ * (1 - 1e-12))
    assert np.all(pairwise[labels != np.argmax(logits, 1)] == 0)
    assert np.mean(pairwise > global_ * 1.01) > 0.5  # it is tighter, not just equal


@functools.cache
def _margin_fn(model):
    def margin(variables, z, label):
        return margins.margin(model.apply(variables, z[None]).logits, label[None])[0]
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


def test_certified_radii_are_float64_end_to_end():
    """Margins of 1e-9 between float64 logits survive: nothing is rounded to float32."""
    logits = np.array([[1.0 + 1e-9, 1.0, 0.0]])
    bounds = certify.SoundBounds(1.0, 1.0, np.eye(3))
    radius = certify.certified_radii(logits, np.array([0]), bounds, 'global')
    np.testing.assert_allclose(radius, 1e-9 / np.sqrt(2), rtol=1e-6)
    radius = certify.certified_radii(logits, np.array([0]), bounds, 'pairwise')
    np.testing.assert_allclose(radius, 1e-9 / np.sqrt(2), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown certificate 'tight'"):
        certify.certified_radii(logits, np.array([0]), bounds, 'tight')
