"""Optimizers by name, the learning-rate warm-up and Lookahead: the weights the trainer holds at
an epoch's end, which it evaluates and certifies, are Lookahead's slow weights."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from lclmt_jax import config_schema, configs, optimizers, run_files, train, validation

PARAMS = {'w': jnp.array([[1.0, -2.0], [0.5, 3.0]]), 'b': jnp.array([0.1, -0.3])}


def _grad(params):
    """The gradient of a quadratic with its minimum away from 0, so the steps do not vanish."""
    return jax.grad(lambda p: sum(jnp.sum((leaf - 0.7) ** 2) for leaf in jax.tree.leaves(p)))(
        params)


def _run(tx, params, steps):
    """``steps`` updates of ``tx`` as the trainer applies them (flax's ``apply_gradients``)."""
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)
    for _ in range(steps):
        state = state.apply_gradients(grads=_grad(state.params))
    return state


@pytest.mark.fast
def test_nadam_is_reachable_by_name_and_is_optax_nadam():
    assert {'nadam', 'nadamw', 'adam', 'sgd'} <= set(optimizers.OPTIMIZERS.names())
    ours = _run(optimizers.OPTIMIZERS.get('nadam')(1e-2), PARAMS, 5).params
    chex.assert_trees_all_close(ours, _run(optax.nadam(1e-2), PARAMS, 5).params)


@pytest.mark.fast
def test_lookahead_follows_optax_lookahead_on_plain_parameters():
    """Without the epoch-end sync, the held parameters are optax.lookahead's fast ones and the
    state's slow weights its slow ones, step for step (syncs at steps 3, 6, 9)."""
    inner = optax.adam(0.05)
    ours = optimizers.lookahead(inner, sync_period=3, slow_step_size=0.5)
    reference = optax.lookahead(inner, sync_period=3, slow_step_size=0.5)
    params, state = PARAMS, ours.init(PARAMS)
    pair = optax.LookaheadParams.init_synced(PARAMS)
    ref_state = reference.init(pair)
    for step in range(1, 11):
        updates, state = ours.update(_grad(params), state, params)
        params = optax.apply_updates(params, updates)
        ref_updates, ref_state = reference.update(_grad(pair.fast), ref_state, pair)
        pair = optax.apply_updates(pair, ref_updates)
        chex.assert_trees_all_close(params, pair.fast, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(state.slow, pair.slow, rtol=1e-5, atol=1e-6)
        synced = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), params, state.slow)
        assert all(jax.tree.leaves(synced)) == (step % 3 == 0), step


@pytest.mark.fast
def test_the_weights_held_at_each_epoch_end_are_the_slow_weights_exactly():
    """With 7 steps an epoch and a sync every 3, every epoch's last step syncs too (timm's
    ``sync_lookahead``, as LiResNet and BRONet call it): the trainer's parameters there, which
    evaluation, checkpoints and the sound certificate read, are bit for bit the slow weights."""
    config = config_schema.default_config()
    config.update(optimizer='nadam', num_epochs=3, grad_clip_norm=3.0, weight_decay=1e-4)
    config.lookahead.sync_period = 3
    tx = optimizers.create_optimizer(config, steps_per_epoch=7)
    state = train_state.TrainState.create(apply_fn=None, params=PARAMS, tx=tx)
    for step in range(1, 22):
        state = state.apply_gradients(grads=_grad(state.params))
        same = all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.all(a == b)),
                                                state.params, state.opt_state.slow)))
        assert same == (step % 3 == 0 or step % 7 == 0), step
    assert not all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.all(a == b)),
                                                state.params, PARAMS)))  # it did move
    # off (the default): the same chain as without the field, update for update
    config.lookahead.sync_period = 0
    plain = optimizers.create_optimizer(config, steps_per_epoch=7)
    expected = optax.chain(optax.clip_by_global_norm(3.0), optax.add_decayed_weights(1e-4),
                           optax.nadam(1e-3))
    chex.assert_trees_all_equal(_run(plain, PARAMS, 4).params, _run(expected, PARAMS, 4).params)


@pytest.mark.fast
def test_the_learning_rate_warms_up_linearly_then_follows_the_schedule():
    """20 of 100 steps of warm-up (LiResNet: 20 of 800 epochs), then a cosine from the full rate
    at step 20 to 0 at the run's end; with none, the schedule as before."""
    config = config_schema.default_config()
    config.update(learning_rate=1e-3, schedule='cosine', num_epochs=10,
                  learning_rate_warmup_epochs=2.0)
    rate = optimizers.learning_rate_schedule(config, steps_per_epoch=10)
    np.testing.assert_allclose([float(rate(s)) for s in (0, 9, 19, 20, 60, 100)],
                               [5e-5, 5e-4, 1e-3, 1e-3, 5e-4, 0.0], atol=1e-9)
    config.schedule = 'constant'
    constant = optimizers.learning_rate_schedule(config, steps_per_epoch=10)
    np.testing.assert_allclose([float(constant(s)) for s in (0, 19, 20, 99)],
                               [5e-5, 1e-3, 1e-3, 1e-3], rtol=1e-6)
    config.learning_rate_warmup_epochs = 0.0
    assert optimizers.learning_rate_schedule(config, 10) == 1e-3
    config.schedule = 'cosine'
    cosine = optimizers.learning_rate_schedule(config, 10)
    assert float(cosine(50)) == float(optax.cosine_decay_schedule(1e-3, 100)(50))


@pytest.mark.fast
@pytest.mark.parametrize('field, value, message', [
    ('lookahead.slow_step_size', 1.5, 'lookahead.slow_step_size must be a finite number > 0 and '
                                      '<= 1, got 1.5'),
    ('lookahead.slow_step_size', 0.0, 'lookahead.slow_step_size must be a finite number > 0'),
    ('lookahead.sync_period', -1, 'lookahead.sync_period must be an integer >= 0, got -1'),
    ('learning_rate_warmup_epochs', -2.0, 'learning_rate_warmup_epochs must be a finite number'),
])
def test_bad_lookahead_and_warmup_settings_are_one_line(field, value, message):
    config = config_schema.default_config()
    config.data.source = 'embedded'
    with pytest.raises(ValueError, match=message):
        validation.validate_config(config_schema.apply_overrides(config, {field: value}),
                                   num_devices=1)


def test_a_reference_style_run_trains_and_resumes_with_lookahead(tmp_path):
    """LA, NAdam in Lookahead, warm-up, the 0.1x radius start, 10 power iterations and colour
    ops on embedded MNIST: the loss falls, the held parameters are the slow weights at every
    saved epoch, and a resumed run continues Lookahead's count."""
    config = configs.mnist_variant(config_schema.default_config(), 'embedded')
    config.update(num_epochs=2, checkpoint_every_epochs=1, method='la', optimizer='nadam',
                  learning_rate_warmup_epochs=0.5, epsilon=0.5, epsilon_warmup_epochs=1.0,
                  epsilon_start_fraction=0.1, grad_clip_norm=3.0)
    config.lookahead.sync_period = 6
    config.augment.colour_ops = 2
    config.bound.power_iterations = 10
    for epochs in (2, 3):
        config.num_epochs = epochs
        state = train.train_and_evaluate(config, str(tmp_path))
        chex.assert_trees_all_equal(state.params, state.opt_state.slow)
        assert int(state.opt_state.count) == int(state.step) == epochs * 40  # 4000 / 100
    records = run_files.read_metrics(str(tmp_path))
    assert [r['epoch'] for r in records] == [1, 2, 3]
    assert records[-1]['train_loss'] < 0.7 * records[0]['train_loss']
    assert records[-1]['test_accuracy'] > 0.7
