"""``npz``: a Keras-style ``.npz`` archive with ``x_train``, ``y_train``, ``x_test``, ``y_test``.

``config.data.path`` names the file. Images may be uint8, integers in 0..255 or floats in [0, 1].
"""

from __future__ import annotations

import os
import zipfile
import zlib
from typing import Any

import numpy as np

from lclmt_jax import data
from lclmt_jax.data import SOURCES, Dataset, Source

NPZ_KEYS = ('x_train', 'y_train', 'x_test', 'y_test')
# What numpy and zipfile raise on a file that is not a complete .npz: truncated (no central
# directory), not an archive at all, a corrupted or cut member.
UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def _validate(data_config: Any) -> None:
    data.required_path(data_config, 'npz', 'file', f'the arrays {", ".join(NPZ_KEYS)}')


def _load(path: str) -> Dataset:
    """Loads a Keras-style ``.npz`` with keys x_train, y_train, x_test, y_test."""
    try:
        npz = np.load(path, allow_pickle=False)
    except UNREADABLE as error:  # not .npy/.npz, pickled, truncated
        raise ValueError(f'{path}: cannot read .npz file ({error}): truncated, or not an .npz '
                         'archive') from None
    if isinstance(npz, np.ndarray):
        raise ValueError(f'{path}: holds a single array, expected an .npz archive with keys '
                         f'{", ".join(NPZ_KEYS)}')
    with npz:
        missing = [key for key in NPZ_KEYS if key not in npz.files]
        if missing:
            raise ValueError(f'{path}: missing key(s) {", ".join(missing)}; found '
                             f'{", ".join(sorted(npz.files)) or "none"}; expected '
                             f'{", ".join(NPZ_KEYS)}')
        try:
            arrays = {key: npz[key] for key in NPZ_KEYS}
        except UNREADABLE as error:
            raise ValueError(f'{path}: cannot read .npz member ({error}): truncated or '
                             'corrupted archive') from None
    splits = {}
    for split in ('train', 'test'):
        what = f'{path} [{split}]'
        images = data.as_uint8_images(arrays[f'x_{split}'], what)
        labels = data.as_int32_labels(arrays[f'y_{split}'], what)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f'{what}: {images.shape[0]} images but {labels.shape[0]} labels')
        splits[split] = (images, labels)
    name = os.path.splitext(os.path.basename(path))[0] or 'npz'
    return data.from_splits(splits['train'], splits['test'], name)


SOURCES.register('npz', Source(validate=_validate,
                               load=lambda data_config: _load(data.field(data_config, 'path'))))
