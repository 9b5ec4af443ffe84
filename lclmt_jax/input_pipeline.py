"""Feeding batches to the devices: on-device datasets, or process-local host batches.

Two pipelines follow the same global batch order, so they train alike:

* ``device``: the whole dataset is replicated on every device and a whole epoch is one jitted
  call (``train.make_train_epoch``); no host round trip per step. For one process and datasets that
  fit in device memory (MNIST-sized).
* ``host``: every process materialises only its own rows of each global batch (its devices' share),
  a background thread prefetches them, and ``jax.make_array_from_process_local_data`` assembles the
  global batch sharded over the ``data`` mesh axis. For several processes and large datasets.

The example order of epoch e is a permutation drawn from (seed, e) alone: identical on every
process and device count, and reproducible on resume.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

PIPELINES = ('auto', 'device', 'host')
DEVICE_PIPELINE_MAX_BYTES = 2 << 30  # datasets up to 2 GiB stay on the device


def epoch_key(seed: int, epoch: int) -> jax.Array:
    """The key that orders epoch ``epoch``: a function of (seed, epoch) only, so resume is exact."""
    return jax.random.fold_in(jax.random.key(seed), epoch)


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The example order of an epoch on the host; equal to the on-device permutation."""
    with jax.default_device(jax.local_devices(backend='cpu')[0]):
        return np.asarray(jax.random.permutation(epoch_key(seed, epoch), num_examples))


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


def process_local_batches(images: np.ndarray, labels: np.ndarray, order: np.ndarray,
                          global_batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """This process's rows of each global batch ``order[k·B:(k+1)·B]``; last partial batch dropped.

    Devices are ordered by process in the mesh, so process p owns rows [p·B/P, (p+1)·B/P).
    """
    local = global_batch // jax.process_count()
    offset = jax.process_index() * local
    for start in range(0, len(order) - global_batch + 1, global_batch):
        rows = order[start + offset:start + offset + local]
        yield images[rows], labels[rows]


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
    """Assembles process-local rows into global arrays sharded over the ``data`` axis."""
    sharding = NamedSharding(mesh, P(mesh.axis_names[0]))
    return tuple(jax.make_array_from_process_local_data(sharding, array) for array in local)


def replicate(mesh: jax.sharding.Mesh, tree):
    """Places a pytree of host values, identical on every process, on every device of the mesh."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(
        lambda leaf: jax.make_array_from_process_local_data(sharding, np.asarray(leaf)), tree)
