"""The pure bound functions of ``lclmt_jax.bounds`` against exact computations.

Dense layers against a float64 SVD; convolutions against the SVD of their dense (brute-force)
matrix; power iteration as a lower bound that converges, sound bounds as upper bounds.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from bound_testing import exact_conv_norm, unit

from lclmt_jax import bounds, convolution
from lclmt_jax.layers import batchnorm, pooling

# (kernel size, stride, padding, C_in, C_out, input H, input W)
CONV_CASES = [
    (1, 1, 'SAME', 3, 4, 6, 6),
    (1, 2, 'VALID', 4, 2, 7, 7),
    (3, 1, 'SAME', 2, 3, 8, 8),
    (3, 2, 'SAME', 3, 4, 8, 8),
    (3, 2, 'SAME', 2, 2, 7, 5),
    (3, 1, 'VALID', 4, 4, 6, 5),
    (3, 2, 'VALID', 2, 3, 7, 7),
    (3, 1, 1, 1, 2, 5, 5),
    (3, 2, ((0, 2), (1, 0)), 3, 2, 8, 6),
    (3, (1, 2), (2, 1), 2, 2, 6, 8),
    (2, 1, 'SAME', 2, 2, 5, 5),
]
CONV_IDS = [f'k{c[0]}-s{c[1]}-{c[2]}-{c[3]}to{c[4]}-{c[5]}x{c[6]}' for c in CONV_CASES]


def _kernel(case, seed=0) -> jax.Array:
    k, _, _, c_in, c_out, _, _ = case
    return jnp.asarray(np.random.default_rng(seed).normal(size=(k, k, c_in, c_out)), jnp.float32)


@functools.partial(jax.jit, static_argnames=('stride', 'padding', 'steps'))
def _power_iterations(kernel, v, stride, padding, steps):
    def body(v, _):
        sigma, v = bounds.conv_power_iteration(kernel, v, stride, padding)
        return v, sigma
    return jax.lax.scan(body, v, None, length=steps)


def test_power_iteration_converges_to_the_largest_singular_value():
    kernel = jax.random.normal(jax.random.key(0), (50, 30))
    exact = np.linalg.svd(np.asarray(kernel, np.float64), compute_uv=False)[0]
    v = bounds.normalize(jax.random.normal(jax.random.key(1), (50,)))
    estimates = []
    for _ in range(200):
        sigma, v = bounds.dense_power_iteration(kernel, v)
        estimates.append(float(sigma))
    assert max(estimates) <= exact * (1 + 1e-5)  # a lower bound at every step
    np.testing.assert_allclose(estimates[-1], exact, rtol=1e-4)


def test_power_iteration_estimate_is_differentiable_in_the_kernel():
    kernel = jax.random.normal(jax.random.key(0), (6, 4))
    v = bounds.normalize(jnp.ones(6))
    for _ in range(100):
        _, v = bounds.dense_power_iteration(kernel, v)
    grad = jax.grad(lambda k: bounds.dense_power_iteration(k, v)[0])(kernel)
    u_svd, _, vt_svd = np.linalg.svd(np.asarray(kernel))
    # d sigma / dK = v1 u1^T for x -> x @ K, whose top singular pair is (u_svd[:,0], vt_svd[0]).
    chex.assert_trees_all_close(grad, np.outer(u_svd[:, 0], vt_svd[0]), atol=1e-4)


@pytest.mark.parametrize('shape', [(784, 100), (100, 10), (7, 13)])
def test_dense_sound_bound_is_at_least_the_float64_spectral_norm(shape):
    kernel = jax.random.normal(jax.random.key(3), shape) * 0.1
    exact = np.linalg.svd(np.asarray(kernel, np.float64), compute_uv=False)[0]
    bound = bounds.dense_upper_bound(kernel)
    assert exact <= bound <= exact * (1 + 1e-5)


def test_sound_bound_refuses_to_run_under_jit():
    with pytest.raises(TypeError, match='outside jit'):
        jax.jit(bounds.dense_upper_bound)(jnp.ones((3, 3)))


@pytest.mark.parametrize('case', CONV_CASES, ids=CONV_IDS)
def test_conv_estimate_and_sound_bound_against_the_exact_norm(case):
    _, stride, padding, c_in, _, h, w = case
    shape = (h, w, c_in)
    exact = exact_conv_norm(_kernel(case), shape, stride, padding)
    # A conv's top singular values are nearly degenerate (sigma_2/sigma_1 up to 0.9996 on these
    # cases: neighbouring frequencies), so 300 steps can leave 2e-3; 1000 leave <= 1.1e-4.
    _, sigmas = _power_iterations(_kernel(case), unit((1, *shape), 1), stride, padding, 1000)
    sigmas = np.asarray(sigmas, np.float64)
    assert sigmas.max() <= exact * (1 + 1e-5)  # a lower bound at every step
    np.testing.assert_allclose(sigmas[-1], exact, rtol=1e-3)
    for seed in range(3):
        kernel = _kernel(case, seed)
        exact = exact_conv_norm(kernel, shape, stride, padding)
        bound = bounds.conv_upper_bound(kernel, shape, stride, padding)
        assert exact <= bound <= 1.5 * exact  # worst ratio on these cases: 1.19


def _circular_conv_matrix(kernel: np.ndarray, grid, strides) -> np.ndarray:
    """Dense matrix of z[i,j] = sum_pq K[p,q]^T x[(s_h i + p) % N_h, (s_w j + q) % N_w]."""
    (n_h, n_w), (s_h, s_w) = grid, strides
    k_h, k_w, c_in, _ = kernel.shape
    rows = (s_h * np.arange(n_h // s_h)[:, None] + np.arange(k_h)) % n_h  # (N'_h, k_h)
    cols = (s_w * np.arange(n_w // s_w)[:, None] + np.arange(k_w)) % n_w  # (N'_w, k_w)
    basis = np.eye(n_h * n_w * c_in).reshape(-1, n_h, n_w, c_in)
    patches = basis[:, rows][:, :, :, cols]  # (D, N'_h, k_h, N'_w, k_w, C_in)
    out = np.einsum('dapbqc,pqco->dabo', patches, kernel)
    return out.reshape(len(basis), -1).T


@pytest.mark.parametrize('kernel_hw,grid,strides', [
    ((3, 3), (6, 6), (1, 1)),
    ((3, 3), (6, 8), (2, 2)),
    ((3, 3), (4, 6), (1, 2)),
    ((1, 1), (4, 4), (2, 2)),
    ((2, 3), (6, 6), (3, 2)),
    ((3, 2), (5, 5), (1, 1)),
])
def test_circular_conv_norm_is_exact(kernel_hw, grid, strides):
    kernel = np.random.default_rng(0).normal(size=(*kernel_hw, 3, 2))
    exact = np.linalg.svd(_circular_conv_matrix(kernel, grid, strides), compute_uv=False)[0]
    np.testing.assert_allclose(bounds.circular_conv_norm(kernel, grid, strides), exact, rtol=1e-10)


def test_same_padding_matches_lax():
    for n, k, s in [(8, 3, 2), (7, 3, 2), (5, 2, 1), (6, 4, 3)]:
        x = unit((1, n, n + 1, 2), 0)
        kernel = unit((k, k, 2, 3), 1)
        expected = jax.lax.conv_general_dilated(x, kernel, (s, s), 'SAME',
                                                dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
        pads = convolution.conv_padding('SAME', (n, n + 1), (k, k), (s, s))
        chex.assert_trees_all_close(convolution.conv(x, kernel, (s, s), pads), expected, atol=1e-6)


def test_bad_padding_is_refused():
    with pytest.raises(ValueError, match='non-negative'):
        convolution.conv_padding(-1, (5, 5), (3, 3), (1, 1))
    with pytest.raises(ValueError, match='does not fit'):
        convolution.conv_padding('VALID', (2, 2), (3, 3), (1, 1))


def test_sound_bounds_refuse_to_run_under_jit():
    with pytest.raises(TypeError, match='outside jit'):
        jax.jit(lambda k: bounds.conv_upper_bound(k, (5, 5, 2)))(jnp.ones((3, 3, 2, 2)))
    with pytest.raises(TypeError, match='outside jit'):
        jax.jit(lambda g: batchnorm.batch_norm_upper_bound(g, jnp.ones(2), 1e-5))(jnp.ones(2))


def test_power_iteration_survives_a_zero_kernel():
    """A zero kernel (a zero-initialised residual branch) keeps the vector, so it can recover."""
    v = unit((1, 6, 6, 2), 0)
    sigma, v_new = bounds.conv_power_iteration(jnp.zeros((3, 3, 2, 2)), v)
    assert float(sigma) == 0.0
    chex.assert_trees_all_equal(v_new, v)
    kernel = _kernel((3, 1, 'SAME', 2, 2, 6, 6))
    _, sigmas = _power_iterations(kernel, v_new, 1, 'SAME', 300)
    np.testing.assert_allclose(float(sigmas[-1]), exact_conv_norm(kernel, (6, 6, 2), 1, 'SAME'),
                               rtol=2e-3)


def test_several_steps_per_update_are_repeated_single_steps():
    """``steps=k`` is k single steps: the same vector, and the estimate of the last one."""
    kernel = jax.random.normal(jax.random.key(0), (40, 20))
    v = bounds.normalize(jax.random.normal(jax.random.key(1), (40,)))
    single = v
    for _ in range(5):
        sigma_single, single = bounds.dense_power_iteration(kernel, single)
    sigma, v5 = bounds.dense_power_iteration(kernel, v, steps=5)
    chex.assert_trees_all_close((sigma, v5), (sigma_single, single), atol=1e-6)
    case = (3, 2, 'SAME', 3, 4, 8, 8)
    start = unit((1, 8, 8, 3), 1)
    _, sigmas = _power_iterations(_kernel(case), start, 2, 'SAME', 4)
    sigma4, _ = bounds.conv_power_iteration(_kernel(case), start, 2, 'SAME', steps=4)
    np.testing.assert_allclose(float(sigma4), float(sigmas[-1]), rtol=1e-6)


def test_chain_multiplies_and_residual_sum_adds():
    assert bounds.chain() == 1.0
    assert bounds.chain(2.0, 3.0, 0.5) == 3.0
    assert bounds.residual_sum(2.5) == 3.5  # identity shortcut: 1 + L_f
    assert bounds.residual_sum(2.5, 0.5) == 3.0
    chex.assert_trees_all_close(bounds.chain(jnp.float32(2.0), 3.0), jnp.float32(6.0))


def test_average_pool_bound_is_the_exact_jacobian_norm():
    pool = lambda x: jnp.mean(x, axis=(0, 1))
    with jax.enable_x64(True):
        jacobian = np.asarray(jax.jacobian(pool)(jnp.ones((3, 5, 2), jnp.float64))).reshape(2, -1)
    exact = np.linalg.norm(jacobian, ord=2)
    np.testing.assert_allclose(pooling.average_pool_bound(3, 5), exact, rtol=1e-12)
    assert exact <= pooling.average_pool_bound(3, 5, sound=True) <= exact * (1 + 1e-5)


def test_block_iteration_tracks_a_flat_top_spectrum_and_stays_a_lower_bound():
    """Subspace iteration with products only reaches a near-flat top spectrum from below, keeps
    its block orthonormal, and picks the top singular value out of the block."""
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(60, 60)))
    v, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    singular = np.array([3.0, 2.99, 2.98, 2.97] + [1.0] * 26)
    kernel = jnp.asarray(u[:, :30] * singular @ v.T, jnp.float32)
    basis = jnp.linalg.qr(jax.random.normal(jax.random.key(0), (60, 8)))[0]
    sigmas = []
    for _ in range(30):
        sigma, basis = bounds.dense_block_iteration(kernel, basis)
        sigmas.append(float(sigma))
    assert max(sigmas) <= 3.0 * (1 + 1e-5)
    assert sigmas[-1] >= 2.98  # inside the flat top: its spread is the estimate's only error
    chex.assert_trees_all_close(basis.T @ basis, jnp.eye(8), atol=1e-3)  # stays orthonormal
    ritz = bounds.dense_rayleigh_ritz(kernel, basis)  # once per epoch: exact Ritz vectors
    chex.assert_trees_all_close(ritz.T @ ritz, jnp.eye(8), atol=1e-4)
    np.testing.assert_allclose(float(jnp.linalg.norm(ritz[:, -1] @ kernel)), 3.0, rtol=1e-4)
    # A single vector started in the same place is still farther off after as many steps.
    single = bounds.normalize(jax.random.normal(jax.random.key(0), (60,)))
    for _ in range(30):
        sigma_single, single = bounds.dense_power_iteration(kernel, single)
    assert float(sigma_single) < sigmas[-1]
    # Differentiable in the kernel: sigma = v K u with v, u held, so <dsigma/dK, K> = sigma.
    sigma, _ = bounds.dense_block_iteration(kernel, ritz)
    grad = jax.grad(lambda k: bounds.dense_block_iteration(k, ritz)[0])(kernel)
    np.testing.assert_allclose(float(jnp.vdot(grad, kernel)), float(sigma), rtol=1e-4)


def test_the_block_follows_when_the_top_direction_switches():
    """Training pushes the tracked direction down: the block holds the next one already."""
    rng = np.random.default_rng(5)
    u, _ = np.linalg.qr(rng.normal(size=(50, 50)))
    v, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    singular = np.array([2.0, 1.98, 1.96, 1.5] + [0.5] * 16)
    basis = jnp.linalg.qr(jax.random.normal(jax.random.key(6), (50, 6)))[0]
    for step in range(40):
        if step == 20:  # the top direction is pushed below the second
            singular[0] = 1.9
        kernel = jnp.asarray(u[:, :20] * singular @ v.T, jnp.float32)
        sigma, basis = bounds.dense_block_iteration(kernel, basis)
    assert 1.98 * (1 - 1e-3) <= float(sigma) <= 1.98 * (1 + 1e-5)


@pytest.mark.parametrize('norm,shape,seed', [
    *((bounds.dense_gram_norm, shape, 2) for shape in ((100, 10), (10, 100), (12, 12))),
    *((bounds.dense_exact_norm, shape, 1) for shape in ((40, 7), (7, 40), (12, 12)))])
def test_stateless_norms_and_their_gradients_match_the_svd(norm, shape, seed):
    """The norm of a thin layer's small Gram matrix (squarings) and the exact eigh norm: both
    |K|_2 and differentiable, with the top singular pair's outer product as the gradient."""
    kernel = jax.random.normal(jax.random.key(seed), shape)
    u_svd, s, vt = np.linalg.svd(np.asarray(kernel, np.float64))
    np.testing.assert_allclose(float(norm(kernel)), s[0], rtol=1e-5)
    grad = jax.grad(norm)(kernel)
    chex.assert_trees_all_close(grad, jnp.asarray(np.outer(u_svd[:, 0], vt[0]), jnp.float32),
                                atol=1e-4)


def test_a_zero_kernel_keeps_the_block():
    basis = jnp.linalg.qr(jax.random.normal(jax.random.key(4), (12, 3)))[0]
    sigma, kept = bounds.dense_block_iteration(jnp.zeros((12, 5)), basis)
    assert float(sigma) == 0.0
    chex.assert_trees_all_close(kept, basis, atol=1e-6)
    assert float(bounds.dense_gram_norm(jnp.zeros((12, 5)))) == 0.0


