"""Margins, required gaps, pairwise constants and certified radii against direct computations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lclmt_jax import margins
from lclmt_jax.models import ModelOutput

pytestmark = pytest.mark.fast

LOGITS = jnp.array([[3.0, 1.0, 2.0, -1.0],
                    [0.0, 5.0, 5.0, 1.0],
                    [4.0, 4.0, 0.0, 0.0]])
LABELS = jnp.array([0, 0, 1])


def _bounds(lipschitz, body_lipschitz=1.0, head_kernel=None):
    """Network bounds as a certificate reads them (a 4-class head by default)."""
    head_kernel = jnp.eye(4) if head_kernel is None else head_kernel
    return ModelOutput(None, jnp.asarray(lipschitz), jnp.asarray(body_lipschitz), head_kernel)


def test_margin_and_runner_up():
    chex.assert_trees_all_close(margins.margin(LOGITS, LABELS), jnp.array([1.0, -5.0, 0.0]))
    np.testing.assert_array_equal(margins.runner_up(LOGITS, LABELS), [2, 1, 0])
    # the runner-up is never the true class, even when it is the smallest logit
    assert int(margins.runner_up(jnp.array([[-9.0, -1.0, -2.0]]), jnp.array([0]))[0]) == 1


def test_global_required_margin_is_sqrt2_L_eps():
    chex.assert_trees_all_close(margins.global_required_margin(jnp.float32(3.0), 0.5),
                                jnp.float32(np.sqrt(2) * 1.5))
    gaps = margins.CERTIFICATES.get('global').gaps(_bounds(3.0), 0.5, LABELS)
    expected = np.sqrt(2) * 1.5 * (1 - np.eye(4)[np.asarray(LABELS)])
    chex.assert_trees_all_close(gaps, jnp.asarray(expected, jnp.float32), rtol=1e-6)


def test_pairwise_constants_are_column_distances_times_the_body_bound():
    kernel = np.random.default_rng(0).normal(size=(6, 4))
    expected = np.linalg.norm(kernel.T[:, None] - kernel.T[None], axis=-1) * 2.5
    constants = margins.pairwise_constants(jnp.asarray(kernel, jnp.float32), 2.5)
    chex.assert_trees_all_close(constants, jnp.asarray(expected, jnp.float32), rtol=1e-5)
    assert np.all(np.diag(np.asarray(constants)) == 0)
    # never above the global constant sqrt(2)·|W|·L_body
    assert np.all(expected <= np.sqrt(2) * np.linalg.norm(kernel, 2) * 2.5 + 1e-12)
    # finite gradients even for coinciding columns
    kernel = jnp.asarray(kernel, jnp.float32).at[:, 1].set(kernel[:, 0])
    grad = jax.grad(lambda k: margins.pairwise_constants(k, 1.0).sum())(kernel)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_binding_margin_with_global_gaps_is_the_margin_and_sqrt2_L_eps():
    gaps = margins.CERTIFICATES.get('global').gaps(_bounds(2.0), 0.1, LABELS)
    margin, required = margins.binding_margin(LOGITS, LABELS, gaps)
    chex.assert_trees_all_close(margin, margins.margin(LOGITS, LABELS))
    chex.assert_trees_all_close(required, jnp.full(3, np.sqrt(2) * 0.2, jnp.float32), rtol=1e-6)


def test_radii_in_float64_match_a_direct_numpy_computation():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(50, 5))
    labels = rng.integers(0, 5, 50)
    kernel = rng.normal(size=(8, 5))
    with jax.enable_x64(True):
        bounds = _bounds(3.0, 1.5, jnp.asarray(kernel))
        global_radius, pairwise_radius = (
            np.asarray(margins.CERTIFICATES.get(name).radii(jnp.asarray(logits),
                                                            jnp.asarray(labels), bounds))
            for name in ('global', 'pairwise'))
    assert global_radius.dtype == pairwise_radius.dtype == np.float64
    true = logits[np.arange(50), labels]
    others = np.where(np.eye(5, dtype=bool)[labels], -np.inf, logits)
    np.testing.assert_allclose(global_radius,
                               np.maximum(true - others.max(1), 0) / (np.sqrt(2) * 3.0),
                               rtol=1e-14)
    distances = np.linalg.norm(kernel.T[:, None] - kernel.T[None], axis=-1) * 1.5
    per_class = np.where(np.eye(5, dtype=bool)[labels], np.inf,
                         (true[:, None] - logits) / np.where(distances[labels] == 0, 1,
                                                             distances[labels]))
    np.testing.assert_allclose(pairwise_radius, np.maximum(per_class.min(1), 0), rtol=1e-14)


def test_the_global_radius_of_the_generic_rule_is_the_margin_over_sqrt2_L_to_the_last_bit():
    logits = np.random.default_rng(3).normal(size=(200, 10))
    labels = np.random.default_rng(4).integers(0, 10, 200)
    with jax.enable_x64(True):
        lipschitz = jnp.float64(1.7)
        radii = margins.CERTIFICATES.get('global').radii(
            jnp.asarray(logits), jnp.asarray(labels), _bounds(lipschitz, 1.0, jnp.eye(10)))
        direct = jnp.maximum(margins.margin(jnp.asarray(logits), jnp.asarray(labels)), 0.0) / (
            margins.SQRT2 * lipschitz)
        np.testing.assert_array_equal(np.asarray(radii), np.asarray(direct))


def test_certificates_are_registered_by_name():
    assert set(margins.CERTIFICATES) == {'global', 'pairwise'}
    with pytest.raises(ValueError, match="unknown certificate 'tight'; allowed: global, pairwise"):
        margins.CERTIFICATES.get('tight')
