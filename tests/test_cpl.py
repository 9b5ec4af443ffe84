"""CPL layers (``layers.cpl``): the sound bound against the dense conv matrix's SVD and
brute-force Jacobians, the adjoint, the float32 rounding step against measured float32 errors,
and a LipConvNet of CPL layers through the float32 certificate (its training is in
test_lipschitz_layers.py, with every family a LipConvNet takes)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from bound_testing import conv_matrix

from lclmt_jax import bounds, certify, config_schema, convolution, models
from lclmt_jax.layers import cpl
from lclmt_jax.models.lipconvnet import LipConvNet

SHAPE = (5, 5, 2)


def _layer_and_variables(seed, inner=3, step_factor=1.0):
    """A CPL layer with random kernel and bias, its stored step scaled by ``step_factor``."""
    layer = cpl.CPLConv(inner=inner)
    variables = layer.init(jax.random.key(seed), jnp.zeros((1, *SHAPE)))
    rng = np.random.default_rng(seed)
    params = {'kernel': rng.normal(size=(3, 3, SHAPE[-1], inner)).astype(np.float32) * 0.5,
              'bias': rng.normal(size=inner).astype(np.float32) * 0.3}
    matrix = conv_matrix(params['kernel'], SHAPE, 1, 'SAME')
    step = np.float32(2.0 / np.linalg.norm(matrix, 2) ** 2 * step_factor)
    lipschitz = dict(variables['lipschitz'], h=jnp.asarray(step))
    return layer, {'params': params, 'lipschitz': lipschitz}, matrix


def test_the_adjoint_kernel_is_the_transpose():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 2, 4))
    x, z = rng.normal(size=(1, *SHAPE)), rng.normal(size=(1, 5, 5, 4))
    pads = ((1, 1), (1, 1))
    with jax.enable_x64(True):
        forward = convolution.conv(jnp.asarray(x), jnp.asarray(kernel), (1, 1), pads)
        back = convolution.conv(jnp.asarray(z), jnp.asarray(cpl.adjoint_kernel(kernel)), (1, 1),
                                pads)
    forward, back = np.asarray(forward), np.asarray(back)
    assert forward.dtype == np.float64
    np.testing.assert_allclose(np.sum(forward * z), np.sum(x * back), rtol=1e-12)


@pytest.mark.parametrize('step_factor', [1.0, 3.0])
def test_the_sound_bound_covers_the_svd_rule_and_every_jacobian(step_factor):
    """The true constant max(1, h·σ_max(A)² - 1) (σ_max from the dense matrix's SVD) is attained
    with all units active and never exceeds the sound bound; exact float64 Jacobians at random
    points stay below it. The bound is the rule on the circular embedding's norm, which is an
    upper bound of σ_max (loose on a 5×5 input: the bound is above 1 even at h = 2/σ_max²)."""
    layer, variables, matrix = _layer_and_variables(1, step_factor=step_factor)
    _, bound = layer.apply(variables, jnp.zeros((1, *SHAPE)), sound=True)
    h, sigma = float(variables['lipschitz']['h']), np.linalg.norm(matrix, 2)
    truth = max(1.0, h * sigma ** 2 - 1.0)
    upper = bounds.conv_upper_bound(variables['params']['kernel'], (1, *SHAPE), 1, 'SAME')
    assert upper >= sigma and bound == pytest.approx(cpl.cpl_bound(h, upper), rel=2e-6)
    assert truth <= bound
    with jax.enable_x64(True):
        variables64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)

        def jacobian_norm(variables, point):
            def flat(z):
                return layer.apply(variables, z.reshape(1, *SHAPE))[0].reshape(-1)
            return np.linalg.norm(np.asarray(jax.jacobian(flat)(jnp.asarray(point))), 2)

        for point in np.random.default_rng(2).normal(size=(6, int(np.prod(SHAPE)))) * 2:
            assert jacobian_norm(variables64, point) <= truth * (1 + 1e-9)
        all_active = dict(variables64, params=dict(variables64['params'],
                                                   bias=jnp.full(3, 1e3)))
        attained = jacobian_norm(all_active, np.zeros(int(np.prod(SHAPE))))
    assert attained == pytest.approx(truth, rel=1e-6) if step_factor > 1 else attained <= 1.0


def test_training_steps_track_the_norm_and_evaluation_uses_the_stored_step():
    layer = cpl.CPLConv(inner=3, estimator=models.estimator(config_schema.default_config())
                        ._replace(power_iterations=20))
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, *SHAPE)), jnp.float32)
    variables = layer.init(jax.random.key(0), x)
    _, updated = layer.apply(variables, x, train=True, mutable=['lipschitz'])
    matrix = conv_matrix(np.asarray(variables['params']['kernel']), SHAPE, 1, 'SAME')
    exact = 2 / np.linalg.norm(matrix, 2) ** 2  # σ_est <= σ_max: h from above, converging
    assert exact * (1 - 1e-6) <= float(updated['lipschitz']['h']) <= exact * 1.02
    doubled = dict(variables, lipschitz=dict(variables['lipschitz'],
                                             h=2 * variables['lipschitz']['h']))
    y1, y2 = (layer.apply(v, x)[0] for v in (variables, doubled))
    chex.assert_trees_all_close(2 * (y1 - x), y2 - x, rtol=1e-5, atol=1e-6)


def _cpl_net():
    return LipConvNet(layer='cpl', width=4, blocks=2, layers_per_block=1, num_classes=5)


def test_the_float32_allowance_bounds_measured_logit_errors_of_a_cpl_network():
    model, shape = _cpl_net(), (6, 6, 3)
    variables = model.init(jax.random.key(1), jnp.zeros((1, *shape)))
    x = np.random.default_rng(4).uniform(size=(8, *shape)).astype(np.float32)
    allowance = certify.rounding_allowance(model, variables, x)
    logits64 = certify.logits_float64(model, variables, x)
    np.testing.assert_allclose(allowance.logits, logits64, rtol=1e-12, atol=1e-12)

    @jax.jit
    def float32(images):
        with jax.default_matmul_precision('highest'):
            return model.apply(variables, images).logits

    difference = np.asarray(float32(x), np.float64) - logits64
    labels = np.arange(len(x)) % 5
    pairs = np.abs(difference[np.arange(len(x)), labels][:, None] - difference)
    bound = allowance.pairs(labels).at(0.0)
    assert np.all(pairs <= bound) and pairs.max() > 0
    sound = certify.sound_bounds(model, variables, shape)
    radii = certify.certified_radii(logits64, labels, sound, 'pairwise', allowance)
    assert np.all(radii <= certify.certified_radii(logits64, labels, sound, 'pairwise'))
