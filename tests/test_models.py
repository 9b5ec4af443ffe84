"""Networks of ``lclmt_jax.models``: composed bounds against brute-force Jacobian norms."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from bound_testing import converge, random_bn_variables, unit

from lclmt_jax import bounds, config_schema, configs, input_pipeline, losses, models, train
from lclmt_jax.layers import batchnorm
from lclmt_jax.layers.preact_block import PreActBlock
from lclmt_jax.models.mlp import MLP
from lclmt_jax.models.wrn import WideResNet


@functools.cache
def _converged_mlp(seed):
    """A small MLP after 300 training-mode passes: its estimates have converged to the exact L."""
    model = MLP(hidden_sizes=(16, 16, 16), num_classes=5)
    x = jnp.zeros((1, 8, 8, 1))
    variables = model.init({'params': jax.random.key(seed)}, x)

    @jax.jit
    def converge(variables):
        def one_pass(variables, _):
            _, state = model.apply(variables, x, train=True, mutable=['lipschitz'])
            return {'params': variables['params'], **state}, None
        return jax.lax.scan(one_pass, variables, None, length=300)[0]

    return model, converge(variables)


def _jacobian_norms(model, variables, xs):
    """The exact spectral norm of the logits' Jacobian at each input of ``xs``."""
    logits_fn = lambda z: model.apply(variables, z[None])[0][0]
    jacobians = jax.jit(jax.vmap(jax.jacobian(logits_fn)))(xs).reshape(len(xs), -1, xs[0].size)
    return np.linalg.norm(np.asarray(jacobians, np.float64), ord=2, axis=(1, 2))


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
    xs = jax.random.uniform(jax.random.key(seed + 10), (20, 8, 8, 1))
    assert np.all(_jacobian_norms(model, variables, xs) <= sound)


def test_head_bound_times_body_bound_is_the_network_bound():
    model, variables = _converged_mlp(0)
    out = model.apply(variables, jnp.zeros((1, 8, 8, 1)), sound=True)
    head = bounds.dense_upper_bound(variables['params']['head']['kernel'])
    np.testing.assert_allclose(out.lipschitz, out.body_lipschitz * head, rtol=1e-12)


@pytest.mark.parametrize('fold_bn', [True, False], ids=['folded', 'product'])
@pytest.mark.parametrize('features,strides', [(4, 1), (6, 2)], ids=['identity', 'projection'])
def test_residual_block_bound_dominates_the_jacobian_norm(features, strides, fold_bn):
    block = PreActBlock(features, strides, fold_bn=fold_bn)
    x = unit((1, 6, 6, 4), 0)
    variables = jax.jit(block.init)({'params': jax.random.key(1, impl='rbg')}, x)
    variables = converge(block, random_bn_variables(variables, 2), x)
    _, sound = block.apply(variables, x, sound=True)
    _, estimate = block.apply(variables, x)

    params, stats = variables['params'], variables['batch_stats']
    d = {name: batchnorm.batch_norm_multipliers(params[name]['scale'], stats[name]['var'], 1e-5)
         for name in ('bn1', 'bn2')}
    shapes = {'conv1': ((6, 6, 4), strides), 'shortcut': ((6, 6, 4), strides),
              'conv2': ((6 // strides, 6 // strides, features), 1)}
    conv = {name: bounds.conv_upper_bound(params[name]['kernel'], *shapes[name])
            for name in shapes if name in params}
    bn = {name: float(np.max(d[name]) * (1 + bounds.SOUND_SLACK)) for name in d}
    product = (1 + bn['bn1'] * conv['conv1'] * bn['bn2'] * conv['conv2'] if strides == 1 else
               bn['bn1'] * (conv['shortcut'] + conv['conv1'] * bn['bn2'] * conv['conv2']))
    if fold_bn:  # |D2 K1 D1|·|K2| (+ 1 or + |Ks D1|): see PreActBlock
        folded = bounds.conv_upper_bound(params['conv1']['kernel'], *shapes['conv1'],
                                         in_scale=d['bn1'], out_scale=d['bn2'])
        expected = (1 + folded * conv['conv2'] if strides == 1 else bounds.conv_upper_bound(
            params['shortcut']['kernel'], *shapes['shortcut'], in_scale=d['bn1'])
            + folded * conv['conv2'])
        np.testing.assert_allclose(sound, expected, rtol=1e-12)
        assert sound < product / 1.5  # folding is tighter: 2.2x and 1.8x on these cases
    else:
        np.testing.assert_allclose(sound, product, rtol=1e-12)
    assert float(estimate) <= sound * (1 + 1e-4)
    assert float(estimate) >= sound / 1.5  # converged: every layer's sound/exact ratio is <= 1.5

    jacobians = jax.jit(jax.vmap(jax.jacobian(lambda z: block.apply(variables, z[None])[0][0])))
    inputs = np.random.default_rng(3).normal(size=(10, 6, 6, 4)).astype(np.float32)
    for jac in np.asarray(jacobians(inputs), np.float64):
        assert np.linalg.norm(jac.reshape(-1, 6 * 6 * 4), ord=2) <= sound


# ----------------------------------------------------------------------------- WideResNet

SHAPE = (8, 8, 3)


def _key(seed):
    """An RBG key: XLA compiles its initializers several times faster than threefry's on CPU."""
    return jax.random.key(seed, impl='rbg')


def _lc_lmt_step(model, tx, images, labels):
    """A jitted LC-LMT (eps = 0.1) step on one batch: (params, state, opt) -> (..., loss, L)."""
    method = losses.METHODS.get('lc_lmt')

    @jax.jit
    def step(params, model_state, opt_state):
        def loss_fn(params):
            output, new_state = model.apply({'params': params, **model_state}, images, train=True,
                                            mutable=list(model_state))
            return losses.method_loss(method, output, labels, 0.1), (output, new_state)

        (loss, (output, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_state, opt_state, loss, output.lipschitz

    return step


@pytest.fixture(scope='module')
def small():
    """WRN-10-1 on 8×8×3: one identity block and two projection blocks (strides 2)."""
    model = WideResNet(depth=10, width=1, num_classes=10)
    variables = jax.jit(model.init)({'params': _key(0)}, jnp.zeros((1, *SHAPE)))
    return model, random_bn_variables(variables, 1)


@pytest.fixture(scope='module')
def batch():
    rng = np.random.default_rng(3)
    return (jnp.asarray(rng.uniform(size=(16, *SHAPE)), jnp.float32),
            jnp.asarray(rng.integers(0, 10, 16), jnp.int32))


@pytest.fixture(scope='module')
def converged(small, batch):
    """``small`` after 1000 power-iteration steps (train mode, only 'lipschitz' mutable)."""
    model, variables = small
    return converge(model, variables, batch[0], 1000)


def test_small_wrn_structure_and_head_convention(small):
    model, variables = small
    params = variables['params']
    assert 'shortcut' not in params['group1_block1']  # 16 -> 16, stride 1: identity
    assert params['group2_block1']['shortcut']['kernel'].shape == (1, 1, 16, 32)
    assert params['group3_block1']['shortcut']['kernel'].shape == (1, 1, 32, 64)
    assert params['head']['kernel'].shape == (64, 10)
    assert variables['lipschitz']['stem']['v'].shape == (1, *SHAPE)
    out = model.apply(variables, jnp.zeros((1, *SHAPE)), sound=True)
    head = bounds.dense_upper_bound(params['head']['kernel'])
    np.testing.assert_allclose(out.lipschitz, out.body_lipschitz * head, rtol=1e-12)


def test_sound_bound_dominates_jacobian_norms_and_the_converged_estimate(small, converged):
    model, variables = small
    x = jnp.zeros((1, *SHAPE))
    sound = model.apply(variables, x, sound=True)
    jacobians = jax.jit(jax.vmap(jax.jacobian(
        lambda z: model.apply(variables, z[None]).logits[0])))
    inputs = np.random.default_rng(2).uniform(size=(16, *SHAPE)).astype(np.float32)
    norms = [np.linalg.norm(j.reshape(10, -1), ord=2)
             for j in np.asarray(jacobians(inputs), np.float64)]
    assert max(norms) <= sound.lipschitz

    estimate = model.apply(converged, x)
    assert float(estimate.lipschitz) <= sound.lipschitz * (1 + 1e-4)
    assert float(estimate.body_lipschitz) <= sound.body_lipschitz * (1 + 1e-4)
    # The converged estimate composes the exact (folded) layer norms the same way as the sound
    # bound, so the gap is the conv bounds' own: crop losses of the circular embedding, largest
    # on the 2×2 map of group 3; sound/estimate is 2.10 here.
    assert float(estimate.lipschitz) >= sound.lipschitz / 2.5
    # Folding the BNs into the convs (PreActBlock) is sound and much tighter than the product of
    # the layer bounds: 1.45e4 against 2.0e5 here.
    product = WideResNet(depth=10, width=1, num_classes=10, fold_bn=False).apply(
        variables, x, sound=True)
    assert max(norms) <= sound.lipschitz < product.lipschitz / 10


def test_lc_lmt_training_steps_lower_the_loss(small, converged, batch):
    model, _ = small
    images, labels = batch
    # Start from converged power-iteration vectors, as after the first epochs: a fresh vector
    # starts far below the norm, and its growth would dominate the first steps' loss.
    variables = converged
    params = variables['params']
    model_state = {k: v for k, v in variables.items() if k != 'params'}
    tx = optax.adam(1e-3)
    step = _lc_lmt_step(model, tx, images, labels)
    opt_state = tx.init(params)
    history = []
    new_params, new_state = params, model_state
    for _ in range(10):
        new_params, new_state, opt_state, loss, _ = step(new_params, new_state, opt_state)
        history.append(float(loss))
    assert np.all(np.isfinite(history))
    assert history[-1] < 0.5 * history[0], history
    for collection in ('batch_stats', 'lipschitz'):  # both updated by the train-mode apply
        assert not np.allclose(jax.tree.leaves(new_state[collection])[0],
                               jax.tree.leaves(model_state[collection])[0])


def test_zero_init_residual_starts_every_identity_block_at_bound_one(batch):
    model = WideResNet(depth=10, width=1, num_classes=10, zero_init_residual=True)
    variables = jax.jit(model.init)({'params': _key(0)}, jnp.zeros((1, *SHAPE)))
    params = variables['params']
    assert all(not np.any(params[name]['conv2']['kernel']) for name in params if 'block' in name)
    _, captured = model.apply(variables, jnp.zeros((1, *SHAPE)), sound=True,
                              capture_intermediates=True, mutable=['intermediates'])
    blocks = {name: node['__call__'][0][1] for name, node in captured['intermediates'].items()
              if 'block' in name}
    assert blocks['group1_block1'] == 1.0  # identity block: x + 0
    assert blocks['group2_block1'] > 1.0  # projection block: |Ks D1| + 0
    he_model = WideResNet(depth=10, width=1, num_classes=10)
    he_variables = jax.jit(he_model.init)({'params': _key(0)}, jnp.zeros((1, *SHAPE)))
    he = he_model.apply(he_variables, jnp.zeros((1, *SHAPE)), sound=True)
    assert model.apply(variables, jnp.zeros((1, *SHAPE)), sound=True).lipschitz < he.lipschitz

    # Training moves the zero kernels and the power iteration picks them up (no stuck v = 0).
    images, labels = batch
    tx = optax.sgd(0.01)
    step = _lc_lmt_step(model, tx, images, labels)
    params, model_state = variables['params'], {k: v for k, v in variables.items()
                                                 if k != 'params'}
    opt_state = tx.init(params)
    for _ in range(3):
        params, model_state, opt_state, _, lipschitz = step(params, model_state, opt_state)
    assert np.isfinite(float(lipschitz)) and float(lipschitz) > 0
    assert np.any(params['group1_block1']['conv2']['kernel'])
    v = model_state['lipschitz']['group1_block1']['conv2']['v']
    np.testing.assert_allclose(float(jnp.linalg.norm(v)), 1.0, rtol=1e-5)


def test_wrn_16_4_shapes():
    model = WideResNet()  # depth 16, width 4, 10 classes
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(model.init, {'params': _key(0)},
                               jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    assert set(variables) == {'params', 'lipschitz', 'batch_stats'}
    num_params = sum(leaf.size for leaf in jax.tree.leaves(variables['params']))
    assert 2.7e6 < num_params < 2.8e6  # WRN-16-4 has 2.7M parameters (Zagoruyko & Komodakis)
    assert [name for name in variables['params'] if 'block' in name] == [
        f'group{g}_block{b}' for g in (1, 2, 3) for b in (1, 2)]
    assert variables['params']['head']['kernel'].shape == (256, 10)
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    assert out.logits.shape == (2, 10) and out.lipschitz.shape == out.body_lipschitz.shape == ()
    out, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=['lipschitz', 'batch_stats']),
        variables, x)
    assert out.logits.shape == (2, 10)
    chex.assert_trees_all_equal_shapes_and_dtypes(
        state, {k: variables[k] for k in ('lipschitz', 'batch_stats')})


def test_create_model_and_the_unchanged_train_step_run_a_wrn():
    config = config_schema.default_config()
    config.model = 'wrn'
    assert models.create_model(config, 10) == WideResNet(  # the model's defaults
        16, 4, 10, estimator=models.estimator(config))
    config.wrn = ml_collections.ConfigDict({'depth': 10, 'width': 1})  # no zero_init_residual
    config.batch_size = 8
    model = models.create_model(config, 10)
    assert (model.depth, model.width) == (10, 1)
    assert not model.zero_init_residual and model.fold_bn
    assert models.create_model(configs.svhn_variant(config_schema.default_config(), 'smoke'),
                               10).zero_init_residual
    with pytest.raises(ValueError, match='6n \\+ 4'):
        WideResNet(depth=12)

    trainer = train.create_trainer(config, SHAPE, 10, 2)
    mesh = trainer.mesh
    assert mesh.size == 4  # batch statistics span the batch sharded over 4 fake devices
    stats_before = np.asarray(trainer.state.model_state['batch_stats']['final_bn']['var'])
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (16, *SHAPE), dtype=np.uint8)
    labels = rng.integers(0, 10, 16).astype(np.int32)
    epoch = input_pipeline.device_train_epoch(trainer.train_step, mesh, config.batch_size,
                                              len(labels))
    new_state, metrics = epoch(trainer.state, *input_pipeline.replicate(mesh, (images, labels)),
                               jax.random.key(1))
    new_state, metrics = jax.device_get((new_state, metrics))
    assert int(metrics.loss.count) == 2 and int(metrics.first_non_finite_step.compute()) == -1
    assert np.isfinite(float(metrics.loss.compute()))
    assert int(new_state.step) == 2
    assert not np.allclose(new_state.model_state['batch_stats']['final_bn']['var'], stats_before)


# ----------------------------------------------------------------------------- the registry


def test_models_are_found_by_name_and_set_up_by_their_config_section():
    assert {'mlp', 'wrn'} <= set(models.MODELS.names())
    config = config_schema.default_config()
    config.mlp.hidden_sizes = (7, 5)
    model = models.create_model(config, 4)
    assert isinstance(model, MLP) and model.hidden_sizes == (7, 5) and model.num_classes == 4
    config.model = 'resnet9000'
    with pytest.raises(ValueError, match="unknown config.model 'resnet9000'; allowed: .*mlp"):
        models.create_model(config, 4)
    config.model = 'mlp'
    config.mlp.widths = (3,)
    with pytest.raises(ValueError, match="config.mlp.widths is not a setting of model 'mlp'; "
                                         'allowed: hidden_sizes, activation'):
        models.create_model(config, 4)
    del config.mlp['widths']
    config.mlp.activation = 'tanh'
    with pytest.raises(ValueError, match="unknown activation 'tanh'; allowed: relu"):
        models.create_model(config, 4)


def test_every_model_declares_its_head_through_the_output():
    """The pairwise constants read the head from the output, whatever the network."""
    for model, shape in [(MLP((6,), num_classes=3), (4, 4, 1)),
                         (WideResNet(10, 1, num_classes=3), SHAPE)]:
        variables = model.init({'params': _key(0)}, jnp.zeros((1, *shape)))
        out = model.apply(variables, jnp.zeros((1, *shape)))
        chex.assert_trees_all_equal(out.head_kernel, variables['params']['head']['kernel'])
        sound = model.apply(variables, jnp.zeros((1, *shape)), sound=True)
        head = bounds.dense_upper_bound(sound.head_kernel)
        np.testing.assert_allclose(sound.lipschitz, sound.body_lipschitz * head, rtol=1e-12)


# ----------------------------------------------------------------------------- MinMax and the CNN


def test_group_sort_is_a_permutation_with_lipschitz_constant_one():
    from lclmt_jax.activations import ACTIVATIONS

    x = jax.random.normal(jax.random.key(0), (16,))
    for name, group in (('minmax', 2), ('groupsort4', 4)):
        y, bound = ACTIVATIONS.get(name)(x)
        assert bound == 1.0
        chex.assert_trees_all_close(jnp.sort(y.reshape(-1, group), -1), y.reshape(-1, group))
        activation = ACTIVATIONS.get(name)
        jacobian = np.asarray(jax.jacobian(lambda z, f=activation: f(z)[0])(x))
        chex.assert_trees_all_close(jacobian @ jacobian.T, np.eye(16), atol=1e-6)  # orthogonal
    with pytest.raises(ValueError, match='multiple of 4'):
        ACTIVATIONS.get('groupsort4')(jnp.ones(6))
    # MinMax by minimum/maximum: exactly the sort of each pair, on image-shaped inputs too
    from lclmt_jax.activations import group_sort
    images = jax.random.normal(jax.random.key(1), (2, 3, 3, 8))
    np.testing.assert_array_equal(ACTIVATIONS.get('minmax')(images)[0], group_sort(images, 2))


@pytest.mark.parametrize('activation', ['minmax', 'relu'])
def test_minmax_mlp_bounds_dominate_jacobian_norms(activation):
    model = MLP(hidden_sizes=(16, 16), activation=activation, weight_init='orthogonal',
                num_classes=5)
    x = jnp.zeros((1, 8, 8, 1))
    variables = model.init({'params': jax.random.key(0)}, x)
    sound = model.apply(variables, x, sound=True)
    exact_layers = np.prod([np.linalg.norm(np.asarray(p['kernel'], np.float64), 2)
                            for p in variables['params'].values()])
    assert exact_layers <= sound.lipschitz <= exact_layers * (1 + 1e-5)
    zs = jax.random.uniform(jax.random.key(1), (10, 8, 8, 1))
    assert np.all(_jacobian_norms(model, variables, zs) <= sound.lipschitz)


def _small_cnn():
    from lclmt_jax.models.cnn import CNN

    return CNN(convs=((4, 3, 1), (6, 4, 2)), dense=(16,), num_classes=5,
               estimator=bounds.Estimator(1, subspace_size=4, exact_below=5))


def test_cnn_sound_bound_is_the_product_of_exact_layer_norms_and_dominates_jacobians():
    from bound_testing import exact_conv_norm

    model = _small_cnn()
    x = jnp.zeros((1, 8, 8, 2))
    variables = converge(model, model.init({'params': jax.random.key(0)}, x), x, steps=300)
    params = variables['params']
    sound = model.apply(variables, x, sound=True)
    estimate = model.apply(variables, x)
    exact = (exact_conv_norm(params['LipschitzConv_0']['kernel'], (8, 8, 2), 1, 'SAME')
             * exact_conv_norm(params['LipschitzConv_1']['kernel'], (8, 8, 4), 2, 'SAME')
             * np.prod([np.linalg.norm(np.asarray(params[name]['kernel'], np.float64), 2)
                        for name in ('LipschitzDense_0', 'head')]))
    assert exact <= sound.lipschitz <= 1.5 * exact  # the conv bounds' own slack, <= 1.5
    assert float(estimate.lipschitz) <= sound.lipschitz * (1 + 1e-5)
    np.testing.assert_allclose(float(estimate.lipschitz), exact, rtol=1e-3)  # converged
    jacobians = jax.jit(jax.vmap(jax.jacobian(
        lambda z: model.apply(variables, z[None]).logits[0])))
    inputs = np.random.default_rng(0).uniform(size=(10, 8, 8, 2)).astype(np.float32)
    norms = [np.linalg.norm(np.asarray(j, np.float64).reshape(5, -1), 2)
             for j in jacobians(inputs)]
    assert 0 < max(norms) <= sound.lipschitz


def test_the_4c3f_shapes_on_mnist_and_cifar_sized_inputs():
    from lclmt_jax.models.cnn import CNN

    for shape, flat in (((28, 28, 1), 7 * 7 * 64), ((32, 32, 3), 8 * 8 * 64)):
        variables = jax.eval_shape(CNN().init, {'params': _key(0)},
                                   jax.ShapeDtypeStruct((1, *shape), jnp.float32))
        assert variables['params']['LipschitzDense_0']['kernel'].shape == (flat, 512)
        assert variables['params']['head']['kernel'].shape == (512, 10)
