"""Extra training images mixed into every batch (``config.data.extra``), as the LiResNet and
CHORD references train on CIFAR-10: each step draws real and generated images in a fixed
proportion (their 256 real + 768 generated of 1,024).

``config.data.extra`` names a source and a path like ``config.data`` (its train split alone is
read: ``npy`` for sets larger than memory, ``npz`` for those that fit) and ``share``, the
fraction of every training batch it fills: ``batch_size·share`` extra rows and
``batch_size·(1 − share)`` real ones, the total staying ``config.batch_size``. An epoch keeps
the step count and schedules of the run without extra data (``num_train // batch_size``
steps); its real rows come from the epoch's permutation of the real set, its extra rows from a
stream of permutations of the extra set (``lclmt_jax.input_pipeline.extra_order``), both
functions of (seed, epoch) alone, so a resumed run sees the batches an uninterrupted one does.
Evaluation is on the real test split only. share 0 or no source: off, and every batch is what
it was without this section.

What one config can get wrong is refused before any data is read (:func:`validate`); what
needs the data (image shape, classes) right after both are loaded (:func:`check_fits`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from lclmt_jax import data
from lclmt_jax.data import Dataset

FIELD = 'config.data.extra'


class ExtraData(NamedTuple):
    """The extra set: uint8 NHWC images (possibly a read-only memory map), int32 labels, its
    classes (the source's count, else the labels'), and how many rows of each global batch it
    fills."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    per_batch: int


def enabled(data_config: Any) -> bool:
    """Whether ``data_config.extra`` mixes extra rows into the batches: a share above 0 (with a
    source, which :func:`validate` demands)."""
    extra = data_config.get('extra') if hasattr(data_config, 'get') else None
    return bool(extra) and extra.share > 0


def split_batch(batch_size: int, share: float) -> tuple[int, int]:
    """(real, extra) rows of a global batch of ``batch_size`` with ``share`` extra; a one-line
    ValueError when ``batch_size·share`` is not a whole number."""
    extra = batch_size * share
    if abs(extra - round(extra)) > 1e-6:
        raise ValueError(f'{FIELD}.share={share} of batch_size={batch_size} is {extra:g} extra '
                         'rows, not a whole number; choose a share that splits the batch into '
                         f'whole real and extra parts (e.g. {round(extra) / batch_size:g})')
    return batch_size - round(extra), round(extra)


def validate(config: Any) -> None:
    """Refuses, one line each and reading no data, a share with no source, a batch the share
    does not split into whole parts, the ``device`` pipeline, and the source's own complaints
    (a missing file), named as ``config.data.extra`` fields."""
    if not enabled(config.data):  # share 0, or a config from before the section existed
        return
    extra = config.data.extra
    if not extra.source:
        raise ValueError(f'{FIELD}.share={extra.share} but {FIELD}.source is empty; name the '
                         f'extra set ({FIELD}.source and .path, e.g. npy and a directory) or set '
                         'the share to 0')
    split_batch(config.batch_size, extra.share)
    if config.data.pipeline == 'device':
        raise ValueError(f"config.data.pipeline='device' cannot mix in {FIELD} (extra data "
                         "streams from the host); use 'host' or 'auto'")
    try:
        data.validate_train_config(extra)
    except ValueError as error:
        raise ValueError(str(error).replace('config.data.', f'{FIELD}.')) from None


def load(config: Any) -> ExtraData | None:
    """The extra set ``config.data.extra`` names, or None when it is off."""
    if not enabled(config.data):
        return None
    validate(config)
    split = data.load_train_split(config.data.extra)
    classes = split.num_classes or data.infer_num_classes(split.labels)
    return ExtraData(split.images, split.labels, classes, split.name,
                     split_batch(config.batch_size, config.data.extra.share)[1])


def check_fits(extra: ExtraData, dataset: Dataset) -> None:
    """Refuses an extra set whose images (HWC) or classes differ from the main dataset's."""
    main_shape, shape = dataset.train_images.shape[1:], extra.images.shape[1:]
    if shape != main_shape:
        raise ValueError(f'{FIELD}: {extra.name} images are {"x".join(map(str, shape))}, the '
                         f'main dataset {dataset.name} has {"x".join(map(str, main_shape))} '
                         '(HWC); both must be alike')
    if extra.num_classes != dataset.num_classes:
        raise ValueError(f'{FIELD}: {extra.name} has {extra.num_classes} classes (labels up to '
                         f'{int(extra.labels.max())}), the main dataset {dataset.name} has '
                         f'{dataset.num_classes}; both must label the same classes')
