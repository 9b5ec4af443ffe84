"""The train state, the train step, the eval step and ``train_and_evaluate``: where training
happens.

The steps are written for one global batch; ``lclmt_jax.input_pipeline`` runs them data-parallel
over a 1-D device mesh (``jax.jit`` with ``NamedSharding``: replicated state, batch split over
the devices), either as one jitted ``lax.scan`` per epoch over an on-device dataset or one
jitted call per prefetched host batch. The global batch composition depends only on the seed
and the epoch, so 1 device and N devices follow the same trajectory up to float summation order,
and a resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from lclmt_jax import (
    augment,
    checkpoints,
    console,
    data,
    divergence,
    input_pipeline,
    losses,
    metrics,
    models,
    optimizers,
    recovery,
    resume,
    run_files,
    sound_metrics,
    validation,
    workdir_lock,
    writers,
)
from lclmt_jax.data import extra as extra_data
from lclmt_jax.recovery import NonFiniteLossError, TrainingInterrupted

Array = jax.Array
__all__ = ['NonFiniteLossError', 'TrainingInterrupted', 'Trainer', 'TrainState',
           'create_train_state', 'create_trainer', 'make_eval_step', 'make_refresh',
           'make_train_step', 'train_and_evaluate']


class TrainState(train_state.TrainState):
    """flax's train state plus the model's non-parameter collections.

    ``model_state`` holds e.g. ``{'lipschitz': power-iteration vectors, 'batch_stats': ...}``.
    """

    model_state: Any


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: Array,
                       input_shape: tuple[int, ...]) -> TrainState:
    """Initial parameters, power-iteration vectors, BN statistics and optimizer state."""
    variables = dict(models.init_variables(model, rng, input_shape))
    params = variables.pop('params')
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx, model_state=variables)
    return state.replace(step=jnp.zeros((), jnp.int32))


def make_train_step(model: nn.Module, config: ml_collections.ConfigDict,
                    epsilon_at: optax.Schedule) -> Callable:
    """``train_step(state, uint8 images, labels) -> (state, TrainReport)`` on one global batch
    (``divergence.TrainReport``: the metrics and the non-finite signal).

    The loss's epsilon is ``epsilon_at`` of the state's step (``losses.epsilon_schedule``); the
    margin metrics use the full epsilon. ``inflated_correct`` is the accuracy of the inflated logits
    at the loss's epsilon: the "training accuracy" of the LMT reference code (its Chainer
    classifier scores the output it trains on), the fraction of points whose margin beats the
    inflation. With ``config.augment`` on, the batch is augmented first (``augment.augment``),
    with the key of (seed, state.step).
    """
    method = losses.configured_method(config)
    augmentation = dict(config.augment)

    def train_step(state: TrainState, images: Array, labels: Array):
        epsilon = epsilon_at(state.step)
        if augment.is_on(**augmentation):
            images = augment.augment(images, augment.step_key(config.seed, state.step),
                                     **augmentation)

        def loss_fn(params):
            output, model_state = model.apply(
                {'params': params, **state.model_state}, data.to_float(images), train=True,
                mutable=list(state.model_state))
            loss = losses.method_loss(method, output, labels, epsilon, config.trades_lambda,
                                      config.logit_temperature)
            return loss, (output, model_state)

        (loss, (output, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        state = state.apply_gradients(grads=grads, model_state=model_state)
        outputs = metrics.margin_outputs(method, output, labels, config.epsilon)
        inflated = losses.inflated_logits(method, output, labels, epsilon)
        outputs['inflated_correct'] = jnp.argmax(inflated, axis=-1) == labels
        return state, divergence.TrainReport.single_from_model_output(loss=loss, **outputs)

    return train_step


def make_eval_step(model: nn.Module, config: ml_collections.ConfigDict) -> Callable:
    """``eval_step(state, uint8 images, labels, valid) -> EvalMetrics`` on one global batch.

    A point "meets the bound" when its margin meets the requirement of the configured method
    with the *training estimate* of the bounds: a progress signal, not a certificate (see
    ``lclmt_jax.certify``).
    """
    method = losses.METHODS.get(config.method)

    def eval_step(state: TrainState, images: Array, labels: Array, valid: Array):
        output = model.apply({'params': state.params, **state.model_state},
                             data.to_float(images), train=False)
        outputs = metrics.margin_outputs(method, output, labels, config.epsilon)
        return metrics.EvalMetrics.single_from_model_output(mask=valid, **outputs)

    return eval_step


class Trainer(NamedTuple):
    """What a run trains with, data aside: the model, the device mesh, the initial state
    (replicated over the mesh), the two steps and the loss's epsilon at each step."""

    model: nn.Module
    mesh: jax.sharding.Mesh
    state: TrainState
    train_step: Callable
    eval_step: Callable
    epsilon_at: optax.Schedule


def create_trainer(config: ml_collections.ConfigDict, input_shape: tuple[int, ...],
                   num_classes: int, steps_per_epoch: int = 1,
                   devices: list | None = None) -> Trainer:
    """The model, optimizer and state ``config`` names, for inputs of ``input_shape`` and
    ``num_classes`` classes, on a mesh over ``devices`` (default: all). ``steps_per_epoch`` sets
    the learning-rate and epsilon schedules' time scale."""
    mesh = input_pipeline.make_mesh(devices)
    model = models.create_model(config, num_classes)
    tx = optimizers.create_optimizer(config, steps_per_epoch)
    state = create_train_state(model, tx, jax.random.key(config.seed), tuple(input_shape))
    epsilon_at = losses.epsilon_schedule(config, steps_per_epoch)
    return Trainer(model, mesh, input_pipeline.replicate(mesh, state),
                   make_train_step(model, config, epsilon_at), make_eval_step(model, config),
                   epsilon_at)


def make_refresh(trainer: Trainer, steps: int, images: np.ndarray) -> Callable:
    """``refresh(state) -> state`` with the training estimates refreshed on the uint8 batch
    ``images`` (``models.refresh_estimates``: Rayleigh-Ritz for dense blocks, ``steps`` power
    iterations for single vectors), run at the start of each epoch; the identity when there is
    nothing to refresh (no power-iteration vectors at all, as in the by-construction LipConvNets,
    or no block and ``steps`` = 0)."""
    if not trainer.state.model_state.get('lipschitz') or (
            not steps and not models.keeps_blocks(trainer.state.model_state)):
        return lambda state: state
    batch = input_pipeline.replicate(trainer.mesh, images)

    def refresh(state: TrainState) -> TrainState:
        vectors = models.refresh_estimates(
            trainer.model, {'params': state.params, **state.model_state}, data.to_float(batch),
            steps)
        return state.replace(model_state={**state.model_state, 'lipschitz': vectors})

    return jax.jit(refresh, out_shardings=input_pipeline.replicated(trainer.mesh),
                   donate_argnums=(0,))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains ``config`` in ``workdir``: metrics per epoch, checkpoints, resume if interrupted.

    Everything that can be checked is checked before any work: the config, the workdir, whether
    the run may start there (``resume.plan_start``: the training fields the workdir was trained
    with, its length), the data and how augmentation fits it.
    Then the run holds the workdir's lock (``workdir_lock``: one run per workdir) until it ends.
    Resuming reads the newest good checkpoint (``checkpoints.restore_train_state``): a damaged
    one is set aside, an intact one saved for another config, data shape or parameter tree is
    refused with one line and left as it is. A non-finite loss, Ctrl-C and a full disk follow
    ``lclmt_jax.recovery``; every earlier checkpoint is kept and the same command resumes.
    """
    validation.validate_config(config)
    run_files.check_workdir(workdir)
    resume.plan_start(workdir, config)
    dataset = data.load_dataset(config.data)
    extra = extra_data.load(config)
    if extra is not None:
        extra_data.check_fits(extra, dataset)
    num_train = len(dataset.train_labels)
    if num_train < config.batch_size:
        raise ValueError(f'batch_size={config.batch_size} exceeds the {num_train} train examples')
    steps_per_epoch = num_train // config.batch_size
    input_shape = dataset.train_images.shape[1:]
    augment.check_fits(config.augment.crop_padding, input_shape)
    trainer = create_trainer(config, input_shape, dataset.num_classes, steps_per_epoch)
    config_dict = run_files.config_as_dict(config)
    run_info = {'dataset': dataset.name, 'num_classes': dataset.num_classes,
                'input_shape': list(input_shape)}
    if extra is not None:
        run_info['extra'] = {'dataset': extra.name, 'examples': len(extra.labels),
                             'per_batch': extra.per_batch}

    def check(epoch, saved_config, saved_run):
        resume.check_resumable(workdir, epoch, saved_config, saved_run, config, run_info)

    abstract = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(
        leaf.shape, leaf.dtype, sharding=leaf.sharding), trainer.state)
    with workdir_lock.hold(workdir), recovery.translated_failures(workdir, abstract) as progress, \
            contextlib.ExitStack() as closing:
        state, start_epoch = checkpoints.restore_train_state(workdir, trainer.state, check)
        resume.announce(workdir, start_epoch, config.num_epochs)
        if start_epoch < config.num_epochs:
            console.say(start_line(config, dataset, workdir, start_epoch, extra))
        run_files.rewrite_metrics(workdir, start_epoch)
        manager = checkpoints.checkpoint_manager(workdir)
        writer = writers.create_writer(workdir, config.num_epochs)
        closing.callback(_quietly, manager.close)  # last: what they flush was flushed each epoch
        closing.callback(_quietly, writer.close)
        report_progress = writers.create_progress(writer)
        convolves = any(leaf.ndim == 4 for leaf in jax.tree.leaves(state.params))
        pipeline = input_pipeline.make_pipeline(config, dataset, trainer.mesh, trainer.train_step,
                                                trainer.eval_step, convolves, extra)
        refresh = make_refresh(trainer, config.bound.reconverge_steps,
                               dataset.train_images[:config.batch_size])
        guard = recovery.NonFiniteGuard(workdir, start_epoch, abstract, check)
        epoch = start_epoch + 1
        while epoch <= config.num_epochs:
            progress['epoch'] = epoch
            started = time.perf_counter()
            new_state, train_metrics = pipeline.train_epoch(refresh(state), epoch)
            scalars = metrics.epoch_scalars(train_metrics, pipeline.evaluate(new_state))
            bad_step = int(train_metrics.first_non_finite_step.compute())
            if bad_step >= 0 or not np.isfinite(scalars['train_loss']):
                state, epoch = guard.fall_back(epoch, bad_step)
                report_progress = writers.create_progress(writer)
                continue
            state = new_state
            scalars['epoch_seconds'] = time.perf_counter() - started
            # the loss's epsilon at the epoch's end (every epoch runs steps_per_epoch steps)
            scalars['train_epsilon'] = float(trainer.epsilon_at(epoch * steps_per_epoch))
            sound_every = config.bound.sound_every_epochs
            if sound_every and (epoch % sound_every == 0 or epoch == config.num_epochs) \
                    and jax.process_index() == 0:
                scalars.update(sound_metrics.sound_scalars(
                    trainer.model, {'params': state.params, **state.model_state}, input_shape,
                    scalars['test_lipschitz'], config.epsilon))
            report_progress(epoch)
            writer.write_scalars(epoch, scalars)
            writer.flush()
            if guard.at_suspect(epoch):
                if guard.replaces_suspect(epoch, state):
                    manager.reload()
                    recovery.save_checkpoint(manager, epoch, state, config_dict, run_info)
            elif epoch % config.checkpoint_every_epochs == 0 or epoch == config.num_epochs:
                recovery.save_checkpoint(manager, epoch, state, config_dict, run_info)
                run_files.save_json(workdir, run_files.CONFIG_FILE, config_dict)
                run_files.save_json(workdir, run_files.RUN_INFO_FILE, run_info)
            epoch += 1
    return state


def start_line(config: ml_collections.ConfigDict, dataset: data.Dataset, workdir: str,
               start_epoch: int, extra: extra_data.ExtraData | None = None) -> str:
    """What a run is about to train, before its first epoch ends: the model, the dataset (and
    the extra training data), the epochs, the devices and the workdir."""
    shape = 'x'.join(map(str, dataset.train_images.shape[1:]))
    devices = jax.devices()
    mixed = '' if extra is None else (
        f'; every batch {config.batch_size - extra.per_batch} real + {extra.per_batch} extra '
        f'from {len(extra.labels)} images of {extra.name}')
    return (f'training {config.model} ({config.method}) on {dataset.name}: '
            f'{len(dataset.train_labels)} train / {len(dataset.test_labels)} test images of '
            f'{shape}, {dataset.num_classes} classes{mixed}; epochs {start_epoch + 1}-'
            f'{config.num_epochs}'
            f' on {len(devices)} {devices[0].platform} device{"s" if len(devices) > 1 else ""}; '
            f'workdir {os.path.abspath(workdir)}')


def _quietly(close: Callable[[], None]) -> None:
    """Calls ``close``, ignoring its failure: the run's own failure is the one to report."""
    with contextlib.suppress(Exception):
        close()
