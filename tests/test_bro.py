"""BRO convs (``layers.bro``): the reflector's spectrum, the sound bound against the dense
matrix's SVD (zero and circular padding, the float32 and float64 symbols), brute-force Jacobians,
the float32 deviation estimate against measured float32 errors, and the LiResNet variant
(``liresnet.block='bro'``): one train step, its sound bounds, and the refused float32 analysis.
A LipConvNet of BRO convs trains in test_lipschitz_layers.py with every family it takes."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lclmt_jax import certify, config_schema, input_pipeline, models, rounding, train
from lclmt_jax.layers import bro
from lclmt_jax.models.liresnet import LiResNet

SHAPE = (6, 6, 3)


def _layer_and_variables(seed, padding, rank=1, spread=1.0, shape=SHAPE):
    """A BRO conv with a random kernel N(0, spread²) (far from the identity) and zero bias."""
    layer = bro.BROConv(rank=rank, padding=padding)
    variables = layer.init(jax.random.key(seed), jnp.zeros((1, *shape)))
    kernel = np.random.default_rng(seed).normal(size=variables['params']['kernel'].shape)
    return layer, {'params': {'kernel': (kernel * spread).astype(np.float32),
                              'bias': np.zeros(shape[-1], np.float32)}}


def _dense_matrix(layer, variables, shape, dtype=jnp.float64):
    """The layer's linear part (bias 0) as a dense matrix: its Jacobian in ``dtype``."""
    with jax.enable_x64(dtype == jnp.float64):
        params = jax.tree.map(lambda a: jnp.asarray(a, dtype), variables)
        jac = jax.jacobian(lambda z: layer.apply(params, z.reshape(1, *shape))[0].reshape(-1))(
            jnp.zeros(int(np.prod(shape)), dtype))
        return np.asarray(jac, np.float64)


def _symbol_matrix(symbol, shape, padding):
    """The dense matrix of the map x -> crop Re(F^-1 W F pad(x)) for a given symbol W, applied
    in float64 (the float32 network's symbol with exact application)."""
    eye = np.eye(int(np.prod(shape))).reshape(-1, *shape)
    with jax.enable_x64(True):
        columns = bro.bro_apply(jnp.asarray(eye), jnp.asarray(symbol), 3, padding)
    return np.asarray(columns).reshape(len(eye), -1).T


def test_the_reflector_has_the_predicted_singular_values():
    """|W|_2 = 1 (the complement of range V) and the other singular values are
    |eps - s²|/(s² + eps), s those of V: a contraction, unitary only as eps -> 0; eps > 0 keeps
    even V = 0 solvable (W = I)."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=(5, 2)) + 1j * rng.normal(size=(5, 2))
    v[:, 1] = v[:, 0] + 1e-3 * v[:, 1]  # nearly rank-deficient: eps matters
    epsilon = 1e-5
    with jax.enable_x64(True):
        w = np.asarray(bro.reflector(jnp.asarray(v), epsilon))
        zero = np.asarray(bro.reflector(jnp.zeros((4, 2)), epsilon))
    chex.assert_trees_all_close(w, w.conj().T, atol=1e-12)
    s = np.linalg.svd(v, compute_uv=False)
    eps = epsilon * np.sum(s**2) / 2 + bro.BRO_FLOOR
    predicted = np.sort(np.concatenate([np.abs(eps - s**2) / (s**2 + eps), np.ones(3)]))
    np.testing.assert_allclose(np.sort(np.linalg.svd(w, compute_uv=False)), predicted, atol=1e-9)
    assert predicted[0] < 0.99  # the small direction is shrunk, not reflected
    np.testing.assert_array_equal(zero, np.eye(4))


@pytest.mark.parametrize('padding', ['zero', 'circular'])
def test_an_identity_kernel_reflects_the_first_rank_channels(padding):
    """V = [I_r; 0] at the centre tap: W = diag(-I_r, I_{C-r}) at every frequency (up to eps), so
    the layer negates the first r channels, pixel by pixel: the kernel is centred and the crop
    keeps the input's own pixels."""
    layer = bro.BROConv(rank=2, padding=padding, kernel_init=bro.identity_init(std=0.0))
    x = np.random.default_rng(1).normal(size=(2, *SHAPE[:2], 4)).astype(np.float32)
    variables = layer.init(jax.random.key(0), x)
    y, _ = layer.apply(variables, x)
    expected = x * np.array([-1, -1, 1, 1], np.float32)
    np.testing.assert_allclose(np.asarray(y), expected, atol=1e-4)


@pytest.mark.parametrize('padding', ['zero', 'circular'])
def test_the_sound_bound_covers_the_dense_svd_and_is_near_one(padding):
    """bound >= the exact norm of the float64 layer's dense matrix and of the float32 network's
    symbol applied exactly, and bound <= 1 + 1e-5. On the torus (circular) the dense matrix's
    singular values are exactly those of the symbols W(w), frequency by frequency."""
    layer, variables = _layer_and_variables(2, padding)
    _, bound = layer.apply(variables, jnp.zeros((1, *SHAPE)), sound=True)
    exact64 = np.linalg.svd(_dense_matrix(layer, variables, SHAPE), compute_uv=False)
    grid = bro.torus(SHAPE[:2], 3, padding)
    w32, w64 = bro.computed_symbols(variables['params']['kernel'], grid)
    exact32 = np.linalg.svd(_symbol_matrix(w32, SHAPE, padding), compute_uv=False)
    assert max(exact64[0], exact32[0]) <= bound <= 1 + 1e-5
    assert exact64[0] > 1 - 1e-9
    if padding == 'circular':
        per_frequency = np.sort(np.linalg.svd(w64, compute_uv=False).ravel())
        np.testing.assert_allclose(np.sort(exact64), per_frequency, atol=1e-9)
    else:  # the crop: a contraction, far from orthogonal on a 6x6 image
        assert exact64[-1] < 0.5


@pytest.mark.parametrize('padding', ['zero', 'circular'])
def test_float32_outputs_and_float64_jacobians_stay_within_the_bound(padding):
    """Brute force: ratios |f32(x) - f32(z)|/|x - z| of the float32 layer (within its float32
    deviation) and the norm of the float64 Jacobian (the layer is linear, so at any point) are
    below the sound bound, also for an ill-conditioned kernel (spread 3, rank 2)."""
    layer, variables = _layer_and_variables(3, padding, rank=2, spread=3.0)
    _, bound = layer.apply(variables, jnp.zeros((1, *SHAPE)), sound=True)
    deviation = bro.float32_deviation(variables['params']['kernel'], SHAPE[:2], padding)
    rng = np.random.default_rng(4)
    x, z = (rng.normal(size=(64, *SHAPE)).astype(np.float32) for _ in range(2))
    fx, fz = (np.asarray(layer.apply(variables, a)[0], np.float64) for a in (x, z))
    ratios = (np.linalg.norm((fx - fz).reshape(64, -1), axis=1)
              / np.linalg.norm((x - z).reshape(64, -1).astype(np.float64), axis=1))
    assert ratios.max() <= bound + 2 * deviation
    assert np.linalg.norm(_dense_matrix(layer, variables, SHAPE), 2) <= bound


@pytest.mark.parametrize('padding', ['zero', 'circular'])
def test_the_float32_deviation_covers_the_measured_float32_error(padding):
    """|BRO32(x) - BRO64(x)| <= delta·|x| on random inputs (the estimate of A5/A6), and delta is
    a small multiple of the float32 unit, not a vacuous number."""
    layer, variables = _layer_and_variables(5, padding, rank=1)
    delta = bro.float32_deviation(variables['params']['kernel'], SHAPE[:2], padding)
    x = np.random.default_rng(6).normal(size=(32, *SHAPE)).astype(np.float32)
    y32 = np.asarray(layer.apply(variables, x)[0], np.float64)
    with jax.enable_x64(True):
        y64 = np.asarray(layer.apply(jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                                                  variables), jnp.asarray(x, jnp.float64))[0])
    errors = np.linalg.norm((y32 - y64).reshape(32, -1), axis=1)
    assert np.all(errors <= delta * np.linalg.norm(x.reshape(32, -1), axis=1))
    assert 2.0**-24 < delta < 1e-4 and errors.max() > 0


def test_bad_settings_say_so_in_one_line():
    x = jnp.zeros((1, 6, 6, 4))
    for layer, match in ((bro.BROConv(rank=4), 'rank 4'), (bro.BROConv(kernel_size=2), 'odd'),
                         (bro.BROConv(padding='reflect'), "'reflect'")):
        with pytest.raises(ValueError, match=match):
            layer.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match='liresnet.block must be one of residual, bro'):
        LiResNet(block='orthogonal')


# ----------------------------------------------------------------------------- the LiResNet variant

TINY = {'depth': 2, 'width': 4, 'stem_kernel': 3, 'stem_stride': 2, 'neck_features': 8,
        'neck_size': 2, 'dense_features': 16, 'block': 'bro'}
INPUT = (8, 8, 3)


def _config():
    config = config_schema.default_config()
    config.model, config.batch_size = 'liresnet', 8
    config.liresnet = ml_collections.ConfigDict(TINY)
    return config


def test_the_bro_liresnet_trains_a_step_and_its_sound_bound_covers_jacobians():
    """``liresnet.block='bro'``: the blocks are BRO convs (params V of rank width//2), one train
    step changes them with a finite loss; the sound body bound (stem·neck·dense norms times BRO
    bounds near 1) covers brute-force float64 Jacobians of the network's logits."""
    trainer = train.create_trainer(_config(), INPUT, 10)
    assert trainer.state.params['block1']['kernel'].shape == (3, 3, 4, 2)
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (8, *INPUT), dtype=np.uint8)
    labels = rng.integers(0, 10, 8).astype(np.int32)
    batch = input_pipeline.replicate(trainer.mesh, (images, labels))
    state, totals = jax.jit(trainer.train_step)(trainer.state, *batch)
    assert np.isfinite(float(totals.loss.compute()))
    assert not np.allclose(state.params['block1']['kernel'], trainer.state.params['block1']
                           ['kernel'])
    variables = models.init_variables(trainer.model, jax.random.key(0), INPUT) | {
        'params': state.params}
    sound = certify.sound_bounds(trainer.model, variables, INPUT)
    block_bounds = [bro.bro_upper_bound(state.params[f'block{i}']['kernel'], (4, 4))
                    for i in (1, 2)]
    assert all(1.0 <= b <= 1 + 1e-5 for b in block_bounds)
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        points = rng.uniform(0, 1, size=(3, *INPUT))
        for point in points:
            jac = jax.jacobian(lambda z: trainer.model.apply(params64, z[None]).logits[0])(
                jnp.asarray(point))
            assert np.linalg.norm(np.asarray(jac).reshape(10, -1), 2) <= sound.lipschitz


def test_the_bro_liresnet_refuses_the_float32_analysis_with_its_reason():
    """The float32 certificate refuses (one line, naming the FFT and the solve), the exact one
    works: ``certify.certified_radii`` without an allowance gives finite radii."""
    model = models.create_model(_config(), 10)
    variables = models.init_variables(model, jax.random.key(1), INPUT)
    images = np.random.default_rng(8).uniform(0, 1, size=(4, *INPUT))
    with pytest.raises(rounding.NotAnalysable, match='BRO convs have no float32 rounding '
                                                     'analysis: they compute an FFT'):
        certify.rounding_allowance(model, variables, images)
    logits = certify.logits_float64(model, variables, images)
    sound = certify.sound_bounds(model, variables, INPUT)
    radii = certify.certified_radii(logits, np.argmax(logits, 1), sound)
    assert np.all(np.isfinite(radii)) and np.all(radii > 0)
