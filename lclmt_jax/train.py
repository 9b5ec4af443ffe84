"""The train step, the epoch loop and ``train_and_evaluate``: the one place training happens.

Data parallelism is ``jax.jit`` over a 1-D device mesh with axis ``'data'``: the train state is
replicated, every global batch is sharded over the axis (``NamedSharding``), and the step is
written for the whole global batch -- XLA's partitioner inserts the cross-device gradient and
batch-norm sums. The global batch composition depends only on the seed and the epoch, so 1
device and N devices follow the same trajectory up to float summation order. With the
``device`` input pipeline a whole epoch is one jitted ``lax.scan`` over the steps (the dataset
lives on the devices); with ``host`` each step is one jitted call on a prefetched batch.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any, ClassVar

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics as clu_metrics
from flax.training import train_state
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lclmt_jax import (
    certify,
    checkpoints,
    data,
    input_pipeline,
    losses,
    margins,
    models,
    optimizers,
    run_files,
    validation,
    writers,
)

Array = jax.Array
DATA_AXIS = 'data'


class TrainState(train_state.TrainState):
    """flax's train state plus the model's non-parameter collections.

    ``model_state`` holds e.g. ``{'lipschitz': power-iteration vectors, 'batch_stats': ...}``.
    """

    model_state: Any


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or Inf loss; the last good checkpoint is kept."""


@flax.struct.dataclass
class FirstNonFiniteStep(clu_metrics.Metric):
    """The first step (0-based, in merge order) whose loss was not finite; -1 if none was."""

    steps: Array
    first: Array

    @classmethod
    def empty(cls) -> FirstNonFiniteStep:
        return cls(steps=jnp.zeros((), jnp.int32), first=-jnp.ones((), jnp.int32))

    @classmethod
    def from_model_output(cls, *, loss: Array, **_) -> FirstNonFiniteStep:
        return cls(steps=jnp.ones((), jnp.int32),
                   first=jnp.where(jnp.isfinite(loss), -1, 0).astype(jnp.int32))

    def merge(self, other: FirstNonFiniteStep) -> FirstNonFiniteStep:
        later = jnp.where(other.first >= 0, self.steps + other.first, -1)
        return type(self)(steps=self.steps + other.steps,
                          first=jnp.where(self.first >= 0, self.first, later))

    def compute(self) -> Array:
        return self.first


@flax.struct.dataclass
class MedianMargin(clu_metrics.Metric):
    """The median margin of an epoch's examples, from a histogram merged step by step.

    Bins are uniform in asinh(margin) over [-10, 10] (|margin| up to 1.1e4): 0.005 wide, so the
    median is exact to ~0.5% of its size (0.005 near 0), without keeping every margin.
    """

    counts: Array

    BINS: ClassVar[int] = 4000
    LIMIT: ClassVar[float] = 10.0

    @classmethod
    def empty(cls) -> MedianMargin:
        return cls(counts=jnp.zeros((cls.BINS,), jnp.int32))

    @classmethod
    def from_model_output(cls, *, margin: Array, **_) -> MedianMargin:
        position = (jnp.arcsinh(margin) + cls.LIMIT) / (2 * cls.LIMIT) * cls.BINS
        index = jnp.clip(position.astype(jnp.int32), 0, cls.BINS - 1)
        return cls(counts=jnp.bincount(index, length=cls.BINS).astype(jnp.int32))

    def merge(self, other: MedianMargin) -> MedianMargin:
        return type(self)(counts=self.counts + other.counts)

    def compute(self) -> np.ndarray:
        """The median, on the host in numpy: a few thousand numbers, once per epoch."""
        counts = np.asarray(jax.device_get(self.counts), np.int64)
        cumulative = np.cumsum(counts)
        half = cumulative[-1] / 2
        index = int(np.searchsorted(cumulative, half))
        before = cumulative[index - 1] if index > 0 else 0
        fraction = (half - before) / max(int(counts[index]), 1)
        position = (index + fraction) / self.BINS * 2 * self.LIMIT - self.LIMIT
        return np.sinh(position)


# Per-epoch training metrics: means over the epoch's examples (the loss: over its steps), the
# margin's mean over the correctly classified examples and its median (the definitions of
# "the mean margin meets the required one" that docs/REPRODUCTION.md compares).
TrainMetrics = clu_metrics.Collection.create(
    loss=clu_metrics.Average.from_output('loss'),
    accuracy=clu_metrics.Average.from_output('correct'),
    accuracy_inflated=clu_metrics.Average.from_output('inflated_correct'),
    margin=clu_metrics.Average.from_output('margin'),
    margin_correct=clu_metrics.Average.from_fun(
        lambda margin, correct, **_: {'values': margin, 'mask': correct}),
    margin_median=MedianMargin,
    required_margin=clu_metrics.Average.from_output('required_margin'),
    first_non_finite_step=FirstNonFiniteStep)

# Test-set metrics over the valid (unpadded) examples.
EvalMetrics = clu_metrics.Collection.create(
    accuracy=clu_metrics.Average.from_output('correct'),
    margin=clu_metrics.Average.from_output('margin'),
    required_margin=clu_metrics.Average.from_output('required_margin'),
    bound_met=clu_metrics.Average.from_output('bound_met'))


def make_mesh(devices: list | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh over all (or the given) devices, whose single axis carries the data batch."""
    devices = jax.devices() if devices is None else devices
    return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """The sharding of values every device holds whole (state, metrics, on-device datasets)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    """The sharding of a global batch: split along its first axis over the ``data`` axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: Array,
                       input_shape: tuple[int, ...]) -> TrainState:
    """Initial parameters, power-iteration vectors, BN statistics and optimizer state."""
    variables = dict(models.init_variables(model, rng, input_shape))
    params = variables.pop('params')
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx, model_state=variables)
    return state.replace(step=jnp.zeros((), jnp.int32))


def binding_metrics(method: losses.Method, output: models.ModelOutput, labels: Array,
                    epsilon: float) -> dict[str, Array]:
    """Per-example margin, required margin and correctness for the condition ``method`` trains
    for (``margins.binding_margin``), at the full ``epsilon``."""
    gaps = losses.required_gaps(method, output, labels, epsilon)
    margin, required = margins.binding_margin(output.logits, labels, gaps)
    correct = margins.margin(output.logits, labels) > 0
    return {'margin': margin, 'required_margin': required, 'correct': correct,
            'bound_met': correct & (margin >= required)}


def make_train_step(model: nn.Module, config: ml_collections.ConfigDict,
                    steps_per_epoch: int) -> Callable:
    """``train_step(state, uint8 images, labels) -> (state, TrainMetrics)`` on one global batch.

    The loss's epsilon follows ``losses.epsilon_schedule`` of the state's step; the margin
    metrics use the full epsilon. ``inflated_correct`` is the accuracy of the inflated logits
    at the loss's epsilon: the "training accuracy" of the LMT reference code (its Chainer
    classifier scores the output it trains on), the fraction of points whose margin beats the
    inflation.
    """
    method = losses.METHODS.get(config.method)
    epsilon_at = losses.epsilon_schedule(config, steps_per_epoch)
    trades_lambda = float(config.get('trades_lambda', 0.0))

    def train_step(state: TrainState, images: Array, labels: Array):
        epsilon = epsilon_at(state.step)

        def loss_fn(params):
            output, model_state = model.apply(
                {'params': params, **state.model_state}, data.to_float(images), train=True,
                mutable=list(state.model_state))
            loss = losses.method_loss(method, output, labels, epsilon, trades_lambda)
            return loss, (output, model_state)

        (loss, (output, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        state = state.apply_gradients(grads=grads, model_state=model_state)
        metrics = binding_metrics(method, output, labels, config.epsilon)
        del metrics['bound_met']
        inflated = losses.inflated_logits(method, output, labels, epsilon)
        metrics['inflated_correct'] = jnp.argmax(inflated, axis=-1) == labels
        return state, TrainMetrics.single_from_model_output(loss=loss, **metrics)

    return train_step


def make_train_epoch(model: nn.Module, config: ml_collections.ConfigDict,
                     mesh: jax.sharding.Mesh, num_examples: int) -> Callable:
    """Device pipeline: ``train_epoch(state, images, labels, key) -> (state, TrainMetrics)``.

    One jitted ``lax.scan`` over the epoch's steps. ``images``/``labels`` are the whole
    replicated train set; ``key`` decides the epoch's example order; each step takes the rows
    ``order[k·B:(k+1)·B]``, sharded over the devices. Incomplete last batches are dropped. Its
    inputs keep their shapes, dtypes and shardings from epoch to epoch, so it compiles once per
    run (tests/test_train.py checks this with ``chex.assert_max_traces``).
    """
    batch = config.batch_size
    steps = num_examples // batch
    train_step = make_train_step(model, config, steps)

    def train_epoch(state: TrainState, images: Array, labels: Array, key: Array):
        order = jax.random.permutation(key, num_examples)

        def body(carry, step_index):
            state, metrics = carry
            rows = jax.lax.dynamic_slice_in_dim(order, step_index * batch, batch)
            rows = jax.lax.with_sharding_constraint(rows, batch_sharded(mesh))
            state, step_metrics = train_step(state, images[rows], labels[rows])
            return (state, metrics.merge(step_metrics)), None

        (state, metrics), _ = jax.lax.scan(body, (state, TrainMetrics.empty()),
                                           jnp.arange(steps))
        return state, metrics

    return jax.jit(train_epoch, out_shardings=replicated(mesh), donate_argnums=(0,))


def make_jitted_train_step(model: nn.Module, config: ml_collections.ConfigDict,
                           mesh: jax.sharding.Mesh, steps_per_epoch: int) -> Callable:
    """``step(state, metrics, images, labels) -> (state, metrics + the step's)``, jitted.

    ``images``/``labels`` are one global batch sharded over the mesh (``input_pipeline``); the
    state and metrics stay replicated and are donated.
    """
    train_step = make_train_step(model, config, steps_per_epoch)

    def step_and_accumulate(state, metrics, images, labels):
        state, step_metrics = train_step(state, images, labels)
        return state, metrics.merge(step_metrics)

    return jax.jit(step_and_accumulate, out_shardings=replicated(mesh), donate_argnums=(0, 1))


def make_host_train_epoch(model: nn.Module, config: ml_collections.ConfigDict,
                          mesh: jax.sharding.Mesh, steps_per_epoch: int) -> Callable:
    """Host pipeline: ``train_epoch(state, images, labels, order) -> (state, TrainMetrics)``.

    Each step is one jitted call on a prefetched global batch that every process assembles from
    its own rows (``input_pipeline``).
    """
    step = make_jitted_train_step(model, config, mesh, steps_per_epoch)

    def train_epoch(state, images, labels, order):
        metrics = jax.device_put(TrainMetrics.empty(), replicated(mesh))
        batches = input_pipeline.process_local_batches(images, labels, order, config.batch_size)
        for local in input_pipeline.prefetch(batches):
            state, metrics = step(state, metrics, *input_pipeline.to_global_batch(mesh, local))
        return state, metrics

    return train_epoch


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
        metrics = binding_metrics(method, output, labels, config.epsilon)
        return EvalMetrics.single_from_model_output(mask=valid, **metrics)

    return eval_step


def lipschitz_estimate(model: nn.Module, state: TrainState, input_shape: tuple[int, ...]) -> Array:
    """The training estimate of L in eval mode (what ``test_bound_met`` and the logs use)."""
    output = model.apply({'params': state.params, **state.model_state},
                         jnp.zeros((1, *input_shape), jnp.float32), train=False)
    return output.lipschitz


def make_evaluate(model: nn.Module, config: ml_collections.ConfigDict,
                  mesh: jax.sharding.Mesh) -> Callable:
    """Device pipeline: ``evaluate(state, images, labels, valid) -> (EvalMetrics, L estimate)``.

    ``images`` (replicated) are padded to a multiple of ``eval_batch_size``; ``valid`` masks the
    padding. One jitted ``lax.scan`` over the batches.
    """
    eval_step = make_eval_step(model, config)
    batch = config.eval_batch_size

    def evaluate(state, images, labels, valid):
        def body(metrics, batch_index):
            rows = jax.lax.dynamic_slice_in_dim(jnp.arange(images.shape[0]), batch_index * batch,
                                                batch)
            rows = jax.lax.with_sharding_constraint(rows, batch_sharded(mesh))
            return metrics.merge(eval_step(state, images[rows], labels[rows], valid[rows])), None

        metrics, _ = jax.lax.scan(body, EvalMetrics.empty(), jnp.arange(images.shape[0] // batch))
        return metrics, lipschitz_estimate(model, state, images.shape[1:])

    return jax.jit(evaluate, out_shardings=replicated(mesh))


def make_host_evaluate(model: nn.Module, config: ml_collections.ConfigDict,
                       mesh: jax.sharding.Mesh) -> Callable:
    """Host pipeline: the same metrics over padded host arrays, one sharded batch per call."""
    eval_step = make_eval_step(model, config)

    def eval_and_accumulate(state, metrics, images, labels, valid):
        return metrics.merge(eval_step(state, images, labels, valid))

    step = jax.jit(eval_and_accumulate, out_shardings=replicated(mesh))
    estimate = jax.jit(lipschitz_estimate, static_argnums=(0, 2), out_shardings=replicated(mesh))

    def evaluate(state, images, labels, valid):
        metrics = jax.device_put(EvalMetrics.empty(), replicated(mesh))
        batches = input_pipeline.process_local_batches(
            images, np.stack([labels, valid.astype(labels.dtype)], axis=1),
            np.arange(len(labels)), config.eval_batch_size)
        for local_images, local_labels in input_pipeline.prefetch(batches):
            arrays = input_pipeline.to_global_batch(
                mesh, (local_images, local_labels[:, 0], local_labels[:, 1].astype(bool)))
            metrics = step(state, metrics, *arrays)
        return metrics, estimate(model, state, images.shape[1:])

    return evaluate


def pad_to_multiple(images: np.ndarray, labels: np.ndarray,
                    multiple: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pads examples to a multiple of ``multiple``; returns (images, labels, valid mask)."""
    total = -(-len(images) // multiple) * multiple
    pad = total - len(images)
    valid = np.concatenate([np.ones(len(images), bool), np.zeros(pad, bool)])
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    return images, labels, valid


def epoch_scalars(train_metrics: clu_metrics.Collection, eval_metrics: clu_metrics.Collection,
                  lipschitz: Array) -> dict[str, float]:
    """The per-epoch scalars written to metrics.jsonl and TensorBoard."""
    train = {name: float(value) for name, value in train_metrics.compute().items()}
    test = {name: float(value) for name, value in eval_metrics.compute().items()}
    return {
        'train_loss': train['loss'],
        'train_accuracy': train['accuracy'],
        'train_accuracy_inflated': train['accuracy_inflated'],
        'train_margin': train['margin'],
        'train_margin_correct': train['margin_correct'],
        'train_margin_median': train['margin_median'],
        'train_required_margin': train['required_margin'],
        'test_accuracy': test['accuracy'],
        'lipschitz': float(lipschitz),
        'test_margin': test['margin'],
        'required_margin': test['required_margin'],
        'test_bound_met': test['bound_met'],
    }


def make_reconverge(model: nn.Module, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                    images: np.ndarray) -> Callable | None:
    """``reconverge(state) -> state`` with every power-iteration vector advanced
    ``config.bound.reconverge_steps`` times (on a fixed batch, for the BN statistics of folded
    conv bounds; BN running averages untouched), or None when that is 0.

    Run at the start of each epoch, it lets the training estimate catch up with weights that
    moved faster than one iteration per step could follow.
    """
    steps = int(config.get('bound', {}).get('reconverge_steps', 0))
    if not steps:
        return None
    converger = model.clone(estimator=model.estimator._replace(power_iterations=steps))
    batch = input_pipeline.replicate(mesh, images[:config.batch_size])

    @functools.partial(jax.jit, out_shardings=replicated(mesh), donate_argnums=(0,))
    def reconverge(state: TrainState, batch: Array) -> TrainState:
        _, vectors = converger.apply({'params': state.params, **state.model_state},
                                     data.to_float(batch), train=True, mutable=['lipschitz'])
        return state.replace(model_state={**state.model_state, **vectors})

    return lambda state: reconverge(state, batch)


def sound_scalars(model: nn.Module, state: TrainState, input_shape: tuple[int, ...],
                  lipschitz: Array, epsilon: float) -> dict[str, float]:
    """The sound L (host, float64; ``certify``), its ratio to the training estimate (how far the
    loss's bound lags the one the certificate will use: 1 means it tracks it exactly) and the
    global required margin sqrt(2)·L·eps with the sound L."""
    variables = jax.device_get({'params': state.params, **state.model_state})
    sound = certify.sound_bounds(model, variables, input_shape).lipschitz
    return {'lipschitz_sound': sound, 'sound_over_training': sound / float(lipschitz),
            'required_margin_sound': float(margins.global_required_margin(sound, epsilon))}


def make_pipeline(config: ml_collections.ConfigDict, dataset: data.Dataset, model: nn.Module,
                  mesh: jax.sharding.Mesh, params: Any) -> tuple[Callable, Callable]:
    """Returns ``(train_epoch(state, epoch), evaluate(state))`` for the configured pipeline.

    Both pipelines draw the same global batches (``input_pipeline``), so they train alike.
    ``params`` tell whether the network convolves (4-D kernels), which ``auto`` weighs.
    """
    num_train = len(dataset.train_labels)
    test = pad_to_multiple(dataset.test_images, dataset.test_labels, config.eval_batch_size)
    dataset_bytes = dataset.train_images.nbytes + test[0].nbytes
    convolves = any(leaf.ndim == 4 for leaf in jax.tree.leaves(params))
    if input_pipeline.choose_pipeline(config.data.pipeline, dataset_bytes, convolves) == 'device':
        train_arrays = input_pipeline.replicate(mesh, (dataset.train_images, dataset.train_labels))
        test = input_pipeline.replicate(mesh, test)
        device_epoch = make_train_epoch(model, config, mesh, num_train)
        device_evaluate = make_evaluate(model, config, mesh)
        return (lambda state, epoch: device_epoch(
                    state, *train_arrays, input_pipeline.epoch_key(config.seed, epoch)),
                lambda state: device_evaluate(state, *test))
    host_epoch = make_host_train_epoch(model, config, mesh, num_train // config.batch_size)
    host_evaluate = make_host_evaluate(model, config, mesh)
    return (lambda state, epoch: host_epoch(
                state, dataset.train_images, dataset.train_labels,
                input_pipeline.epoch_order(config.seed, epoch, num_train)),
            lambda state: host_evaluate(state, *test))


# Fields that may change between invocations on one workdir without invalidating its training:
# how long it trains (it resumes), how often it checkpoints, where the data files are, how it is
# evaluated.
NOT_TRAINING_FIELDS = ('num_epochs', 'checkpoint_every_epochs', 'eval_batch_size', 'certificate',
                       'evaluators', 'evaluation', 'attack', 'data.path', 'data.manual_dir',
                       'data.data_dir', 'data.pipeline')


def check_same_training(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses to resume a workdir whose run was trained with other training fields.

    Compares the workdir's ``config.json`` with ``config``, field by field; a field only one of
    them has was added to (or dropped from) the code in between and does not count.
    """
    path = os.path.join(workdir, run_files.CONFIG_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = flax.traverse_util.flatten_dict(json.load(f), sep='.')
    new = flax.traverse_util.flatten_dict(run_files.config_as_dict(config), sep='.')
    changed = sorted(key for key in old.keys() & new.keys() if old[key] != new[key] and not any(
        key == field or key.startswith(f'{field}.') for field in NOT_TRAINING_FIELDS))
    if changed:
        key = changed[0]
        raise ValueError(f'{workdir} was trained with {key}={old[key]!r}, the config now says '
                         f'{new[key]!r}; use another --workdir or delete that run')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains ``config`` in ``workdir``: metrics per epoch, checkpoints, resume if interrupted."""
    validation.validate_config(config)
    check_same_training(workdir, config)
    dataset = data.load_dataset(config.data)
    num_train = len(dataset.train_labels)
    if num_train < config.batch_size:
        raise ValueError(f'batch_size={config.batch_size} exceeds the {num_train} train examples')
    mesh = make_mesh()
    model = models.create_model(config, dataset.num_classes)
    steps_per_epoch = num_train // config.batch_size
    tx = optimizers.create_optimizer(config, steps_per_epoch)
    input_shape = dataset.train_images.shape[1:]
    state = create_train_state(model, tx, jax.random.key(config.seed), input_shape)

    manager = checkpoints.checkpoint_manager(workdir)
    state, start_epoch = checkpoints.restore_train_state(
        manager, input_pipeline.replicate(mesh, state))
    if start_epoch:
        checkpoints.say(f'resuming from the checkpoint of epoch {start_epoch}')
    config_dict = run_files.config_as_dict(config)
    run_info = {'dataset': dataset.name, 'num_classes': dataset.num_classes,
                'input_shape': list(input_shape)}
    run_files.save_json(workdir, run_files.CONFIG_FILE, config_dict)
    run_files.save_json(workdir, run_files.RUN_INFO_FILE, run_info)
    run_files.truncate_metrics(workdir, start_epoch)
    writer = writers.create_writer(workdir, config.num_epochs)
    report_progress = writers.create_progress(writer, start_epoch)
    train_epoch, evaluate = make_pipeline(config, dataset, model, mesh, state.params)
    reconverge = make_reconverge(model, config, mesh, dataset.train_images)
    epsilon_at = losses.epsilon_schedule(config, steps_per_epoch)
    sound_every = int(config.get('bound', {}).get('sound_every_epochs', 0))

    for epoch in range(start_epoch + 1, config.num_epochs + 1):
        started = time.perf_counter()
        if reconverge is not None:
            state = reconverge(state)
        new_state, train_metrics = train_epoch(state, epoch)
        eval_metrics, lipschitz = evaluate(new_state)
        scalars = epoch_scalars(train_metrics, eval_metrics, lipschitz)
        bad_step = int(train_metrics.first_non_finite_step.compute())
        if bad_step >= 0 or not np.isfinite(scalars['train_loss']):
            raise NonFiniteLossError(
                f'non-finite loss at epoch {epoch}, step {bad_step + 1} of the epoch; the '
                f'checkpoint of epoch {manager.latest_step() or 0} is kept')
        state = new_state
        scalars['epoch_seconds'] = time.perf_counter() - started
        # the loss's epsilon at the epoch's end (every epoch runs steps_per_epoch steps)
        scalars['train_epsilon'] = float(epsilon_at(epoch * steps_per_epoch))
        if sound_every and (epoch % sound_every == 0 or epoch == config.num_epochs) \
                and jax.process_index() == 0:
            scalars.update(sound_scalars(model, state, input_shape, lipschitz, config.epsilon))
        report_progress(epoch)
        writer.write_scalars(epoch, scalars)
        writer.flush()
        if epoch % config.checkpoint_every_epochs == 0 or epoch == config.num_epochs:
            checkpoints.save(manager, epoch, state, config_dict, run_info)
    writer.close()
    manager.close()
    return state
