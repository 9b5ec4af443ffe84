"""WideResNet: sound bound vs brute-force Jacobians and the estimate, training, the trainer."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from bound_testing import converge, random_bn_variables
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lclmt_jax import configs, inflation, layers, models, train

SHAPE = (8, 8, 3)


def _key(seed):
    """An RBG key: XLA compiles its initializers several times faster than threefry's on CPU."""
    return jax.random.key(seed, impl='rbg')


def _lc_lmt_step(model, tx, images, labels):
    """A jitted LC-LMT (eps = 0.1) step on one fixed batch, outside shard_map."""
    loss_fn = functools.partial(train.inflated_loss, model, inflation.get_inflation('lc_lmt'), 0.1)

    @jax.jit
    def step(params, model_state, opt_state):
        (_, result), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, model_state, images, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), result.model_state, opt_state, result

    return step


@pytest.fixture(scope='module')
def small():
    """WRN-10-1 on 8×8×3: one identity block and two projection blocks (strides 2)."""
    model = models.WideResNet(depth=10, width=1, num_classes=10)
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
    head = layers.dense_upper_bound(params['head']['kernel'])
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
    product = models.WideResNet(depth=10, width=1, num_classes=10, fold_bn=False).apply(
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
    losses = []
    new_params, new_state = params, model_state
    for _ in range(10):
        new_params, new_state, opt_state, result = step(new_params, new_state, opt_state)
        losses.append(float(result.loss))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
    for collection in ('batch_stats', 'lipschitz'):  # both updated by the train-mode apply
        assert not np.allclose(jax.tree.leaves(new_state[collection])[0],
                               jax.tree.leaves(model_state[collection])[0])


def test_zero_init_residual_starts_every_identity_block_at_bound_one(batch):
    model = models.WideResNet(depth=10, width=1, num_classes=10, zero_init_residual=True)
    variables = jax.jit(model.init)({'params': _key(0)}, jnp.zeros((1, *SHAPE)))
    params = variables['params']
    assert all(not np.any(params[name]['conv2']['kernel']) for name in params if 'block' in name)
    _, bounds = model.apply(variables, jnp.zeros((1, *SHAPE)), sound=True,
                            capture_intermediates=True, mutable=['intermediates'])
    blocks = {name: node['__call__'][0][1] for name, node in bounds['intermediates'].items()
              if 'block' in name}
    assert blocks['group1_block1'] == 1.0  # identity block: x + 0
    assert blocks['group2_block1'] > 1.0  # projection block: |Ks D1| + 0
    he_model = models.WideResNet(depth=10, width=1, num_classes=10)
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
        params, model_state, opt_state, result = step(params, model_state, opt_state)
    assert np.isfinite(float(result.lipschitz)) and float(result.lipschitz) > 0
    assert np.any(params['group1_block1']['conv2']['kernel'])
    v = model_state['lipschitz']['group1_block1']['conv2']['v']
    np.testing.assert_allclose(float(jnp.linalg.norm(v)), 1.0, rtol=1e-5)


def test_wrn_16_4_shapes():
    model = models.WideResNet()  # depth 16, width 4, 10 classes
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
    config = configs.default_config()
    config.model = 'wrn'
    assert models.create_model(config, 10) == models.WideResNet(16, 4, 10, 'data')  # defaults
    config.wrn = ml_collections.ConfigDict({'depth': 10, 'width': 1})  # no zero_init_residual
    config.batch_size = 8
    model = models.create_model(config, 10)
    assert (model.depth, model.width, model.bn_axis_name) == (10, 1, 'data')
    assert not model.zero_init_residual and model.fold_bn
    assert models.create_model(configs.svhn_variant(configs.default_config(), 'smoke'),
                               10).zero_init_residual
    with pytest.raises(ValueError, match='6n \\+ 4'):
        models.WideResNet(depth=12).init({'params': _key(0)}, jnp.zeros((1, *SHAPE)))

    mesh = train.make_mesh()
    assert mesh.size == 4  # batch statistics are pmean-ed over 4 fake devices
    tx = train.create_optimizer(config, 2)
    state = train.create_train_state(model, tx, _key(0), SHAPE)  # init outside shard_map
    stats_before = np.asarray(state.model_state['batch_stats']['final_bn']['var'])
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (16, *SHAPE), dtype=np.uint8)
    labels = rng.integers(0, 10, 16).astype(np.int32)
    epoch = train.make_train_epoch(model, tx, config, mesh, len(labels))
    replicate = lambda tree: jax.device_put(tree, NamedSharding(mesh, P()))
    new_state, metrics = epoch(replicate(state), *replicate((images, labels)),
                               jax.random.key(1))
    new_state, metrics = jax.device_get((new_state, metrics))
    assert int(metrics.steps) == 2 and int(metrics.first_bad_step) == -1
    assert np.isfinite(float(metrics.loss_sum))
    assert int(new_state.step) == 2
    assert not np.allclose(new_state.model_state['batch_stats']['final_bn']['var'], stats_before)
