"""AOL and SLL layers and the lipconvnet: the formulas against explicit loops and dense matrices,
the sound bounds against exact Jacobian norms (float64), and certified radii against attacks."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from bound_testing import conv_matrix

from lclmt_jax import (
    attacks,
    bounds,
    certify,
    config_schema,
    convolution,
    input_pipeline,
    models,
    train,
)
from lclmt_jax.layers import LAYERS, aol, sll
from lclmt_jax.layers.aol import AOLConv
from lclmt_jax.layers.sll import SLLConv
from lclmt_jax.models import lipconvnet

SLACK = 1e-5  # what a sound bound of a 1-Lipschitz layer may exceed 1 by (rounding, SOUND_SLACK)


def to64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def perturbed(variables, seed, scale=0.5):
    """``variables`` with Gaussian noise on every parameter: away from the identity init."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: a + jnp.asarray(scale * rng.normal(size=a.shape), a.dtype),
                        variables)


def jacobians(fn, points):
    """The Jacobians of ``fn`` (one example -> array) at ``points``, float64 (outputs × inputs)."""
    with jax.enable_x64(True):
        jac = jax.jit(jax.vmap(jax.jacfwd(lambda z: fn(z.reshape(points.shape[1:])).reshape(-1))))
        return np.asarray(jac(jnp.asarray(points.reshape(len(points), -1), jnp.float64)))


def jacobian_norms(fn, points):
    """Spectral norms of the Jacobians of ``fn`` at ``points`` (float64 SVD)."""
    return np.linalg.norm(jacobians(fn, points), 2, axis=(1, 2))


def nn_normal():
    return jax.nn.initializers.normal(1.0)


def layer_fn(layer, variables):
    """One example -> the layer's output, with ``variables`` in float64 (call under x64)."""
    return lambda z: layer.apply(to64(variables), z[None])[0][0]


# ----------------------------------------------------------------------------- explicit loops


def gram_loop(kernel):
    """G_Δ = sum_p K_p K_{p+Δ}^T by loops over every pair of taps, float64 (HWIO kernel)."""
    kernel = np.asarray(kernel, np.float64)
    k_h, k_w, c_in, _ = kernel.shape
    gram = np.zeros((2 * k_h - 1, 2 * k_w - 1, c_in, c_in))
    for a in range(k_h):
        for b in range(k_w):
            for a2 in range(k_h):
                for b2 in range(k_w):
                    gram[a2 - a + k_h - 1, b2 - b + k_w - 1] += kernel[a, b] @ kernel[a2, b2].T
    return gram


def aol_scale_loop(kernel, epsilon=aol.AOL_EPSILON):
    gram = gram_loop(kernel)
    return np.array([(sum(abs(gram[u, v, i, j]) for u in range(gram.shape[0])
                          for v in range(gram.shape[1]) for j in range(gram.shape[3]))
                      + epsilon) ** -0.5 for i in range(gram.shape[2])])


def sll_scale_loop(kernel, q_raw):
    """t_i = 1/T_ii, T_ii = sum_j R_ij q_j/q_i with q = exp(q_raw) (no max shift, no tiny)."""
    row_sums = np.abs(gram_loop(np.swapaxes(np.asarray(kernel, np.float64), 2, 3))).sum((0, 1))
    q = np.exp(np.asarray(q_raw, np.float64))
    return 1.0 / np.array([sum(row_sums[i, j] * q[j] / q[i] for j in range(len(q)))
                           for i in range(len(q))])


def as_hwio(kernel):
    return kernel.reshape(1, 1, *kernel.shape) if kernel.ndim == 2 else kernel


@pytest.mark.parametrize('shape', [(3, 3, 3, 4), (2, 3, 4, 2), (5, 4)])
def test_gram_and_rescalings_match_explicit_loops(shape):
    kernel = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    q_raw = np.random.default_rng(1).normal(size=shape[-1]).astype(np.float32) * 2
    np.testing.assert_allclose(bounds.gram_kernel(kernel), gram_loop(as_hwio(kernel)),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aol.aol_scale(kernel), aol_scale_loop(as_hwio(kernel)),
                               rtol=1e-5)
    np.testing.assert_allclose(sll.sll_scale(kernel, q_raw),
                               sll_scale_loop(as_hwio(kernel), q_raw), rtol=1e-5)


@pytest.mark.parametrize('stride, padding', [(1, 'SAME'), (2, 'VALID')])
def test_aol_layers_apply_the_loop_rescaled_kernel(stride, padding):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 3)), jnp.float32)
    conv = AOLConv(4, 3, stride, padding, kernel_init=nn_normal())
    variables = conv.init(jax.random.key(0), x)
    kernel = np.asarray(variables['params']['kernel'])
    scaled = kernel * aol_scale_loop(kernel)[:, None]
    pads = convolution.conv_padding(padding, (6, 6), (3, 3), (stride, stride))
    expected = convolution.conv(x, jnp.asarray(scaled, jnp.float32), (stride, stride), pads)
    np.testing.assert_allclose(conv.apply(variables, x)[0], expected, rtol=1e-5, atol=1e-5)


def test_aol_conv_with_dirac_init_starts_as_the_identity_and_1x1_as_orthogonal():
    x = jnp.asarray(np.random.default_rng(14).normal(size=(1, 5, 5, 4)), jnp.float32)
    conv = AOLConv(4, 3, kernel_init=aol.dirac_init)
    y, _ = conv.apply(conv.init(jax.random.key(0), x), x)
    np.testing.assert_allclose(y, x * (1 + aol.AOL_EPSILON) ** -0.5, rtol=1e-6)
    pointwise = AOLConv(4, 1)
    kernel = pointwise.init(jax.random.key(1), x)['params']['kernel'][0, 0]
    np.testing.assert_allclose(kernel.T @ kernel, np.eye(4), atol=1e-5)


def test_aol_default_init_pairs_each_pixel_with_a_neighbour_for_minmax():
    """Output channels (2m, 2m + 1) = (x_m at p, x_m at a neighbour) / sqrt(2) (AOL's rescaling
    of orthogonal columns), so MinMax's spread max - min is |x_p - x_q|/sqrt(2): the same for an
    image and its colour negative 1 - x, where a linear feature flips sign."""
    x = jnp.asarray(np.random.default_rng(15).uniform(size=(1, 6, 6, 3)), jnp.float32)
    conv = AOLConv(8, 3)
    variables = conv.init(jax.random.key(0), x)
    kernel = np.asarray(variables['params']['kernel'])
    per_output = np.count_nonzero(kernel, axis=(0, 1, 2))
    np.testing.assert_array_equal(per_output, [1, 1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_allclose(aol.aol_scale(jnp.asarray(kernel))[:3], 2 ** -0.5, rtol=1e-6)
    y, _ = conv.apply(variables, x)
    np.testing.assert_allclose(y[0, 1:-1, 1:-1, 0], x[0, 1:-1, 1:-1, 0] / 2 ** 0.5, rtol=1e-5)
    assert not np.asarray(y[..., 6:]).any()  # channels past 2·C_in start at zero

    def spread(images):
        pairs = conv.apply(variables, images)[0].reshape(1, 6, 6, 4, 2)
        return (pairs.max(-1) - pairs.min(-1))[:, 1:-1, 1:-1]  # inside the zero padding

    np.testing.assert_allclose(spread(x), spread(1 - x), atol=1e-6)
    assert float(spread(x).max()) > 0.1


# ----------------------------------------------------------------------------- SLL forward


@pytest.mark.parametrize('stride, padding', [(1, 'SAME'), (2, 'SAME'), (1, 'VALID'), (2, 1)])
def test_conv_adjoint_is_exact(stride, padding):
    rng = np.random.default_rng(3)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 3, 2)))
    strides = (stride, stride)
    pads = convolution.conv_padding(padding, (7, 7), (3, 3), strides)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(2, 7, 7, 3)))
        image, adjoint = convolution.conv_with_adjoint(x, jnp.asarray(kernel, jnp.float64), strides,
                                                  pads)
        y = jnp.asarray(rng.normal(size=image.shape))
        back = adjoint(y)
        assert back.shape == x.shape
        np.testing.assert_allclose(jnp.vdot(image, y), jnp.vdot(x, back), rtol=1e-12)


@pytest.mark.parametrize('stride, padding', [(1, 'SAME'), (2, 'SAME'), (1, 'VALID')])
def test_sll_forward_equals_its_dense_definition(stride, padding):
    """x - 2 A^T(t ⊙ relu(A x + b)) with A the conv's dense matrix and t from the loops."""
    rng = np.random.default_rng(4)
    shape = (6, 6, 3)
    x = rng.uniform(-1, 1, size=(3, *shape))
    layer = SLLConv(inner=4, kernel_size=3, strides=stride, padding=padding)
    variables = perturbed(layer.init(jax.random.key(2), jnp.zeros((1, *shape))), 5, 0.3)
    params = jax.tree.map(np.asarray, variables['params'])
    matrix = np.asarray(conv_matrix(jnp.asarray(params['kernel'], jnp.float32), shape, stride,
                                    padding), np.float64)
    positions = matrix.shape[0] // 4
    t = np.tile(sll_scale_loop(params['kernel'], params['q']), positions)
    bias = np.tile(np.asarray(params['bias'], np.float64), positions)
    flat = x.reshape(3, -1)
    expected = flat - 2 * (t * np.maximum(flat @ matrix.T + bias, 0)) @ matrix
    with jax.enable_x64(True):
        got = np.asarray(jax.jit(layer.apply)(to64(variables), jnp.asarray(x))[0])
    got = got.reshape(3, -1)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)



def test_sll_residual_bound_covers_jacobians_when_the_condition_fails():
    """The derivation |J| <= max(1, 2|B|² - 1) checked where it is not 1: t scaled up 3x."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        w = rng.normal(size=(5, 4))
        t = 3.0 * sll_scale_loop(as_hwio(w), rng.normal(size=4))
        bound = sll.sll_residual_bound(bounds.dense_upper_bound(w * np.sqrt(t)))
        assert bound > 1.5
        norms = [np.linalg.norm(np.eye(5) - 2 * w @ np.diag(t * s) @ w.T, 2)
                 for s in rng.integers(0, 2, size=(30, 4))]
        assert max(norms) <= bound
        # all units active attains it
        assert np.linalg.norm(np.eye(5) - 2 * w @ np.diag(t) @ w.T, 2) >= bound * (1 - 1e-5)


# ----------------------------------------------------------------------------- sound bounds

INPUT = (6, 6, 3)
CASES = ([('aol_conv', s, p) for s in (1, 2) for p in ('SAME', 'VALID')]
         + [('sll_conv', s, p) for s in (1, 2) for p in ('SAME', 'VALID')]
         + [('aol_pointwise', 1, 'SAME'), ('sll_pointwise', 1, 'SAME')])


def make_layer(kind, stride, padding):
    if kind == 'aol_conv':
        return AOLConv(4, 3, stride, padding, kernel_init=nn_normal()), INPUT
    if kind == 'sll_conv':
        return SLLConv(inner=4, kernel_size=3, strides=stride, padding=padding), INPUT
    if kind == 'aol_pointwise':  # a dense layer: a 1×1 conv on one pixel
        return AOLConv(5, 1, kernel_init=nn_normal()), (1, 1, 8)
    return SLLConv(inner=6, kernel_size=1), (1, 1, 8)


def sound_bound(layer, variables, shape):
    bound = layer.apply(variables, jnp.zeros((1, *shape), jnp.float32), sound=True)[1]
    assert isinstance(bound, float)
    return bound


@pytest.mark.parametrize('kind, stride, padding', CASES)
def test_sound_bound_covers_jacobians_and_stays_near_one(kind, stride, padding):
    """Exact float64 Jacobian norms at random points <= the sound bound <= 1 + 1e-5, after
    random initialisation and after Adam steps that push the Jacobian's norm up."""
    layer, shape = make_layer(kind, stride, padding)
    rng = np.random.default_rng(8)
    points = rng.normal(size=(4, *shape)) * 2
    variables = layer.init(jax.random.key(4), jnp.zeros((1, *shape)))
    assert 'lipschitz' not in variables
    assert layer.apply(variables, jnp.zeros((1, *shape)))[1] == 1.0  # the training bound

    x = jnp.asarray(points, jnp.float32)
    v = jnp.asarray(rng.normal(size=points.shape), jnp.float32)

    def stretch(params):  # -|J v|² summed over the points: minimising it grows the norm
        _, jv = jax.jvp(lambda z: layer.apply({'params': params}, z)[0], (x,), (v,))
        return -jnp.sum(jv ** 2) / jnp.sum(v ** 2)

    optimizer = optax.adam(0.2)

    @jax.jit
    def adam_step(params, state):
        updates, state = optimizer.update(jax.grad(stretch)(params), state)
        return optax.apply_updates(params, updates), state

    params = variables['params']
    state = optimizer.init(params)
    for step in range(9):
        if step in (0, 8):
            candidate = {'params': params}
            bound = sound_bound(layer, candidate, shape)
            assert bound <= 1 + SLACK
            norms = jacobian_norms(layer_fn(layer, candidate), points)
            assert norms.max() <= bound
            assert norms.max() > 0.25  # not vacuous (a stride-2 conv keeps at least ~1/2)
        params, state = adam_step(params, state)


@pytest.mark.parametrize('kind', ['sll_conv', 'sll_pointwise'])
def test_sll_survives_underflowing_weights_and_dead_units(kind):
    """q_raw spread so far that exp underflows to 0 in float32 (t = 0: the unit drops out) and
    an all-zero kernel column (a dead unit, only SLL_TINY in the denominator): finite outputs,
    and the bound stays sound and near 1."""
    layer, shape = make_layer(kind, 1, 'SAME')
    variables = layer.init(jax.random.key(5), jnp.zeros((1, *shape)))
    params = dict(variables['params'])
    params['q'] = params['q'].at[0].set(-200.0).at[1].set(60.0)
    params['kernel'] = params['kernel'].at[..., 2].set(0.0)
    variables = {'params': params}
    points = np.random.default_rng(9).normal(size=(3, *shape))
    y = layer.apply(variables, jnp.asarray(points, jnp.float32))[0]
    assert np.isfinite(np.asarray(y)).all()
    bound = sound_bound(layer, variables, shape)
    assert bound <= 1 + SLACK
    assert jacobian_norms(layer_fn(layer, variables), points).max() <= bound


# ----------------------------------------------------------------------------- the network

TINY = {'width': 4, 'blocks': 2, 'layers_per_block': 1, 'kernel_size': 3}
TINY_INPUT = (7, 7, 3)  # odd: the downsampling pads


@functools.lru_cache
def tiny_network(layer, shape=TINY_INPUT, center_input=False):
    model = lipconvnet.LipConvNet(layer=layer, center_input=center_input, **TINY)
    variables = models.init_variables(model, jax.random.key(6), shape)
    params = perturbed(variables['params'], 7, 0.2)
    return model, {**variables, 'params': params}


@pytest.mark.parametrize('layer, center_input', [('aol', False), ('sll', False), ('aol', True)])
def test_network_sound_bounds_cover_brute_force_jacobians(layer, center_input):
    shape = TINY_INPUT
    model, variables = tiny_network(layer, center_input=center_input)
    sound = certify.sound_bounds(model, variables, shape)
    assert sound.body_lipschitz <= (1 + SLACK) ** 2  # two layers
    points = np.random.default_rng(10).uniform(0, 1, size=(4, *shape))
    body = lipconvnet.LipConvBody(layer, center_input=center_input, **TINY)
    body_vars = {'params': variables['params']['body']}
    body_jacobians = jacobians(lambda z: body.apply(to64(body_vars), z[None])[0][0], points)
    body_norms = np.linalg.norm(body_jacobians, 2, axis=(1, 2))
    assert 0.1 < body_norms.max() <= sound.body_lipschitz
    # the whole network's Jacobian: the head's (linear) kernel after the body's Jacobian
    head = np.asarray(variables['params']['head']['kernel'], np.float64)
    net_norms = np.linalg.norm(head.T @ body_jacobians, 2, axis=(1, 2))
    assert net_norms.max() <= sound.lipschitz


def test_downsample_and_zero_channels_are_isometric_where_they_keep():
    x = jnp.asarray(np.random.default_rng(11).normal(size=(2, 5, 7, 6)))
    y = lipconvnet.downsample(x)
    assert y.shape == (2, 3, 4, 12)
    np.testing.assert_allclose(jnp.sum(y ** 2), jnp.sum(x[..., :3] ** 2), rtol=1e-6)
    padded = lipconvnet.zero_channels(x, 10)
    assert padded.shape == (2, 5, 7, 10) and not np.asarray(padded[..., 6:]).any()
    with pytest.raises(ValueError, match='below the 6 input channels'):
        lipconvnet.zero_channels(x, 4)


def test_certified_radii_hold_against_attacks():
    """No float32-certified point of a tiny AOL network broken by CW-L2 or a gradient line
    search."""
    model, variables = tiny_network('aol', center_input=True)
    images = np.random.default_rng(12).uniform(0.2, 0.8, size=(24, *TINY_INPUT))
    images = images.astype(np.float32)
    logits = certify.logits_float64(model, variables, images)
    labels = np.argmax(logits, axis=1)
    sound = certify.sound_bounds(model, variables, TINY_INPUT)
    exact = certify.certified_radii(logits, labels, sound)
    allowance = certify.rounding_allowance(model, variables, images)
    radii = certify.certified_radii(logits, labels, sound, 'pairwise', allowance)  # float32
    assert (radii > 0).all() and (radii <= exact).all()

    logits_fn = jax.jit(lambda x: model.apply(variables, x).logits)
    cw = attacks.cw_l2_min_norms(logits_fn, images, labels,
                                 attacks.CWConfig(steps=40, binary_search_steps=4,
                                                  learning_rate=0.05, batch_size=24))
    line = line_search_norms(logits_fn, images, labels)
    norms = np.minimum(cw, line)
    assert np.isfinite(norms).mean() > 0.5
    correct = np.ones(len(labels), bool)
    assert certify.broken_certificates(radii, correct, norms).size == 0
    assert (norms >= radii).all()


def line_search_norms(logits_fn, images, labels):
    """Distance to the first misclassified point along the margin's gradient (unclipped steps)."""
    def margin(x, label):
        z = logits_fn(x[None])[0]
        return z[label] - jnp.max(jnp.where(jnp.arange(z.shape[0]) == label, -jnp.inf, z))
    grads = np.asarray(jax.vmap(jax.grad(margin))(jnp.asarray(images), jnp.asarray(labels)))
    directions = -grads / np.linalg.norm(grads.reshape(len(grads), -1), axis=1)[:, None, None,
                                                                                  None]
    found = np.full(len(images), np.inf)
    for size in np.linspace(0.02, 3.0, 150):
        wrong = np.argmax(np.asarray(logits_fn(images + size * directions)), axis=1) != labels
        found = np.where(wrong & ~np.isfinite(found), size, found)
    return found


# Every family a LipConvNet can take (the registry's entries with ``same_width``): a new family
# is trained here without a line of its own.
CONV_FAMILIES = [name for name in LAYERS.names() if hasattr(LAYERS.get(name), 'same_width')]


@pytest.mark.parametrize('layer', CONV_FAMILIES)
def test_lipconvnet_trains_through_the_trainer(layer):
    config = config_schema.default_config()
    config.model, config.batch_size = 'lipconvnet', 8
    config.lipconvnet = ml_collections.ConfigDict({'layer': layer, **TINY})
    trainer = train.create_trainer(config, (8, 8, 3), 10)
    rng = np.random.default_rng(13)
    images = rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 8).astype(np.int32)
    batch = input_pipeline.replicate(trainer.mesh, (images, labels))
    state, totals = jax.jit(trainer.train_step)(trainer.state, *batch)
    assert np.isfinite(float(totals.loss.compute()))
    before, after = (jax.tree.leaves(s.params['body']) for s in (trainer.state, state))
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))

    # The usable families are the registry's entries with ``same_width``, not a list.
    assert CONV_FAMILIES == ['aol', 'bro', 'cpl', 'sll']
    for name in ('nonexistent', 'dense'):
        config.lipconvnet.layer = name
        with pytest.raises(ValueError, match=f"unknown lipconvnet.layer '{name}'; allowed: "
                                             "aol, bro, cpl, sll"):
            models.create_model(config, 10)
