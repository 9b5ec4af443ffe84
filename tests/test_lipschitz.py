"""Lipschitz bounds of layers and networks against exact computations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lclmt_jax import layers, models


def test_power_iteration_converges_to_the_largest_singular_value():
    kernel = jax.random.normal(jax.random.key(0), (50, 30))
    exact = np.linalg.svd(np.asarray(kernel, np.float64), compute_uv=False)[0]
    v = layers._normalize(jax.random.normal(jax.random.key(1), (50,)))
    estimates = []
    for _ in range(200):
        sigma, v = layers.dense_power_iteration(kernel, v)
        estimates.append(float(sigma))
    assert max(estimates) <= exact * (1 + 1e-5)  # a lower bound at every step
    np.testing.assert_allclose(estimates[-1], exact, rtol=1e-4)


def test_power_iteration_estimate_is_differentiable_in_the_kernel():
    kernel = jax.random.normal(jax.random.key(0), (6, 4))
    v = layers._normalize(jnp.ones(6))
    for _ in range(100):
        _, v = layers.dense_power_iteration(kernel, v)
    grad = jax.grad(lambda k: layers.dense_power_iteration(k, v)[0])(kernel)
    u_svd, _, vt_svd = np.linalg.svd(np.asarray(kernel))
    # d sigma / dK = v1 u1^T for x -> x @ K, whose top singular pair is (u_svd[:,0], vt_svd[0]).
    chex.assert_trees_all_close(grad, np.outer(u_svd[:, 0], vt_svd[0]), atol=1e-4)


@pytest.mark.parametrize('shape', [(784, 100), (100, 10), (7, 13)])
def test_dense_sound_bound_is_at_least_the_float64_spectral_norm(shape):
    kernel = jax.random.normal(jax.random.key(3), shape) * 0.1
    exact = np.linalg.svd(np.asarray(kernel, np.float64), compute_uv=False)[0]
    bound = layers.dense_upper_bound(kernel)
    assert exact <= bound <= exact * (1 + 1e-5)


def test_sound_bound_refuses_to_run_under_jit():
    with pytest.raises(TypeError, match='outside jit'):
        jax.jit(layers.dense_upper_bound)(jnp.ones((3, 3)))


def _converged_mlp(seed):
    model = models.MLP(hidden_sizes=(16, 16, 16), num_classes=5)
    variables = model.init({'params': jax.random.key(seed)}, jnp.zeros((1, 8, 8, 1)))
    x = jnp.zeros((1, 8, 8, 1))
    for _ in range(300):  # power iteration to convergence: the estimate approaches the exact L
        _, state = model.apply(variables, x, train=True, mutable=['lipschitz'])
        variables = {'params': variables['params'], **state}
    return model, variables


def _jacobian_norm(model, variables, x):
    logits_fn = lambda z: model.apply(variables, z[None])[0][0]
    jac = jax.jacobian(logits_fn)(x).reshape(5, -1)
    return np.linalg.norm(np.asarray(jac, np.float64), ord=2)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_network_bounds_dominate_the_jacobian_norm_at_random_inputs(seed):
    model, variables = _converged_mlp(seed)
    estimate = float(model.apply(variables, jnp.zeros((1, 8, 8, 1))).lipschitz)
    sound = model.apply(variables, jnp.zeros((1, 8, 8, 1)), sound=True).lipschitz
    layer_norms = [np.linalg.norm(np.asarray(p['kernel'], np.float64), ord=2)
                   for p in variables['params'].values()]
    exact_product = float(np.prod(layer_norms))
    np.testing.assert_allclose(estimate, exact_product, rtol=1e-3)
    assert exact_product <= sound <= exact_product * (1 + 1e-5)
    for x in jax.random.uniform(jax.random.key(seed + 10), (20, 8, 8, 1)):
        assert _jacobian_norm(model, variables, x) <= sound


def test_head_bound_times_body_bound_is_the_network_bound():
    model, variables = _converged_mlp(0)
    out = model.apply(variables, jnp.zeros((1, 8, 8, 1)), sound=True)
    head = layers.dense_upper_bound(variables['params']['head']['kernel'])
    np.testing.assert_allclose(out.lipschitz, out.body_lipschitz * head, rtol=1e-12)
