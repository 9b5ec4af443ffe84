"""``tfds``: any TFDS image-classification dataset (``config.data.name``).

Offline, ``config.data.manual_dir`` must hold the dataset's original files (for MNIST: the four
``*-ubyte.gz`` files); ``config.data.data_dir`` is where TFDS keeps the prepared data.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from lclmt_jax.data import (
    SOURCES,
    Dataset,
    Source,
    as_int32_labels,
    as_uint8_images,
    field,
    from_splits,
)

# Examples per batch when reading a TFDS split into memory (see _load).
_TFDS_READ_BATCH = 10_000


def _validate(data_config: Any) -> None:
    if not field(data_config, 'name'):
        raise ValueError("config.data.name is empty; source='tfds' needs a TFDS dataset "
                         "name such as 'mnist'")
    manual_dir = field(data_config, 'manual_dir')
    if manual_dir and not os.path.isdir(manual_dir):
        raise ValueError(
            f'config.data.manual_dir={manual_dir!r} is not a directory; it must hold the '
            "dataset's original files (for mnist: the four *-ubyte.gz files)")


def _check_manual_files(builder: Any, manual_dir: str) -> None:
    """Fails fast when ``manual_dir`` lacks a file TFDS would otherwise try to download.

    The download manager takes a URL's file from ``manual_dir`` when a file with the name TFDS
    registered for that URL is there; otherwise it goes to the network, which offline means
    minutes of retries before an error. Builders without registered files are not checked.
    """
    try:
        url_infos = builder.url_infos or {}
    except Exception:  # a builder without a readable checksums file: nothing to check
        return
    expected = sorted({info.filename for info in url_infos.values() if info.filename})
    missing = [name for name in expected if not os.path.isfile(os.path.join(manual_dir, name))]
    if missing:
        raise ValueError(
            f'config.data.manual_dir={manual_dir!r} lacks {", ".join(missing)}, which TFDS '
            f'would download for {builder.name!r}; put the original files there (or use '
            "source='idx')")


def _load(name: str, data_dir: str, manual_dir: str) -> Dataset:
    """Loads the train and test splits of TFDS dataset ``name`` whole, as numpy arrays.

    With ``manual_dir`` set, the dataset is prepared first (once; later calls reuse the
    prepared data in ``data_dir``) from the original files there: TFDS's download manager looks
    up each URL's registered filename in ``manual_dir`` before it touches the network, so for
    MNIST the four ``*-ubyte.gz`` files (checksums verified) suffice offline. Without
    ``manual_dir`` the dataset must already be prepared in ``data_dir``.

    Splits are read in batches of ``_TFDS_READ_BATCH`` and concatenated rather than with
    ``batch_size=-1``: the latter batches by the recorded split size, and where that is unknown
    (e.g. under ``tfds.testing.mock_data``) by ``sys.maxsize``, which aborts TensorFlow 2.21
    (``std::length_error: vector::reserve``).
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.DatasetNotFoundError as error:
        raise ValueError(f'unknown TFDS dataset config.data.name={name!r}') from error
    if manual_dir:
        if not builder.is_prepared():
            _check_manual_files(builder, manual_dir)
        config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
        try:
            builder.download_and_prepare(download_config=config)
        except Exception as error:
            first_line = (str(error).strip().splitlines() or [''])[0]
            raise ValueError(
                f'TFDS could not prepare {name!r} from config.data.manual_dir={manual_dir!r}: '
                f'{type(error).__name__}: {first_line}') from error
    image_key, label_key = builder.info.supervised_keys or ('image', 'label')
    arrays = {}
    for split in ('train', 'test'):
        try:
            batches = builder.as_dataset(split=split, batch_size=_TFDS_READ_BATCH)
        except AssertionError as error:  # TFDS's "could not find data in <data_dir>"
            raise ValueError(
                f'TFDS dataset {name!r} is not prepared in {builder.data_dir} and cannot be '
                'downloaded offline: set config.data.manual_dir to a directory holding its '
                "original files (for mnist: the four *-ubyte.gz files), or use source='idx'"
            ) from error
        images, labels = [], []
        for batch in tfds.as_numpy(batches):
            images.append(batch[image_key])
            labels.append(batch[label_key])
        what = f'tfds:{name} [{split}]'
        if not images:
            raise ValueError(f'{what}: the split is empty')
        arrays[split] = (as_uint8_images(np.concatenate(images), what),
                         as_int32_labels(np.concatenate(labels), what))
    return from_splits(arrays['train'], arrays['test'], name,
                       int(builder.info.features[label_key].num_classes))


SOURCES.register('tfds', Source(validate=_validate, load=lambda data_config: _load(
    name=field(data_config, 'name'), data_dir=field(data_config, 'data_dir'),
    manual_dir=field(data_config, 'manual_dir'))))
