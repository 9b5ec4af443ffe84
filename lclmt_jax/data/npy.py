"""``npy``: a directory of numpy ``.npy`` arrays, the images read as memory maps: for sets larger
than memory (a million 32x32x3 images are 3 GB), such as the generated images of
``config.data.extra``.

``config.data.path`` names a directory holding ``x_train.npy`` and ``y_train.npy`` (and
``x_test.npy``, ``y_test.npy`` when it is the main dataset; an extra set needs the train pair
only). Images must already be uint8 (N, H, W, C): they are opened with
``np.load(mmap_mode='r')`` and never converted, so nothing reads them whole; the host pipeline
gathers each batch's rows from the map and the operating system pages those rows in (and keeps
the hot ones in its page cache), while the pipeline's prefetch thread overlaps that with the
step. Labels are small and read whole.

Why not a loader library (grain over ArrayRecord, tf.data): the format is numpy's own, written
by ``np.save`` or ``np.lib.format.open_memmap`` chunk by chunk without holding the set, read
without a new dependency or a conversion step, and random row access is what a memory map
does best; batches are gathered by the one host pipeline every source uses, in the order it
draws from (seed, epoch).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from lclmt_jax import data
from lclmt_jax.data import SOURCES, Dataset, Source, TrainSplit

SPLITS = ('train', 'test')


def _files(splits: tuple[str, ...]) -> list[str]:
    return [f'{kind}_{split}.npy' for split in splits for kind in ('x', 'y')]


def _validate(data_config: Any, splits: tuple[str, ...] = SPLITS) -> None:
    expected = ', '.join(_files(splits))
    path = data.required_path(data_config, 'npy', 'directory', expected)
    missing = [name for name in _files(splits) if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise ValueError(f"config.data.path={path!r} lacks {', '.join(missing)}; source='npy' "
                         f'expects {expected}')


def _open(path: str, mmap_mode: str | None) -> np.ndarray:
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f'{path}: cannot read .npy file ({error}): truncated, or not an .npy '
                         'array') from None


def read_split(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images as a read-only memory map, int32 labels) of ``split`` in ``directory``."""
    images_path = os.path.join(directory, f'x_{split}.npy')
    images = _open(images_path, 'r')
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f'{images_path}: images must be uint8 (N, H, W, C) (they are read as a '
                         f'memory map, never converted), got {images.dtype} {images.shape}')
    labels_path = os.path.join(directory, f'y_{split}.npy')
    labels = data.as_int32_labels(_open(labels_path, None), labels_path)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f'{directory} [{split}]: {images.shape[0]} images but '
                         f'{labels.shape[0]} labels')
    return images, labels


def _name(directory: str) -> str:
    return os.path.basename(os.path.normpath(directory)) or 'npy'


def _load(directory: str) -> Dataset:
    return data.from_splits(read_split(directory, 'train'), read_split(directory, 'test'),
                            _name(directory))


def _load_train(directory: str) -> TrainSplit:
    images, labels = read_split(directory, 'train')
    return TrainSplit(images, labels, None, _name(directory))


SOURCES.register('npy', Source(
    validate=_validate, load=lambda data_config: _load(data.field(data_config, 'path')),
    validate_train=lambda data_config: _validate(data_config, ('train',)),
    load_train=lambda data_config: _load_train(data.field(data_config, 'path'))))
