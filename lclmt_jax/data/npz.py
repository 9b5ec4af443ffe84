"""``npz``: a Keras-style ``.npz`` archive with ``x_train``, ``y_train``, ``x_test``, ``y_test``.

``config.data.path`` names the file. Images may be uint8, integers in 0..255 or floats in [0, 1].
Read for its train split alone (``config.data.extra``), the archive needs only ``x_train`` and
``y_train``. The whole archive is read into memory: for sets larger than that, ``npy``.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from typing import Any

import numpy as np

from lclmt_jax import data
from lclmt_jax.data import SOURCES, Dataset, Source, TrainSplit

NPZ_KEYS = ('x_train', 'y_train', 'x_test', 'y_test')
TRAIN_KEYS = NPZ_KEYS[:2]
# What numpy and zipfile raise on a file that is not a complete .npz: truncated (no central
# directory), not an archive at all, a corrupted or cut member.
UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def _validate(data_config: Any, keys: tuple[str, ...] = NPZ_KEYS) -> None:
    data.required_path(data_config, 'npz', 'file', f'the arrays {", ".join(keys)}')


def _read(path: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of the archive at ``path``; one-line ValueErrors for what is not."""
    try:
        npz = np.load(path, allow_pickle=False)
    except UNREADABLE as error:  # not .npy/.npz, pickled, truncated
        raise ValueError(f'{path}: cannot read .npz file ({error}): truncated, or not an .npz '
                         'archive') from None
    if isinstance(npz, np.ndarray):
        raise ValueError(f'{path}: holds a single array, expected an .npz archive with keys '
                         f'{", ".join(keys)}')
    with npz:
        missing = [key for key in keys if key not in npz.files]
        if missing:
            raise ValueError(f'{path}: missing key(s) {", ".join(missing)}; found '
                             f'{", ".join(sorted(npz.files)) or "none"}; expected '
                             f'{", ".join(keys)}')
        try:
            return {key: npz[key] for key in keys}
        except UNREADABLE as error:
            raise ValueError(f'{path}: cannot read .npz member ({error}): truncated or '
                             'corrupted archive') from None


def _split(path: str, arrays: dict[str, np.ndarray], split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, int32 labels) of ``split`` from the archive's arrays."""
    what = f'{path} [{split}]'
    images = data.as_uint8_images(arrays[f'x_{split}'], what)
    labels = data.as_int32_labels(arrays[f'y_{split}'], what)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f'{what}: {images.shape[0]} images but {labels.shape[0]} labels')
    return images, labels


def _name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0] or 'npz'


def _load(path: str) -> Dataset:
    """Loads a Keras-style ``.npz`` with keys x_train, y_train, x_test, y_test."""
    arrays = _read(path, NPZ_KEYS)
    return data.from_splits(_split(path, arrays, 'train'), _split(path, arrays, 'test'),
                            _name(path))


def _load_train(path: str) -> TrainSplit:
    """The train split of an ``.npz`` with keys x_train, y_train (others ignored)."""
    images, labels = _split(path, _read(path, TRAIN_KEYS), 'train')
    return TrainSplit(images, labels, None, _name(path))


SOURCES.register('npz', Source(
    validate=_validate, load=lambda data_config: _load(data.field(data_config, 'path')),
    validate_train=lambda data_config: _validate(data_config, TRAIN_KEYS),
    load_train=lambda data_config: _load_train(data.field(data_config, 'path'))))
