"""Feeding batches to the devices: the device mesh, on-device datasets, process-local batches.

Data parallelism is ``jax.jit`` over a 1-D device mesh whose one axis, ``DATA_AXIS``, carries the
batch: the train state is replicated (``replicated``), every global batch is split over the axis
(``batch_sharded``), and the steps are written for the whole global batch -- XLA's partitioner
inserts the cross-device sums. Two pipelines run a train step over an epoch and an eval step over
the test set, and follow the same global batch order, so they train alike:

* ``device``: the whole dataset is replicated on every device and a whole epoch is one jitted
  ``lax.scan`` over the steps (``device_train_epoch``); no host round trip per step. For one
  process and datasets that fit in device memory (MNIST-sized).
* ``host``: every process materialises only its own rows of each global batch (its devices' share),
  a background thread prefetches them, and ``jax.make_array_from_process_local_data`` assembles the
  global batch sharded over the ``data`` mesh axis. For several processes and large datasets.

The example order of epoch e is a permutation drawn from (seed, e) alone: identical on every
process and device count, and reproducible on resume. Extra training data
(``config.data.extra``, ``lclmt_jax.data.extra``) joins every batch through the host pipeline,
its rows the epoch's slice of a stream of permutations drawn from the seed (``extra_order``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lclmt_jax import divergence
from lclmt_jax.data import Dataset
from lclmt_jax.data.extra import ExtraData
from lclmt_jax.metrics import EvalMetrics

PIPELINES = ('auto', 'device', 'host')
DEVICE_PIPELINE_MAX_BYTES = 2 << 30  # datasets up to 2 GiB stay on the device
DATA_AXIS = 'data'
EXTRA_STREAM_TAG = 0x657874  # 'ext': folded into the seed's key for the extra set's passes

TrainStep = Callable[[Any, jax.Array, jax.Array], tuple[Any, Any]]
EvalStep = Callable[[Any, jax.Array, jax.Array, jax.Array], Any]


def make_mesh(devices: list | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh over all (or the given) devices, whose single axis carries the data batch."""
    devices = jax.devices() if devices is None else devices
    return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """The sharding of values every device holds whole (state, metrics, on-device datasets)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    """The sharding of a global batch: split along its first axis over ``DATA_AXIS``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def epoch_key(seed: int, epoch: int) -> jax.Array:
    """The key that orders epoch ``epoch``: a function of (seed, epoch) only, so resume is exact."""
    return jax.random.fold_in(jax.random.key(seed), epoch)


def _host_permutation(key: jax.Array, num_examples: int) -> np.ndarray:
    with jax.default_device(jax.local_devices(backend='cpu')[0]):
        return np.asarray(jax.random.permutation(key, num_examples))


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The example order of an epoch on the host; equal to the on-device permutation."""
    return _host_permutation(epoch_key(seed, epoch), num_examples)


def extra_pass_order(seed: int, index: int, num_extra: int) -> np.ndarray:
    """Pass ``index`` of the extra set's stream: a permutation drawn from a key folded from the
    seed, ``EXTRA_STREAM_TAG`` and ``index``, apart from every epoch's key."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), EXTRA_STREAM_TAG), index)
    return _host_permutation(key, num_extra)


def extra_order(seed: int, epoch: int, num_extra: int, rows_per_epoch: int) -> np.ndarray:
    """The extra rows epoch ``epoch`` (counted from 1) trains on, in order: the slice
    ``[(epoch - 1)·n, epoch·n)`` of the stream of passes ``extra_pass_order(seed, 0), (seed, 1),
    ...`` over the extra set, n = ``rows_per_epoch``. A function of (seed, epoch) alone, so a
    run resumed at any epoch sees the rows an uninterrupted one does; every extra image is seen
    once per pass, whatever the epoch boundaries."""
    start = (epoch - 1) * rows_per_epoch
    first, last = start // num_extra, -(-(start + rows_per_epoch) // num_extra)
    stream = np.concatenate([extra_pass_order(seed, index, num_extra)
                             for index in range(first, last)])
    offset = start - first * num_extra
    return stream[offset:offset + rows_per_epoch]


def choose_pipeline(requested: str, dataset_bytes: int, has_convolutions: bool = False) -> str:
    """``device`` when one process can hold the dataset on device, else ``host``.

    Also ``host`` for convolutional networks on a CPU: XLA:CPU runs a conv's weight gradient
    10-40x slower inside the device pipeline's ``lax.scan`` than in a jitted step (4C3F on
    MNIST: 30 images/s against 200).
    """
    if requested != 'auto':
        return requested
    if has_convolutions and jax.default_backend() == 'cpu':
        return 'host'
    if jax.process_count() == 1 and dataset_bytes <= DEVICE_PIPELINE_MAX_BYTES:
        return 'device'
    return 'host'


class BatchPart(NamedTuple):
    """One source of every global batch's rows: step k takes ``per_batch`` rows,
    ``images[order[k·n:(k+1)·n]]`` with n = ``per_batch`` (and their labels)."""

    images: np.ndarray
    labels: np.ndarray
    order: np.ndarray
    per_batch: int


def gather_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]``; from a memory map, read in ascending row order (sequential pages for
    the operating system to read ahead) and put back in the order asked."""
    if not isinstance(array, np.memmap):
        return array[rows]
    ascending = np.argsort(rows, kind='stable')
    gathered = np.empty((len(rows), *array.shape[1:]), array.dtype)
    gathered[ascending] = array[rows[ascending]]
    return gathered


def local_batches(parts: list[BatchPart],
                  steps: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """This process's rows of the ``steps`` global batches, each the parts' rows one after the
    other (real rows, then extra ones).

    Devices are ordered by process in the mesh, so process p owns rows [p·B/P, (p+1)·B/P) of
    the global batch of B rows, whichever parts they come from: the global batch is the same
    on any number of processes and devices.
    """
    local = sum(part.per_batch for part in parts) // jax.process_count()
    low = jax.process_index() * local
    for step in range(steps):
        pieces, start = [], 0
        for part in parts:
            first, last = max(low - start, 0), min(low + local - start, part.per_batch)
            if first < last:
                rows = part.order[step * part.per_batch + first:step * part.per_batch + last]
                pieces.append((gather_rows(part.images, rows), part.labels[rows]))
            start += part.per_batch
        yield tuple(arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
                    for arrays in zip(*pieces, strict=True))


def process_local_batches(images: np.ndarray, labels: np.ndarray, order: np.ndarray,
                          global_batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """This process's rows of each global batch ``order[k·B:(k+1)·B]``; last partial batch dropped
    (``local_batches`` of one part)."""
    return local_batches([BatchPart(images, labels, order, global_batch)],
                         len(order) // global_batch)


def prefetch(iterator: Iterator, size: int = 2) -> Iterator:
    """Runs ``iterator`` in a background thread, ``size`` items ahead of the consumer."""
    items: queue.Queue = queue.Queue(maxsize=size)
    done = object()

    def produce():
        try:
            for item in iterator:
                items.put(item)
        except BaseException as error:  # surfaced in the consumer
            items.put(error)
        items.put(done)

    threading.Thread(target=produce, daemon=True).start()
    while (item := items.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def to_global_batch(mesh: jax.sharding.Mesh, local: tuple[np.ndarray, ...]) -> tuple:
    """Assembles process-local rows into global arrays sharded over ``DATA_AXIS``."""
    return tuple(jax.make_array_from_process_local_data(batch_sharded(mesh), array)
                 for array in local)


def replicate(mesh: jax.sharding.Mesh, tree):
    """Places a pytree of host values, identical on every process, on every device of the mesh."""
    return jax.tree.map(lambda leaf: jax.make_array_from_process_local_data(
        replicated(mesh), np.asarray(leaf)), tree)


def pad_to_multiple(images: np.ndarray, labels: np.ndarray,
                    multiple: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pads examples to a multiple of ``multiple``; returns (images, labels, valid mask)."""
    total = -(-len(images) // multiple) * multiple
    pad = total - len(images)
    valid = np.concatenate([np.ones(len(images), bool), np.zeros(pad, bool)])
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    return images, labels, valid


def device_train_epoch(train_step: TrainStep, mesh: jax.sharding.Mesh, batch_size: int,
                       num_examples: int) -> Callable:
    """``train_epoch(state, images, labels, key) -> (state, TrainReport)``, one jitted call.

    A ``lax.scan`` over the epoch's steps. ``images``/``labels`` are the whole replicated train
    set; ``key`` decides the epoch's example order; each step takes the rows
    ``order[k·B:(k+1)·B]``, sharded over the devices. Incomplete last batches are dropped. Its
    inputs keep their shapes, dtypes and shardings from epoch to epoch, so it compiles once per
    run (tests/test_train.py checks this with ``chex.assert_max_traces``).
    """
    steps = num_examples // batch_size

    def train_epoch(state, images, labels, key):
        order = jax.random.permutation(key, num_examples)

        def body(carry, step_index):
            state, totals = carry
            rows = jax.lax.dynamic_slice_in_dim(order, step_index * batch_size, batch_size)
            rows = jax.lax.with_sharding_constraint(rows, batch_sharded(mesh))
            state, step_metrics = train_step(state, images[rows], labels[rows])
            return (state, totals.merge(step_metrics)), None

        (state, totals), _ = jax.lax.scan(body, (state, divergence.TrainReport.empty()),
                                          jnp.arange(steps))
        return state, totals

    return jax.jit(train_epoch, out_shardings=replicated(mesh), donate_argnums=(0,))


def accumulating_step(train_step: TrainStep, mesh: jax.sharding.Mesh) -> Callable:
    """``step(state, totals, images, labels) -> (state, totals + the step's metrics)``, jitted.

    ``images``/``labels`` are one global batch sharded over the mesh; the state and the running
    metrics stay replicated and are donated.
    """
    def step_and_accumulate(state, totals, images, labels):
        state, step_metrics = train_step(state, images, labels)
        return state, totals.merge(step_metrics)

    return jax.jit(step_and_accumulate, out_shardings=replicated(mesh), donate_argnums=(0, 1))


def host_train_epoch(train_step: TrainStep, mesh: jax.sharding.Mesh) -> Callable:
    """``train_epoch(state, batches) -> (state, TrainReport)`` from host arrays: ``batches``
    yields this process's rows of each global batch (``local_batches``).

    Each step is one jitted call (``accumulating_step``) on a prefetched global batch that every
    process assembles from its own rows.
    """
    step = accumulating_step(train_step, mesh)

    def train_epoch(state, batches):
        totals = jax.device_put(divergence.TrainReport.empty(), replicated(mesh))
        for local in prefetch(batches):
            state, totals = step(state, totals, *to_global_batch(mesh, local))
        return state, totals

    return train_epoch


def device_evaluate(eval_step: EvalStep, mesh: jax.sharding.Mesh, batch_size: int) -> Callable:
    """``evaluate(state, images, labels, valid) -> EvalMetrics``, one jitted ``lax.scan``.

    ``images`` (replicated) are padded to a multiple of ``batch_size``; ``valid`` masks the
    padding.
    """
    def evaluate(state, images, labels, valid):
        def body(totals, batch_index):
            rows = jax.lax.dynamic_slice_in_dim(jnp.arange(images.shape[0]),
                                                batch_index * batch_size, batch_size)
            rows = jax.lax.with_sharding_constraint(rows, batch_sharded(mesh))
            return totals.merge(eval_step(state, images[rows], labels[rows], valid[rows])), None

        totals, _ = jax.lax.scan(body, EvalMetrics.empty(),
                                 jnp.arange(images.shape[0] // batch_size))
        return totals

    return jax.jit(evaluate, out_shardings=replicated(mesh))


def host_evaluate(eval_step: EvalStep, mesh: jax.sharding.Mesh, batch_size: int) -> Callable:
    """The same metrics over padded host arrays, one sharded batch per call."""
    def eval_and_accumulate(state, totals, images, labels, valid):
        return totals.merge(eval_step(state, images, labels, valid))

    step = jax.jit(eval_and_accumulate, out_shardings=replicated(mesh))

    def evaluate(state, images, labels, valid):
        totals = jax.device_put(EvalMetrics.empty(), replicated(mesh))
        batches = process_local_batches(images, np.stack([labels, valid.astype(labels.dtype)], 1),
                                        np.arange(len(labels)), batch_size)
        for local_images, local_labels in prefetch(batches):
            totals = step(state, totals, *to_global_batch(
                mesh, (local_images, local_labels[:, 0], local_labels[:, 1].astype(bool))))
        return totals

    return evaluate


class Pipeline(NamedTuple):
    """``train_epoch(state, epoch) -> (state, TrainReport)`` and
    ``evaluate(state) -> EvalMetrics`` over a dataset, and which pipeline runs them."""

    train_epoch: Callable
    evaluate: Callable
    kind: str


def train_batches(config: ml_collections.ConfigDict, dataset: Dataset,
                  extra: ExtraData | None = None) -> Callable[[int], Iterator]:
    """``batches(epoch)``: this process's rows of the epoch's global batches on the host.

    ``num_train // batch_size`` steps, each ``epoch_order``'s next real rows; with ``extra``,
    ``batch_size − extra.per_batch`` of them followed by ``extra.per_batch`` rows of
    ``extra_order``. Without, exactly the batches of a run that never heard of extra data.
    """
    num_train, batch_size = len(dataset.train_labels), config.batch_size
    if extra is None:
        return lambda epoch: process_local_batches(
            dataset.train_images, dataset.train_labels,
            epoch_order(config.seed, epoch, num_train), batch_size)
    steps, real = num_train // batch_size, batch_size - extra.per_batch

    def batches(epoch: int) -> Iterator:
        extra_rows = extra_order(config.seed, epoch, len(extra.labels), steps * extra.per_batch)
        yield from local_batches([
            BatchPart(dataset.train_images, dataset.train_labels,
                      epoch_order(config.seed, epoch, num_train), real),
            BatchPart(extra.images, extra.labels, extra_rows, extra.per_batch)], steps)

    return batches


def make_pipeline(config: ml_collections.ConfigDict, dataset: Dataset, mesh: jax.sharding.Mesh,
                  train_step: TrainStep, eval_step: EvalStep, convolves: bool,
                  extra: ExtraData | None = None) -> Pipeline:
    """The configured pipeline (``config.data.pipeline``; ``auto`` weighs the dataset's size and
    whether the network ``convolves``) over ``dataset``'s train and test splits; ``host``
    whenever ``extra`` training data (``lclmt_jax.data.extra``) joins every batch."""
    num_train = len(dataset.train_labels)
    test = pad_to_multiple(dataset.test_images, dataset.test_labels, config.eval_batch_size)
    dataset_bytes = dataset.train_images.nbytes + test[0].nbytes
    kind = 'host' if extra is not None else choose_pipeline(config.data.pipeline, dataset_bytes,
                                                            convolves)
    if kind == 'device':
        train_arrays = replicate(mesh, (dataset.train_images, dataset.train_labels))
        test = replicate(mesh, test)
        epoch = device_train_epoch(train_step, mesh, config.batch_size, num_train)
        evaluate = device_evaluate(eval_step, mesh, config.eval_batch_size)
        return Pipeline(lambda state, index: epoch(state, *train_arrays,
                                                   epoch_key(config.seed, index)),
                        lambda state: evaluate(state, *test), kind)
    epoch, batches = host_train_epoch(train_step, mesh), train_batches(config, dataset, extra)
    evaluate = host_evaluate(eval_step, mesh, config.eval_batch_size)
    return Pipeline(lambda state, index: epoch(state, batches(index)),
                    lambda state: evaluate(state, *test), kind)
