"""Float32 rounding bounds (``rounding``) against measured float32 errors, and the float32
certificates built on them: a crafted network whose float32 prediction flips inside the exact
certificate, a trained one whose radii barely move, non-finite inputs, and the evaluator."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lclmt_jax
from lclmt_jax import activations, certify, data, layers, margins, rounding
from lclmt_jax.evaluators import Context, run_evaluator
from lclmt_jax.layers import aol
from lclmt_jax.layers.batchnorm import BatchNormStep, LipschitzBatchNorm
from lclmt_jax.layers.conv import LipschitzConv
from lclmt_jax.layers.dense import LipschitzDense
from lclmt_jax.layers.head import NormalizedHead, lipschitz_head
from lclmt_jax.layers.liresnet_block import block_kernel, block_kernel_error, block_scale
from lclmt_jax.layers.pooling import AveragePool, global_average_pool
from lclmt_jax.models.cnn import CNN
from lclmt_jax.models.lipconvnet import LipConvNet
from lclmt_jax.models.liresnet import LiResNet
from lclmt_jax.models.mlp import MLP
from lclmt_jax.models.wrn import WideResNet

F32, F64 = rounding.FLOAT32, rounding.FLOAT64


def _highest(function):
    """``function`` jitted and traced at matmul precision 'highest', as the library runs it."""
    @jax.jit
    def run(*args):
        with jax.default_matmul_precision('highest'):
            return function(*args)
    return run


def _layer_output(layer, params, shape, stats=None, **kwargs):
    """The float32 forward of a ``layers`` module with the given parameters (and statistics)."""
    variables = _random_variables(layer, shape, 0)
    variables['params'] = params
    if stats is not None:
        variables['batch_stats'] = stats
    return _highest(lambda z: layer.apply(variables, z, **kwargs)[0])


def _check_step(step, float32_output, centers, points):
    """|fl32(step)(z) - step(z)|_2 <= delta32(a, |z - a|) + delta64(z) at every z (float32) near
    its centre a, with step(z) the float64 forward (within delta64(z) of exact). Returns the
    measured errors and the bounds."""
    z = np.asarray(points, np.float32)
    z64 = z.astype(np.float64)
    measured = rounding.norms(np.asarray(float32_output(z), np.float64) - step.forward(z64))
    spread = rounding.norms(z64 - centers)
    count = len(z)
    own = step.rounding(centers, rounding.Affine(spread, np.zeros(count)), F32).rounding.const
    reference = step.rounding(z64, rounding.Affine.zeros(count), F64).rounding.const
    bound = own + reference
    assert np.all(measured <= bound), (measured / bound).max()
    return measured, bound


def _points(rng, shape, scale):
    """Float32 points at the centres and within a small ball around them."""
    centers = (rng.standard_normal(shape) * scale).astype(np.float32).astype(np.float64)
    nearby = centers + 1e-3 * scale * rng.standard_normal(shape)
    return np.concatenate([centers, centers]), np.concatenate([centers, nearby])


@pytest.mark.parametrize('case', ['plain', 'huge', 'cancelling', 'huge_bias', 'subnormal'])
def test_dense_bound_holds_against_measured_float32_errors(case):
    rng = np.random.default_rng(0)
    n, m = 300, 40
    kernel = rng.standard_normal((n, m)) / np.sqrt(n)
    bias = rng.standard_normal(m)
    scale = {'plain': 1.0, 'huge': 1e30, 'cancelling': 1.0, 'huge_bias': 1.0,
             'subnormal': 1e-39}[case]
    if case == 'cancelling':  # big weights of both signs whose products cancel
        kernel = kernel + 1e4 * np.where(np.arange(n)[:, None] % 2, 1.0, -1.0)
    if case == 'huge_bias':
        bias = bias + 2.0**24
    if case == 'subnormal':  # products and inputs below float32's normal range: flushed to 0
        bias = np.zeros(m)
        kernel = np.abs(kernel) * 10
    kernel, bias = kernel.astype(np.float32), bias.astype(np.float32)
    step = rounding.Dense(kernel, bias)
    output = _layer_output(LipschitzDense(m), {'kernel': kernel, 'bias': bias}, (n,))
    centers, points = _points(rng, (16, n), scale)
    if case == 'cancelling':
        centers, points = np.abs(centers) + 1, np.abs(points) + 1
    measured, bound = _check_step(step, output, centers, points)
    assert measured.max() > 0  # rounding happened: the check is not vacuous


@pytest.mark.parametrize('stride, padding, scale', [(1, 'SAME', 1.0), (2, 'SAME', 1e30),
                                                    (2, 'VALID', 1.0), (3, ((1, 0), (2, 1)), 1.0),
                                                    (1, 'SAME', 1e-39)])
def test_conv_bound_holds_against_measured_float32_errors(stride, padding, scale):
    rng = np.random.default_rng(1)
    shape, features = (9, 8, 3), 5
    kernel = (rng.standard_normal((3, 3, 3, features)) * (10 if scale < 1 else 1)
              + 1e3 * rng.choice([-1, 1], (3, 3, 3, features))).astype(np.float32)
    bias = (rng.standard_normal(features) * (0.0 if scale < 1 else 1.0)).astype(np.float32)
    step = rounding.Conv(kernel, bias, shape, stride, padding)
    output = _layer_output(LipschitzConv(features, 3, stride, padding),
                           {'kernel': kernel, 'bias': bias}, shape, with_bound=False)
    centers, points = _points(rng, (8, *shape), scale)
    measured, _ = _check_step(step, output, centers, points)
    assert step.forward(centers).shape[1:] == step.output_shape
    assert measured.max() > 0


@pytest.mark.parametrize('scale', [1.0, 1e4, 1e30])
def test_batch_norm_and_pooling_bounds_hold_against_measured_float32_errors(scale):
    rng = np.random.default_rng(2)
    shape = (6, 5, 4)
    params = {'scale': rng.standard_normal(4) * 3, 'bias': rng.standard_normal(4) * scale}
    stats = {'mean': rng.standard_normal(4) * scale, 'var': rng.uniform(1e-8, 2, 4)}
    params, stats = (jax.tree.map(lambda a: np.asarray(a, np.float32), t) for t in (params,
                                                                                   stats))
    step = BatchNormStep(params['scale'], params['bias'], stats['mean'], stats['var'],
                              LipschitzBatchNorm.epsilon)
    output = _layer_output(LipschitzBatchNorm(), params, shape, stats)
    centers, points = _points(rng, (8, *shape), scale)
    centers, points = centers + stats['mean'], points + stats['mean']  # x - mean cancels
    _check_step(step, output, centers, points)
    pool = AveragePool(*shape[:2])
    _check_step(pool, _highest(lambda z: global_average_pool(z)[0]), centers, points)


@pytest.mark.parametrize('magnitude', [1.0, 1e-20, 1e-39])
def test_a_liresnet_block_kernel_computed_in_float32_is_within_its_error_bound(magnitude):
    """The kernel I + s·K·diag(gamma) as the network computes it (float32, jitted) against the
    float64 one, entrywise within ``block_kernel_error`` (subnormal products included)."""
    rng = np.random.default_rng(6)
    kernel = (rng.standard_normal((3, 3, 5, 5)) * magnitude).astype(np.float32)
    scale = rng.uniform(0.3, 3, 5).astype(np.float32)
    s = block_scale(3)  # not exact in float32
    computed = np.asarray(jax.jit(block_kernel, static_argnums=2)(kernel, scale, s),
                          np.float64)
    exact = block_kernel(kernel.astype(np.float64), scale.astype(np.float64), s)
    error = block_kernel_error(kernel, scale, s, F32)
    assert np.all(np.abs(computed - exact) <= error) and np.abs(computed - exact).max() > 0


@pytest.mark.parametrize('magnitude', [1.0, 1e15, 1e-17])
def test_lln_columns_normalised_in_float32_are_within_their_error_bound(magnitude):
    """The unit columns ``NormalizedHead`` applies in float32 against the float64 ones: within
    kappa_c relative plus 2·tau per entry; a column whose squares underflow or overflow (its
    float32 normalisation is 0/0 or x/inf) is refused."""
    rng = np.random.default_rng(7)
    kernel = (rng.standard_normal((300, 6)) * magnitude).astype(np.float32)
    head = NormalizedHead(6)
    variables = {'params': {'kernel': kernel, 'bias': np.zeros(6, np.float32)}}
    computed = np.asarray(_highest(lambda x: head.apply(variables, x)[0])(
        np.eye(300, dtype=np.float32)), np.float64)  # rows of I pick the applied columns
    exact = kernel.astype(np.float64) / np.linalg.norm(kernel.astype(np.float64), axis=0)
    kappa = rounding.normalisation_error(kernel, F32)
    difference = np.abs(computed - exact)
    assert np.all(difference <= kappa * np.abs(exact) + 2 * F32.tiny) and difference.max() > 0
    if magnitude == 1.0:
        assert kappa.max() < 1e-4  # gamma_300/2 + 2u: a tiny fraction of any margin
    with pytest.raises(rounding.NotAnalysable, match='too small'):
        rounding.normalisation_error(np.full((300, 1), 1e-25, np.float32), F32)
    with pytest.raises(rounding.NotAnalysable, match='too large'):
        rounding.normalisation_error(np.full((300, 1), 1e20, np.float32), F32)


@pytest.mark.parametrize('shape, magnitude', [((3, 3, 6, 5), 1.0), ((3, 3, 6, 5), 1e-12),
                                              ((40, 7), 1e3)])
def test_an_aol_kernel_computed_in_float32_is_within_its_error_bound(shape, magnitude):
    """``aol.aol_kernel`` as the layers compute it (float32, jitted) against float64,
    entrywise within ``aol.aol_kernel_error``: the rescaling's Gram sums, eps and rsqrt."""
    kernel = (np.random.default_rng(8).standard_normal(shape) * magnitude).astype(np.float32)
    computed = np.asarray(_highest(aol.aol_kernel)(kernel), np.float64)
    with jax.enable_x64(True):
        exact = np.asarray(aol.aol_kernel(jnp.asarray(kernel, jnp.float64)))
    difference = np.abs(computed - exact)
    error = aol.aol_kernel_error(kernel, F32)
    assert np.all(difference <= error) and difference.max() > 0


def test_an_sll_network_says_in_one_line_why_it_has_no_rounding_analysis():
    model = LipConvNet(layer='sll', width=8, blocks=1, layers_per_block=1, num_classes=3)
    variables = _random_variables(model, (4, 4, 3), 0)
    with pytest.raises(rounding.NotAnalysable, match='exp') as error:
        certify.rounding_allowance(model, variables, np.zeros((1, 4, 4, 3), np.float32))
    assert '\n' not in str(error.value)


# ----------------------------------------------------------------------------- whole networks


def _network(kind):
    if kind == 'mlp':
        return MLP(hidden_sizes=(32, 32), activation='minmax', num_classes=5), (6, 6, 1)
    if kind == 'cnn':
        return CNN(convs=((4, 3, 1), (6, 4, 2)), dense=(16,), activation='relu',
                   num_classes=5), (8, 8, 2)
    if kind == 'liresnet':  # 8x8 -> 4x4 (stem), 2 blocks, neck 2x2 /2 -> 2x2x6, dense, LLN
        return LiResNet(depth=2, width=4, neck_features=6, neck_size=2, dense_features=8,
                        num_classes=5), (8, 8, 3)
    if kind == 'aol':  # 8x8x3 -> 8 channels, 2 blocks of 2 AOL convs, 2x2x32 -> head
        return LipConvNet(layer='aol', width=8, blocks=2, layers_per_block=2,
                          num_classes=5), (8, 8, 3)
    return WideResNet(depth=10, width=1, num_classes=5), (8, 8, 3)


def _random_variables(model, shape, seed):
    """Random variables of the model's shapes (``jax.eval_shape``: traced, never compiled):
    kernels N(0, 1/fan-in), small biases, BN scales near 1 and random running statistics."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *shape)))

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "'kernel'" in name:
            value = rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        elif "'var'" in name:
            value = rng.uniform(0.5, 2, leaf.shape)
        elif "'scale'" in name:
            value = rng.uniform(0.5, 1.5, leaf.shape)
        else:  # biases, means, power-iteration vectors
            value = 0.1 * rng.standard_normal(leaf.shape)
        return value.astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize('kind', ['mlp', 'cnn', 'wrn', 'liresnet', 'aol'])
def test_network_allowance_bounds_float32_logit_differences_on_the_ball(kind):
    """|(f32_t - f32_j)(z) - (f64_t - f64_j)(z)| <= E_tj(r) at x and at points z of the ball."""
    model, shape = _network(kind)
    variables = _random_variables(model, shape, 0)
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(6, *shape)).astype(np.float32)
    radius = 0.5
    directions = rng.standard_normal((4, *x.shape))
    z = x + radius * directions / np.linalg.norm(
        directions.reshape(4, len(x), -1), axis=-1)[..., None, None, None] * 0.999
    float32 = _highest(lambda v, p: model.apply(v, p).logits)
    allowance = certify.rounding_allowance(model, variables, x)
    labels = np.arange(len(x)) % 5
    bound = np.tile(allowance.pairs(labels).at(radius), (5, 1))  # x's bound for its points
    points = np.concatenate([x, *z.astype(np.float32)])
    difference = (np.asarray(float32(variables, points), np.float64)
                  - certify.logits_float64(model, variables, points))
    targets = np.tile(labels, 5)
    pairs = np.abs(difference[np.arange(len(points)), targets][:, None] - difference)
    assert np.all(pairs <= bound) and pairs.max() > 0
    # The analysis' own float64 logits are the model's (its walk describes the model).
    np.testing.assert_allclose(allowance.logits, certify.logits_float64(model, variables, x),
                               rtol=1e-12, atol=1e-12)


def test_float32_radii_are_never_larger_and_hold_under_float32_attacks():
    model, shape = _network('mlp')
    variables = _random_variables(model, shape, 4)
    x = np.random.default_rng(4).uniform(size=(40, *shape)).astype(np.float32)
    logits = certify.logits_float64(model, variables, x)
    labels = np.argmax(logits, axis=1)
    bounds = certify.sound_bounds(model, variables, shape)
    allowance = certify.rounding_allowance(model, variables, x)
    float32 = _highest(lambda p: model.apply(variables, p).logits)
    margin = jax.jit(lambda p, t: margins.margin(float32(p), t))
    gradient = jax.jit(jax.grad(lambda p, t: margins.margin(float32(p), t).sum()))
    for name in margins.CERTIFICATES:
        exact = certify.certified_radii(logits, labels, bounds, name)
        radii = certify.certified_radii(logits, labels, bounds, name, allowance)
        assert np.all(radii <= exact) and np.all(radii >= 0) and np.mean(radii > 0) > 0.5
        assert np.all(radii > 0.9 * exact - 1e-3)
        # Gradient steps of length just under the float32 radius keep the float32 prediction.
        step = -np.asarray(gradient(x, labels))
        step /= np.linalg.norm(step.reshape(len(x), -1), axis=1)[:, None, None, None]
        moved = (x + 0.999 * radii[:, None, None, None] * step).astype(np.float32)
        assert np.all(np.asarray(margin(moved, labels)) > 0)


def test_restored_logits_run_at_highest_matmul_precision(trained_workdir):
    model = lclmt_jax.restore(trained_workdir)
    jaxpr = str(jax.make_jaxpr(model.logits)(jnp.zeros((2, *model.input_shape))))
    assert jaxpr.count('dot_general') >= 4
    assert jaxpr.count('precision=(Precision.HIGHEST, Precision.HIGHEST)') == \
        jaxpr.count('dot_general')


# ----------------------------------------------------------------------------- crafted network


def _cancelling_network():
    """h = relu(x @ I + (2^24, 0)), f = h @ I + (-2^24, 0.5): f_0 = x_0 exactly, but float32
    rounds 2^24 + x_0 to a multiple of 2 (its spacing there) before the head cancels 2^24."""
    model = MLP(hidden_sizes=(2,), activation='relu', num_classes=2)
    variables = _random_variables(model, (1, 2, 1), 0)
    variables['params'] = {'LipschitzDense_0': {'kernel': np.eye(2, dtype=np.float32),
                                   'bias': np.array([2.0**24, 0], np.float32)},
              'head': {'kernel': np.eye(2, dtype=np.float32),
                       'bias': np.array([-2.0**24, 0.5], np.float32)}}
    return model, variables


def test_a_float32_flip_inside_the_exact_certificate_is_not_certified():
    model, variables = _cancelling_network()
    near, far = [0.75, 0.0], [50.75, 0.0]  # exact margins 0.25 and 50.25, both class 0
    x = np.array([near, far], np.float32).reshape(2, 1, 2, 1)
    labels = np.zeros(2, int)
    logits = certify.logits_float64(model, variables, x)
    np.testing.assert_allclose(logits[:, 0] - logits[:, 1], [0.25, 50.25])
    float32 = np.asarray(_highest(lambda p: model.apply(variables, p).logits)(x))
    assert np.argmax(float32[0]) == 1 and np.argmax(float32[1]) == 0  # the near point flips
    bounds = certify.sound_bounds(model, variables, (1, 2, 1))
    allowance = certify.rounding_allowance(model, variables, x)
    for name in margins.CERTIFICATES:
        exact = certify.certified_radii(logits, labels, bounds, name)
        radii = certify.certified_radii(logits, labels, bounds, name, allowance)
        assert exact[0] > 0.17 and radii[0] == 0  # the old certificate certified the flip
        assert 0.5 * exact[1] < radii[1] < exact[1]  # far from the boundary: still certified


class _Unrecorded(nn.Module):
    """An MLP-like model with a map the analysis cannot see: ``hidden`` 'raw_relu' applies
    Flax's ReLU (no registered activation: nothing recorded), 'raw_dense' a Flax Dense layer
    (parameters no layer recorded)."""

    hidden: str = 'raw_relu'

    @nn.compact
    def __call__(self, x, *, train=False, sound=False):
        h = layers.flatten(x)
        if self.hidden == 'raw_dense':
            h = nn.Dense(8)(h)
        else:
            h, _ = LipschitzDense(8)(h, train=train, sound=sound)
            h = nn.relu(h)
        return lipschitz_head(h, 1.0, 3, train=train, sound=sound)


def test_a_map_outside_the_recorded_layers_is_caught():
    """A map applied outside any layer leaves the recorded walk's logits off the model's (the
    cross-check refuses them); parameters of a layer without a rounding step are named."""
    x = np.random.default_rng(5).uniform(size=(4, 2, 2, 1)).astype(np.float32)
    model = _Unrecorded('raw_relu')
    variables = _random_variables(model, (2, 2, 1), 5)
    logits = certify.logits_float64(model, variables, x)
    bounds = certify.sound_bounds(model, variables, (2, 2, 1))
    allowance = certify.rounding_allowance(model, variables, x)
    with pytest.raises(ValueError, match='does not describe these logits'):
        certify.certified_radii(logits, np.zeros(4, int), bounds, 'pairwise', allowance)
    model = _Unrecorded('raw_dense')
    with pytest.raises(rounding.NotAnalysable, match='does not cover params/Dense_0') as error:
        certify.rounding_allowance(model, _random_variables(model, (2, 2, 1), 5), x)
    assert '\n' not in str(error.value)


def test_an_activation_not_exact_in_float32_is_refused_in_one_line(monkeypatch):
    """The registry property ``exact_float32``, not a list: an activation registered without it
    makes the float32 analysis refuse, naming it."""
    softplus = activations.Activation('softplus', jax.nn.softplus, exact_float32=False)
    monkeypatch.setitem(activations.ACTIVATIONS._entries, 'softplus', softplus)
    model = MLP(hidden_sizes=(4,), activation='softplus', num_classes=3)
    variables = _random_variables(model, (2, 2, 1), 0)
    with pytest.raises(rounding.NotAnalysable) as error:
        certify.rounding_allowance(model, variables, np.zeros((1, 2, 2, 1), np.float32))
    assert '\n' not in str(error.value)
    assert "activation 'softplus' has no float32 rounding analysis" in str(error.value)


# ----------------------------------------------------------------------------- trained model


@functools.cache
def _test_points(workdir, count=300):
    model = lclmt_jax.restore(workdir)
    dataset = data.load_dataset(model.config.data)
    x = np.asarray(dataset.test_images[:count], np.float32) / 255.0
    return model, x, dataset.test_labels[:count].astype(np.int32)


def test_a_trained_mlp_keeps_nearly_its_exact_radii(trained_workdir):
    """The allowance is E0 + E1·r with E0/K ~ 1e-3 and E1/K ~ 4e-4 here (gamma_785 = 4.7e-5 on
    the first layer alone): away from the boundary a radius loses well under 1%."""
    model, x, y = _test_points(trained_workdir)
    exact = model.certified_radius(x, y, arithmetic='exact')
    radii = model.certified_radius(x, y)
    assert model.config.certificate == 'pairwise' and np.mean(exact > 0) > 0.3
    assert np.all(radii <= exact) and np.all((radii > 0) <= (exact > 0))
    away = exact >= 0.5
    loss = (exact - radii)[away] / exact[away]
    assert away.sum() > 10 and np.all(loss > 0) and np.all(loss < 1e-2)


def test_non_finite_pixels_or_logits_are_never_certified(trained_workdir):
    model, x, y = _test_points(trained_workdir)
    x, y = x[:6].copy(), y[:6]
    x[1, 3, 3, 0], x[2, 0, 0, 0], x[3, 5, 5, 0] = np.nan, np.inf, -np.inf
    for arithmetic in ('float32', 'exact'):
        radii = model.certified_radius(x, y, arithmetic=arithmetic)
        assert np.all(np.isfinite(radii)) and np.all(radii[1:4] == 0) and radii.max() > 0
    # Pixels of 3e38 (through certify: certified_radius refuses pixels above 1): the float64
    # logits are finite and the exact network certifies a radius of ~1e38, but the float32
    # network overflows to NaN: not certified. Nor is any non-finite pixel, whatever the logits.
    huge = np.full((1, *model.input_shape), 3e38, np.float32)
    points = np.concatenate([x, huge])
    logits = certify.logits_float64(model.model, model.variables, points)
    labels = np.append(y, np.argmax(logits[-1]))
    assert np.isnan(np.asarray(model.logits(huge))).all()
    assert certify.certified_radii(logits, labels, model.sound_bounds)[-1] > 1e30
    allowance = certify.rounding_allowance(model.model, model.variables, points)
    radii = certify.certified_radii(logits, labels, model.sound_bounds, 'pairwise', allowance)
    assert np.all(radii[1:4] == 0) and radii[-1] == 0
    # Non-finite logits, given directly.
    logits = np.array([[1.0, 0.0], [np.nan, 0.0], [np.inf, 0.0]])
    bounds = certify.SoundBounds(1.0, 1.0, np.eye(2))
    for name in margins.CERTIFICATES:
        np.testing.assert_array_equal(
            certify.certified_radii(logits, np.zeros(3, int), bounds, name) > 0,
            [True, False, False])


def test_the_evaluator_reports_float32_certificates_beside_certified_only(trained_workdir):
    model, x, y = _test_points(trained_workdir)
    x = x[:120].copy()
    x[::10, 0, 0, 0] = np.nan  # 12 points with a NaN pixel: never certified, never correct
    context = Context(model, x, y[:120])
    result = run_evaluator('certificates', context)
    scalars = result.scalars
    assert not context.correct[::10].any() and np.all(result.per_example['radius_pairwise'][::10]
                                                      == 0)
    finite_correct = np.delete(context.correct, np.s_[::10]).mean() * 108 / 120
    assert scalars['clean_accuracy'] == pytest.approx(finite_correct)
    for name in margins.CERTIFICATES:
        assert 0 < scalars[f'rounding_loss_{name}'] < 1e-2
        for eps in model.config.evaluation.epsilons:
            certified = scalars[f'certified_{name}@{eps:g}']
            assert certified <= scalars[f'certified_only_{name}@{eps:g}']
            assert certified <= scalars[f'certified_exact_{name}@{eps:g}']
            assert certified <= scalars['clean_accuracy']
        assert scalars[f'certified_only_{name}@0.1'] <= 108 / 120
    radii, only = result.per_example['radius_pairwise'], result.per_example['radius_only_pairwise']
    assert np.all(only >= radii) and np.all(only[context.correct] == radii[context.correct])


def test_without_a_rounding_analysis_the_evaluator_reports_exact_figures_only(trained_workdir,
                                                                                monkeypatch,
                                                                                capsys):
    model, x, y = _test_points(trained_workdir)
    relu = activations.ACTIVATIONS.get(model.config.mlp.activation)
    monkeypatch.setitem(activations.ACTIVATIONS._entries, relu.name,
                        dataclasses.replace(relu, exact_float32=False))
    context = Context(model, x[:40], y[:40])
    scalars = run_evaluator('certificates', context).scalars
    assert context.arithmetic == 'exact'
    assert f"activation '{relu.name}' has no float32 rounding analysis" in \
        capsys.readouterr().err
    assert 'certified_exact_pairwise@0.1' in scalars and 'certified_only_exact_pairwise@0.1' in \
        scalars and not any(key.startswith('certified_pairwise') for key in scalars)
    with pytest.raises(rounding.NotAnalysable, match='no float32 rounding analysis'):
        model.certified_radius(x[:2], y[:2])


def test_the_allowance_reports_its_progress_batch_by_batch():
    """The certificates' progress line is driven by the analysis' own batches."""
    model, shape = _network('mlp')
    variables = _random_variables(model, shape, 6)
    x = np.random.default_rng(6).uniform(size=(300, *shape)).astype(np.float32)
    calls = []
    certify.rounding_allowance(model, variables, x, progress=lambda *done: calls.append(done))
    assert calls == [(256, 300), (300, 300)]
    calls.clear()
    certify.logits_float64(model, variables, x, batch_size=128,
                           progress=lambda *done: calls.append(done))
    assert calls == [(128, 300), (256, 300), (300, 300)]
