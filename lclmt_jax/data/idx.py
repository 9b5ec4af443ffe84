"""``idx``: a directory with the four original IDX files (MNIST, Fashion-MNIST, KMNIST, ...).

``config.data.path`` names the directory; each file may be gzip-compressed (``.gz``).
"""

from __future__ import annotations

import gzip
import os
from typing import Any

import numpy as np

from lclmt_jax.data import SOURCES, Dataset, Source, field, from_splits, required_path

# The four IDX files of an MNIST-format dataset, each optionally gzip-compressed ('.gz').
IDX_FILES = {
    'train_images': 'train-images-idx3-ubyte',
    'train_labels': 'train-labels-idx1-ubyte',
    'test_images': 't10k-images-idx3-ubyte',
    'test_labels': 't10k-labels-idx1-ubyte',
}
_IDX_MAGIC_LABELS = 0x00000801  # unsigned bytes, 1 dimension
_IDX_MAGIC_IMAGES = 0x00000803  # unsigned bytes, 3 dimensions


def _idx_file(directory: str, stem: str) -> str | None:
    """Returns the path of IDX file ``stem`` (gzip-compressed or raw) in ``directory``, if any."""
    for candidate in (stem + '.gz', stem):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _expected_idx_names() -> str:
    return ', '.join(f'{stem}[.gz]' for stem in IDX_FILES.values())



def _validate(data_config: Any) -> None:
    path = required_path(data_config, 'idx', 'directory', _expected_idx_names())
    missing = [stem for stem in IDX_FILES.values() if _idx_file(path, stem) is None]
    if missing:
        raise ValueError(
            f'config.data.path={path!r} lacks {", ".join(m + "[.gz]" for m in missing)}; '
            f"source='idx' expects {_expected_idx_names()}")


def read_idx(path: str, expected_magic: int) -> np.ndarray:
    """Reads one IDX file (gzip-compressed if its name ends in '.gz') as a uint8 array.

    The header is a big-endian magic number (two zero bytes, a type code, the number of
    dimensions) followed by one big-endian uint32 per dimension. Anything malformed, including
    a truncated file or trailing bytes, raises a one-line ValueError naming the file.
    """
    try:
        if path.endswith('.gz'):
            with gzip.open(path, 'rb') as file:
                raw = file.read()
        else:
            with open(path, 'rb') as file:
                raw = file.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise ValueError(f'{path}: cannot read IDX file ({error})') from error
    if len(raw) < 4:
        raise ValueError(f'{path}: truncated IDX file ({len(raw)} bytes, no header)')
    magic = int.from_bytes(raw[:4], 'big')
    if magic != expected_magic:
        raise ValueError(f'{path}: IDX magic number 0x{magic:08x}, expected '
                         f'0x{expected_magic:08x}')
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f'{path}: truncated IDX header ({len(raw)} of {header_size} bytes)')
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype='>u4', count=ndim, offset=4))
    size = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header_size != size:
        problem = 'truncated' if len(raw) - header_size < size else 'has trailing bytes'
        raise ValueError(f'{path}: IDX file {problem}: header says shape {shape} '
                         f'({size} bytes), found {len(raw) - header_size} data bytes')
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape).copy()


def _load(directory: str) -> Dataset:
    """Loads the four IDX files of an MNIST-format dataset from ``directory``."""
    arrays = {}
    for key, stem in IDX_FILES.items():
        path = _idx_file(directory, stem)
        assert path is not None  # validate_data_config checked presence
        is_images = key.endswith('images')
        array = read_idx(path, _IDX_MAGIC_IMAGES if is_images else _IDX_MAGIC_LABELS)
        arrays[key] = (array, path)
    splits = {}
    for split in ('train', 'test'):
        images, image_path = arrays[f'{split}_images']
        labels, label_path = arrays[f'{split}_labels']
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f'{image_path} holds {images.shape[0]} images but {label_path} '
                             f'holds {labels.shape[0]} labels')
        splits[split] = (images[..., np.newaxis], labels.astype(np.int32))
    name = os.path.basename(os.path.normpath(directory)).lower().replace('-', '_') or 'idx'
    return from_splits(splits['train'], splits['test'], name)


SOURCES.register('idx', Source(validate=_validate,
                               load=lambda data_config: _load(field(data_config, 'path'))))
