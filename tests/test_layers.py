"""The Flax layers of ``lclmt_jax.layers``: their estimates, vectors and sound bounds."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from bound_testing import conv_matrix, converge, exact_conv_norm, random_bn_variables, unit
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lclmt_jax import bounds, input_pipeline
from lclmt_jax.layers.batchnorm import LipschitzBatchNorm
from lclmt_jax.layers.conv import LipschitzConv
from lclmt_jax.layers.dense import LipschitzDense


def test_conv_module_estimate_update_sound_bound_and_gradient():
    conv = LipschitzConv(3, kernel_size=3, strides=2, padding='SAME')
    x = unit((2, 7, 6, 2), 0)
    variables = jax.jit(conv.init)({'params': jax.random.key(1)}, x)
    assert variables['lipschitz']['v'].shape == (1, 7, 6, 2)
    kernel = variables['params']['kernel']
    exact = exact_conv_norm(kernel, (7, 6, 2), 2, 'SAME')

    # Not training: the vector stays put even when the collection is mutable.
    _, state = conv.apply(variables, x, train=False, mutable=['lipschitz'])
    chex.assert_trees_all_equal(state['lipschitz'], variables['lipschitz'])
    (_, sigma), state = conv.apply(variables, x, train=True, mutable=['lipschitz'])
    assert not np.allclose(state['lipschitz']['v'], variables['lipschitz']['v'])

    variables = converge(conv, variables, x)
    y, sigma = conv.apply(variables, x)
    np.testing.assert_allclose(float(sigma), exact, rtol=1e-3)
    expected_y = jax.lax.conv_general_dilated(x, kernel, (2, 2), 'SAME',
                                              dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    chex.assert_trees_all_close(y, expected_y + variables['params']['bias'], atol=1e-5)

    _, sound = conv.apply(variables, x, sound=True)
    assert sound == bounds.conv_upper_bound(kernel, x.shape, 2, 'SAME') >= exact

    # At convergence d sigma/d kernel is the gradient of the exact top singular value.
    v = variables['lipschitz']['v']
    grad_estimate = jax.grad(lambda k: bounds.conv_power_iteration(k, v, 2, 'SAME')[0])(kernel)
    grad_exact = jax.grad(lambda k: jnp.linalg.svd(
        conv_matrix(k, (7, 6, 2), 2, 'SAME'), compute_uv=False)[0])(kernel)
    chex.assert_trees_all_close(grad_estimate, grad_exact, atol=1e-3)

    with pytest.raises(ValueError, match='initialized for inputs'):
        conv.apply(variables, jnp.zeros((1, 8, 6, 2)))


def test_channel_scaled_conv_estimate_and_bound_are_those_of_the_scaled_map():
    """diag(out)·conv·diag(in): power iteration, sound bound and module against its dense matrix."""
    kernel = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3, 3, 4)), jnp.float32)
    rng = np.random.default_rng(5)
    in_scale = jnp.asarray(rng.uniform(-2.0, 2.0, 3), jnp.float32)
    out_scale = jnp.asarray(rng.uniform(0.1, 3.0, 4), jnp.float32)
    matrix = np.asarray(conv_matrix(kernel, (8, 8, 3), 2, 'SAME'), np.float64)
    scaled = (np.tile(np.asarray(out_scale, np.float64), 16)[:, None] * matrix
              * np.tile(np.asarray(in_scale, np.float64), 64)[None, :])  # NHWC: channel last
    exact = np.linalg.svd(scaled, compute_uv=False)[0]

    run = jax.jit(lambda v: jax.lax.scan(lambda v, _: tuple(reversed(
        bounds.conv_power_iteration(kernel, v, 2, 'SAME', in_scale, out_scale))), v, None,
        length=1000))
    _, sigmas = run(unit((1, 8, 8, 3), 1))
    assert float(sigmas.max()) <= exact * (1 + 1e-5)
    np.testing.assert_allclose(float(sigmas[-1]), exact, rtol=1e-3)
    bound = bounds.conv_upper_bound(kernel, (8, 8, 3), 2, 'SAME', in_scale, out_scale)
    assert exact <= bound <= 1.5 * exact
    assert bound == bounds.conv_upper_bound(
        np.asarray(kernel, np.float64) * np.asarray(in_scale, np.float64)[:, None]
        * np.asarray(out_scale, np.float64), (8, 8, 3), 2, 'SAME')
    # The plain product of the three norms is looser.
    product = (np.abs(in_scale).max() * bounds.conv_upper_bound(kernel, (8, 8, 3), 2, 'SAME')
               * np.abs(out_scale).max())
    assert bound < product

    # The module: the output is the plain conv, the bound that of the scaled map.
    conv = LipschitzConv(4, 3, 2, use_bias=False)
    x = unit((2, 8, 8, 3), 2)
    variables = {'params': {'kernel': kernel},
                 'lipschitz': {'v': unit((1, 8, 8, 3), 1)}}
    y, sound = conv.apply(variables, x, sound=True, in_scale=np.asarray(in_scale),
                          out_scale=np.asarray(out_scale))
    assert sound == bound
    chex.assert_trees_all_close(y, conv.apply(variables, x)[0])
    y_only, none = conv.apply(variables, x, train=True, with_bound=False)
    assert none is None
    chex.assert_trees_all_close(y_only, y)


def _normal(shape, seed, scale=1.0, shift=0.0) -> jax.Array:
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape) + shift, jnp.float32)


def _jacobian_norm(fn, x) -> float:
    jac = np.asarray(jax.jacobian(fn)(x), np.float64)
    return float(np.linalg.norm(jac.reshape(x.size, x.size), ord=2))


def test_batch_norm_eval_bound_is_the_jacobian_norm():
    bn = LipschitzBatchNorm()
    x = _normal((1, 4, 3, 5), 0)
    variables = random_bn_variables(bn.init({'params': jax.random.key(0)}, x), 1)
    exact = _jacobian_norm(lambda z: bn.apply(variables, z[None])[0][0], x[0])
    _, estimate = bn.apply(variables, x)
    _, sound = bn.apply(variables, x, sound=True)
    np.testing.assert_allclose(float(estimate), exact, rtol=1e-6)
    assert exact <= sound <= exact * (1 + 1e-5)


def test_batch_norm_train_bound_is_that_of_the_affine_map_with_batch_statistics():
    bn = LipschitzBatchNorm(momentum=0.8)
    x = _normal((6, 4, 3, 5), 0, scale=3.0, shift=1.0)
    variables = random_bn_variables(bn.init({'params': jax.random.key(0)}, x), 1)
    (y, bound), state = bn.apply(variables, x, train=True, mutable=['batch_stats'])
    x64 = np.asarray(x, np.float64)
    mean, var = x64.mean(axis=(0, 1, 2)), x64.var(axis=(0, 1, 2))
    gamma = np.asarray(variables['params']['scale'], np.float64)
    beta = np.asarray(variables['params']['bias'], np.float64)
    affine = lambda z: (z - mean) * gamma / np.sqrt(var + 1e-5) + beta
    chex.assert_trees_all_close(y, affine(x64).astype(np.float32), atol=1e-4)
    frozen_jacobian_norm = np.max(np.abs(gamma) / np.sqrt(var + 1e-5))  # diagonal Jacobian
    np.testing.assert_allclose(float(bound), frozen_jacobian_norm, rtol=1e-5)
    old = variables['batch_stats']
    chex.assert_trees_all_close(state['batch_stats'], {
        'mean': 0.8 * old['mean'] + 0.2 * mean, 'var': 0.8 * old['var'] + 0.2 * var}, atol=1e-5)
    # Without a mutable 'batch_stats' the running averages are left alone.
    (y2, bound2) = bn.apply(variables, x, train=True)
    chex.assert_trees_all_close((y2, bound2), (y, bound))


def test_batch_norm_statistics_are_those_of_the_global_batch_when_sharded():
    """Under the trainer's sharded jit the statistics span every device's rows (no axis names)."""
    x = _normal((8, 3, 3, 4), 0) * jnp.arange(1.0, 9.0)[:, None, None, None]  # shards differ
    bn = LipschitzBatchNorm()
    variables = bn.init({'params': jax.random.key(0)}, x)
    apply = lambda x: bn.apply(variables, x, train=True, mutable=['batch_stats'])
    expected = apply(x)
    mesh = input_pipeline.make_mesh()
    assert mesh.size == 4
    sharded = jax.device_put(x, NamedSharding(mesh, P('data')))
    chex.assert_trees_all_close(jax.jit(apply)(sharded), expected, atol=1e-5)


def test_dense_layer_vector_update_and_power_iterations_per_call():
    x = unit((3, 20), 0)
    dense = LipschitzDense(7)
    variables = dense.init({'params': jax.random.key(0)}, x)
    kernel = variables['params']['kernel']
    chex.assert_trees_all_close(dense.apply(variables, x)[0], x @ kernel, atol=1e-6)
    (_, sigma), state = dense.apply(variables, x, train=True, mutable=['lipschitz'])
    expected_sigma, expected_v = bounds.dense_power_iteration(kernel, variables['lipschitz']['v'])
    chex.assert_trees_all_close((sigma, state['lipschitz']['v']), (expected_sigma, expected_v))
    three_steps = bounds.ONE_VECTOR._replace(power_iterations=3)
    (_, sigma3), state3 = LipschitzDense(7, estimator=three_steps).apply(
        variables, x, train=True, mutable=['lipschitz'])
    chex.assert_trees_all_close(
        (sigma3, state3['lipschitz']['v']),
        bounds.dense_power_iteration(kernel, variables['lipschitz']['v'], 3), atol=1e-6)
    _, sound = dense.apply(variables, x, sound=True)
    assert sound == bounds.dense_upper_bound(kernel) >= float(sigma3)


def test_dense_estimators_keep_their_state_and_stay_below_the_sound_bound():
    x = unit((3, 40), 1)
    for estimator, state_shape in [(bounds.ONE_VECTOR._replace(subspace_size=8), (40, 8)),
                                   (bounds.Estimator(1, subspace_size=8, exact_below=8), None),
                                   (bounds.ONE_VECTOR._replace(power_iterations=2), (40,))]:
        dense = LipschitzDense(8, estimator=estimator)
        variables = dense.init({'params': jax.random.key(0)}, x)
        shapes = jax.tree.map(jnp.shape, variables.get('lipschitz', {}))
        assert shapes == ({'v': state_shape} if state_shape else {})
        (_, sigma), state = dense.apply(variables, x, train=True, mutable=['lipschitz'])
        _, sound = dense.apply(variables, x, sound=True)
        assert float(sigma) <= sound
        if state_shape is None:  # a thin layer's Gram norm: exact up to float32
            np.testing.assert_allclose(float(sigma), sound, rtol=1e-5)
