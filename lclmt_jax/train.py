"""The train step, the epoch loop and ``train_and_evaluate``: the one place training happens.

Data parallelism is ``jax.shard_map`` under ``jax.jit`` over a 1-D mesh with axis ``'data'``:
every device holds the replicated train state and dataset, takes its slice of each global batch,
and gradients are averaged with ``pmean``. The global batch composition depends only on the seed
and the epoch, so 1 device and N devices follow the same trajectory up to float summation order.
A whole epoch (all steps) is one jitted call: the dataset lives on the device.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from absl import logging
from jax.sharding import PartitionSpec as P

from lclmt_jax import checkpoints, configs, data, inflation, input_pipeline, models, writers

Array = jax.Array
DATA_AXIS = 'data'


class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training; a pytree so it can be jitted and checkpointed."""

    step: Array
    params: Any
    model_state: Any  # non-parameter collections, e.g. {'lipschitz': power-iteration vectors}
    opt_state: Any


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or Inf loss; the last good checkpoint is kept."""


def make_mesh(devices: list | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh over all (or the given) devices, whose single axis carries the data batch."""
    devices = jax.devices() if devices is None else devices
    return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> optax.GradientTransformation:
    """The optax optimizer, learning-rate schedule, weight decay and clipping named by the config.

    ``config.grad_clip_norm`` (None: off) clips the loss gradient's global norm before the weight
    decay is added, so the decay is never scaled down with it (see ``configs.svhn_variant``).
    """
    total_steps = max(1, config.num_epochs * steps_per_epoch)
    if config.schedule == 'cosine':
        learning_rate = optax.cosine_decay_schedule(config.learning_rate, total_steps)
    elif config.schedule == 'step':
        learning_rate = optax.piecewise_constant_schedule(
            config.learning_rate, {total_steps // 2: 0.1, (3 * total_steps) // 4: 0.1})
    else:
        learning_rate = config.learning_rate
    if config.optimizer == 'sgd':
        optimizer = optax.sgd(learning_rate, momentum=0.9, nesterov=True)
    else:
        optimizer = optax.adam(learning_rate)
    stages = []
    clip = config.get('grad_clip_norm', None)
    if clip is not None:  # on the loss gradient alone, before weight decay is added
        stages.append(optax.clip_by_global_norm(clip))
    if config.weight_decay:
        stages.append(optax.add_decayed_weights(config.weight_decay))
    return optax.chain(*stages, optimizer) if stages else optimizer


def epsilon_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The radius the loss inflates for at each step: ``config.epsilon`` after a linear warm-up.

    ``config.epsilon_warmup_epochs`` > 0 ramps epsilon from 0 over that many epochs (the LMT
    reference code's schedule for its SVHN runs). Early in training the layer-wise bound L of a
    deep network is orders of magnitude above its true Lipschitz constant, so even a small
    sqrt(2)·L·eps makes the gradient through L dominate before any feature is learned, and the
    network collapses to constant outputs (see ``configs.svhn_variant``); the warm-up lets it
    learn first. Certification and the ``bound_met`` metrics always use the full epsilon.
    """
    warmup_steps = round(config.get('epsilon_warmup_epochs', 0) * steps_per_epoch)
    if warmup_steps <= 0:
        return optax.constant_schedule(config.epsilon)
    return optax.linear_schedule(0.0, config.epsilon, warmup_steps)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: Array,
                       input_shape: tuple[int, ...]) -> TrainState:
    """Initial parameters, power-iteration vectors and optimizer state."""
    variables = dict(models.init_variables(model, rng, input_shape))
    params = variables.pop('params')
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                      opt_state=tx.init(params))


class StepResult(NamedTuple):
    loss: Array
    logits: Array
    lipschitz: Array
    model_state: Any


def inflated_loss(model: nn.Module, inflate: inflation.Inflation, epsilon: float | Array,
                  params: Any, model_state: Any, images: Array,
                  labels: Array) -> tuple[Array, StepResult]:
    """Softmax cross-entropy on inflated logits, with one power-iteration step of the bound.

    The gradient flows through the Lipschitz estimate too, so training also shrinks L.
    """
    output, new_model_state = model.apply(
        {'params': params, **model_state}, images, train=True, mutable=list(model_state))
    margin = inflation.required_margin(output.lipschitz, epsilon)
    logits = inflate(output.logits, labels, margin)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, StepResult(loss, output.logits, output.lipschitz, new_model_state)


class EpochMetrics(NamedTuple):
    loss_sum: Array  # sum over steps of the global-batch mean loss
    correct: Array
    margin_sum: Array  # sum over steps of the global-batch mean margin f_t - max_{i!=t} f_i
    required_margin_sum: Array  # sum over steps of sqrt(2)·L·eps (L: that step's estimate)
    steps: Array
    first_bad_step: Array  # -1, or the first step of the epoch whose loss was not finite


class StepMetrics(NamedTuple):
    loss: Array  # global-batch means ...
    margin: Array
    required_margin: Array
    correct: Array  # ... and the global count of correct predictions


def empty_epoch_metrics() -> EpochMetrics:
    zero, zero_f = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32)
    return EpochMetrics(zero_f, zero, zero_f, zero_f, zero, -jnp.ones((), jnp.int32))


def accumulate(metrics: EpochMetrics, step: StepMetrics) -> EpochMetrics:
    """Adds one step's global metrics; remembers the first step whose loss was not finite."""
    bad = (metrics.first_bad_step < 0) & ~jnp.isfinite(step.loss)
    return EpochMetrics(metrics.loss_sum + step.loss, metrics.correct + step.correct,
                        metrics.margin_sum + step.margin,
                        metrics.required_margin_sum + step.required_margin, metrics.steps + 1,
                        jnp.where(bad, metrics.steps, metrics.first_bad_step))


def make_device_step(model: nn.Module, tx: optax.GradientTransformation,
                     config: ml_collections.ConfigDict, steps_per_epoch: int) -> Callable:
    """The per-device train step, to run inside ``shard_map`` over the ``data`` axis.

    ``(state, uint8 images, labels) -> (state, StepMetrics)``; the gradients of the local batch
    means are ``pmean``-ed, which is the global batch gradient. ``steps_per_epoch`` converts the
    epsilon warm-up (``epsilon_schedule``) into steps.
    """
    inflate = inflation.get_inflation(config.method)
    epsilon_at = epsilon_schedule(config, steps_per_epoch)

    def device_step(state: TrainState, images: Array, labels: Array):
        loss_fn = functools.partial(inflated_loss, model, inflate, epsilon_at(state.step))
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, result), grads = grad_fn(state.params, state.model_state, data.to_float(images),
                                     labels)
        grads = jax.lax.pmean(grads, DATA_AXIS)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        model_state = jax.lax.pmean(result.model_state, DATA_AXIS)
        new_state = TrainState(state.step + 1, params, model_state, opt_state)
        margins = inflation.margin(result.logits, labels)
        metrics = StepMetrics(
            loss=jax.lax.pmean(result.loss, DATA_AXIS),
            margin=jax.lax.pmean(jnp.mean(margins), DATA_AXIS),
            required_margin=inflation.required_margin(result.lipschitz, config.epsilon),
            correct=jax.lax.psum(jnp.sum(margins > 0), DATA_AXIS))
        return new_state, metrics

    return device_step


def _local_rows(order: Array, start: Array, global_batch: int) -> Array:
    """Row indices of this device's share of the global batch ``order[start:start + batch]``."""
    local_batch = global_batch // jax.lax.axis_size(DATA_AXIS)
    offset = start + jax.lax.axis_index(DATA_AXIS) * local_batch
    return jax.lax.dynamic_slice_in_dim(order, offset, local_batch)


def make_train_epoch(model: nn.Module, tx: optax.GradientTransformation,
                     config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                     num_examples: int) -> Callable:
    """Device pipeline: ``train_epoch(state, images, labels, key) -> (state, EpochMetrics)``.

    One jit call per epoch. ``images``/``labels`` are the whole (replicated, on-device) train set;
    ``key`` decides the epoch's example order. Incomplete last batches are dropped.
    """
    batch = config.batch_size
    device_step = make_device_step(model, tx, config, num_examples // batch)

    def epoch_on_device(state: TrainState, images: Array, labels: Array, key: Array):
        order = jax.random.permutation(key, num_examples)

        def body(carry, step_index):
            state, metrics = carry
            rows = _local_rows(order, step_index * batch, batch)
            state, step_metrics = device_step(state, images[rows], labels[rows])
            return (state, accumulate(metrics, step_metrics)), None

        init = (state, empty_epoch_metrics())
        (state, metrics), _ = jax.lax.scan(body, init, jnp.arange(num_examples // batch))
        return state, metrics

    sharded = jax.shard_map(epoch_on_device, mesh=mesh, in_specs=(P(), P(), P(), P()),
                            out_specs=(P(), P()), check_vma=False)
    return jax.jit(sharded, donate_argnums=(0,))


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                    steps_per_epoch: int) -> Callable:
    """Host pipeline: ``train_step(state, metrics, images, labels) -> (state, metrics)``.

    ``images``/``labels`` are one global batch sharded over the ``data`` axis.
    """
    device_step = make_device_step(model, tx, config, steps_per_epoch)

    def step(state: TrainState, metrics: EpochMetrics, images: Array, labels: Array):
        state, step_metrics = device_step(state, images, labels)
        return state, accumulate(metrics, step_metrics)

    sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(), P(DATA_AXIS), P(DATA_AXIS)),
                            out_specs=(P(), P()), check_vma=False)
    return jax.jit(sharded, donate_argnums=(0, 1))


def host_train_epoch(train_step: Callable, mesh: jax.sharding.Mesh, state: TrainState,
                     images: np.ndarray, labels: np.ndarray, order: np.ndarray,
                     global_batch: int) -> tuple[TrainState, EpochMetrics]:
    """Runs one epoch of the host pipeline: prefetched process-local batches, one step each."""
    metrics = input_pipeline.replicate(mesh, empty_epoch_metrics())
    batches = input_pipeline.process_local_batches(images, labels, order, global_batch)
    for local in input_pipeline.prefetch(batches):
        state, metrics = train_step(state, metrics, *input_pipeline.to_global_batch(mesh, local))
    return state, metrics


class EvalSums(NamedTuple):
    correct: Array
    margin_sum: Array
    bound_met: Array
    count: Array


def make_device_eval(model: nn.Module, config: ml_collections.ConfigDict) -> Callable:
    """Per-device evaluation of a local batch, summed over the ``data`` axis.

    A point "meets the bound" when its margin >= sqrt(2)·L·eps with L the *training estimate*: a
    progress signal, not a certificate (see ``lclmt_jax.certify``).
    """

    def device_eval(state: TrainState, images: Array, labels: Array, valid: Array):
        output = model.apply({'params': state.params, **state.model_state},
                             data.to_float(images), train=False)
        margins = inflation.margin(output.logits, labels)
        required = inflation.required_margin(output.lipschitz, config.epsilon)
        local = EvalSums(jnp.sum(valid & (margins > 0)), jnp.sum(jnp.where(valid, margins, 0.)),
                         jnp.sum(valid & (margins >= required) & (margins > 0)), jnp.sum(valid))
        return jax.lax.psum(local, DATA_AXIS), output.lipschitz

    return device_eval


def make_evaluate(model: nn.Module, config: ml_collections.ConfigDict,
                  mesh: jax.sharding.Mesh) -> Callable:
    """Device pipeline: ``evaluate(state, images, labels, valid) -> (EvalSums, L estimate)``.

    ``images`` (replicated) are padded to a multiple of ``eval_batch_size``; ``valid`` masks the
    padding.
    """
    device_eval = make_device_eval(model, config)
    batch = config.eval_batch_size

    def evaluate_on_device(state: TrainState, images: Array, labels: Array, valid: Array):
        def body(sums, batch_index):
            rows = _local_rows(jnp.arange(images.shape[0]), batch_index * batch, batch)
            local, lipschitz = device_eval(state, images[rows], labels[rows], valid[rows])
            return jax.tree.map(jnp.add, sums, local), lipschitz

        zeros = EvalSums(*(jnp.zeros((), dtype) for dtype in
                           (jnp.int32, jnp.float32, jnp.int32, jnp.int32)))
        sums, lipschitz = jax.lax.scan(body, zeros, jnp.arange(images.shape[0] // batch))
        return sums, lipschitz[-1]

    sharded = jax.shard_map(evaluate_on_device, mesh=mesh, in_specs=(P(), P(), P(), P()),
                            out_specs=(P(), P()), check_vma=False)
    return jax.jit(sharded)


def make_host_evaluate(model: nn.Module, config: ml_collections.ConfigDict,
                       mesh: jax.sharding.Mesh) -> Callable:
    """Host pipeline: the same sums over padded host arrays, one sharded eval batch per call."""
    sharded = jax.jit(jax.shard_map(
        make_device_eval(model, config), mesh=mesh,
        in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS)), out_specs=(P(), P()),
        check_vma=False))
    batch = config.eval_batch_size

    def evaluate(state: TrainState, images: np.ndarray, labels: np.ndarray, valid: np.ndarray):
        order = np.arange(len(labels))
        batches = input_pipeline.process_local_batches(
            images, np.stack([labels, valid.astype(labels.dtype)], axis=1), order, batch)
        sums = None
        for local_images, local_labels in input_pipeline.prefetch(batches):
            arrays = input_pipeline.to_global_batch(
                mesh, (local_images, local_labels[:, 0], local_labels[:, 1].astype(bool)))
            local, lipschitz = sharded(state, *arrays)
            sums = local if sums is None else jax.tree.map(jnp.add, sums, local)
        return sums, lipschitz

    return evaluate


def pad_to_multiple(images: np.ndarray, labels: np.ndarray,
                    multiple: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pads examples to a multiple of ``multiple``; returns (images, labels, valid mask)."""
    total = math.ceil(len(images) / multiple) * multiple
    pad = total - len(images)
    valid = np.concatenate([np.ones(len(images), bool), np.zeros(pad, bool)])
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    return images, labels, valid


def epoch_scalars(metrics: EpochMetrics, sums: EvalSums, lipschitz: Array,
                  config: ml_collections.ConfigDict) -> dict[str, float]:
    """The per-epoch scalars written to metrics.jsonl and TensorBoard."""
    count = float(sums.count)
    steps = max(1, int(metrics.steps))
    return {
        'train_loss': float(metrics.loss_sum) / steps,
        'train_accuracy': float(metrics.correct) / (steps * config.batch_size),
        'train_margin': float(metrics.margin_sum) / steps,
        'train_required_margin': float(metrics.required_margin_sum) / steps,
        'test_accuracy': float(sums.correct) / count,
        'lipschitz': float(lipschitz),
        'test_margin': float(sums.margin_sum) / count,
        'required_margin': float(inflation.required_margin(lipschitz, config.epsilon)),
        'test_bound_met': float(sums.bound_met) / count,
    }


def make_pipeline(config: ml_collections.ConfigDict, dataset: data.Dataset, model: nn.Module,
                  tx: optax.GradientTransformation, mesh: jax.sharding.Mesh):
    """Returns ``(train_epoch(state, epoch), evaluate(state))`` for the configured pipeline.

    Both pipelines draw the same global batches (``input_pipeline``), so they train alike.
    """
    num_train = len(dataset.train_labels)
    test = pad_to_multiple(dataset.test_images, dataset.test_labels, config.eval_batch_size)
    dataset_bytes = dataset.train_images.nbytes + test[0].nbytes
    if input_pipeline.choose_pipeline(config.data.pipeline, dataset_bytes) == 'device':
        train_arrays = input_pipeline.replicate(mesh, (dataset.train_images, dataset.train_labels))
        test = input_pipeline.replicate(mesh, test)
        device_epoch = make_train_epoch(model, tx, config, mesh, num_train)
        device_evaluate = make_evaluate(model, config, mesh)
        return (lambda state, epoch: device_epoch(
                    state, *train_arrays, input_pipeline.epoch_key(config.seed, epoch)),
                lambda state: device_evaluate(state, *test))
    train_step = make_train_step(model, tx, config, mesh, num_train // config.batch_size)
    host_evaluate = make_host_evaluate(model, config, mesh)
    return (lambda state, epoch: host_train_epoch(
                train_step, mesh, state, dataset.train_images, dataset.train_labels,
                input_pipeline.epoch_order(config.seed, epoch, num_train), config.batch_size),
            lambda state: host_evaluate(state, *test))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains ``config`` in ``workdir``: metrics per epoch, checkpoints, resume if interrupted."""
    configs.validate_config(config)
    dataset = data.load_dataset(config.data)
    mesh = make_mesh()
    model = models.create_model(config, dataset.num_classes)
    num_train = len(dataset.train_labels)
    if num_train < config.batch_size:
        raise ValueError(f'batch_size={config.batch_size} exceeds the {num_train} train examples')
    steps_per_epoch = num_train // config.batch_size
    tx = create_optimizer(config, steps_per_epoch)
    state = create_train_state(model, tx, jax.random.key(config.seed),
                               dataset.train_images.shape[1:])

    manager = checkpoints.checkpoint_manager(workdir)
    state, start_epoch = checkpoints.restore_latest(manager, input_pipeline.replicate(mesh, state))
    if start_epoch:
        logging.warning('resuming from the checkpoint of epoch %d', start_epoch)
    writers.save_config(config, workdir)
    writers.save_run_info(workdir, {'dataset': dataset.name, 'num_classes': dataset.num_classes,
                                    'input_shape': list(dataset.train_images.shape[1:])})
    writers.truncate_metrics(workdir, start_epoch)
    writer = writers.MetricWriter(workdir)
    train_epoch, evaluate = make_pipeline(config, dataset, model, tx, mesh)
    epsilon_at = epsilon_schedule(config, steps_per_epoch)

    durations = []
    progress = tqdm.tqdm(total=config.num_epochs, initial=start_epoch, unit='epoch', leave=False,
                         disable=None if jax.process_index() == 0 else True)
    for epoch in range(start_epoch + 1, config.num_epochs + 1):
        started = time.perf_counter()
        new_state, metrics = train_epoch(state, epoch)
        sums, lipschitz = evaluate(new_state)
        scalars = epoch_scalars(metrics, sums, lipschitz, config)
        if int(metrics.first_bad_step) >= 0 or not np.isfinite(scalars['train_loss']):
            raise NonFiniteLossError(
                f'non-finite loss at epoch {epoch}, step {int(metrics.first_bad_step) + 1} of the '
                f'epoch; the checkpoint of epoch {manager.latest_step() or 0} is kept')
        state = new_state
        durations.append(time.perf_counter() - started)
        scalars['epoch_seconds'] = durations[-1]
        # the loss's epsilon at the epoch's end (every epoch runs steps_per_epoch steps)
        scalars['train_epsilon'] = float(epsilon_at(epoch * steps_per_epoch))
        writer.write(epoch, scalars)
        eta = float(np.median(durations)) * (config.num_epochs - epoch)
        if jax.process_index() == 0:
            tqdm.tqdm.write(writers.progress_line(epoch, config.num_epochs, scalars, eta))
        progress.update(1)
        if epoch % config.checkpoint_every_epochs == 0 or epoch == config.num_epochs:
            checkpoints.save(manager, epoch, state)
    progress.close()
    writer.close()
    manager.close()
    return state
