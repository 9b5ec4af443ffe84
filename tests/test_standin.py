"""The SVHN stand-in generator (scripts/make_svhn_standin.py) colours digits as documented."""

import importlib.util
import os
import sys

import numpy as np
import pytest
from test_data import idx_bytes

from lclmt_jax.data import idx

pytestmark = pytest.mark.fast

SCRIPT = os.path.join(os.path.dirname(__file__), '..', 'scripts', 'make_svhn_standin.py')


def _script():
    spec = importlib.util.spec_from_file_location('make_svhn_standin', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _colour_digits():
    return _script().colour_digits


def stripe_digits(count: int, first: int = 0) -> np.ndarray:
    """(count, 28, 28) digits, digit i a full-ink stripe of rows [2 + 2(first + i), +2) and
    columns 4..23: each recognisable by where its ink lies."""
    digits = np.zeros((count, 28, 28), np.uint8)
    for i in range(count):
        row = 2 + 2 * (first + i)
        digits[i, row:row + 2, 4:24] = 255
    return digits


def test_colour_digits_paints_ink_and_background_per_image():
    digits = np.zeros((5, 28, 28), np.uint8)
    digits[:, 10:18, 12:16] = 255  # a block of full ink
    images = _colour_digits()(digits, np.random.default_rng(0))
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
    background, ink = images[:, 0, 0], images[:, 2 + 12, 2 + 13]
    # one colour for the whole background (padding included) and one for the ink, per image
    np.testing.assert_array_equal(images[:, :2], np.broadcast_to(background[:, None, None],
                                                                 (5, 2, 32, 3)))
    np.testing.assert_array_equal(images[:, 12:20, 14:18],
                                  np.broadcast_to(ink[:, None, None], (5, 8, 4, 3)))
    assert len({tuple(c) for c in background}) == 5  # colours differ between images
    assert np.abs(background.astype(int) - ink).max() > 0


def test_extra_images_are_their_source_digits_moved_and_recoloured(monkeypatch):
    """Without the noise texture every pixel is the image's background or ink colour, and the
    ink is the source digit placed somewhere in [0, 4]^2 of the frame."""
    script = _script()
    monkeypatch.setattr(script, 'MAX_NOISE', 0.0)
    digits = stripe_digits(6)
    images, source = script.extra_images(digits, 40, np.random.default_rng(0))
    assert images.shape == (40, 32, 32, 3) and images.dtype == np.uint8
    assert source.min() >= 0 and source.max() < 6 and len(set(source)) > 3
    corners = set()
    for image, index in zip(images, source, strict=True):
        ink = np.any(image != image[0, 0], axis=-1)  # the frame's corner is background
        placed = [(row, column) for row in range(5) for column in range(5)
                  if np.array_equal(ink, np.pad(digits[index] > 0, ((row, 4 - row),
                                                                    (column, 4 - column))))]
        assert len(placed) == 1
        corners.add(placed[0])
    assert len(corners) > 5  # positions vary


def test_the_extra_set_is_made_from_the_training_digits_only(tmp_path, monkeypatch):
    """--extra writes an npy directory whose every image comes from one of the first --train
    MNIST training digits (source_index, and the labels with it), never a test digit, and leaves
    the stand-in itself as it was without --extra."""
    mnist = tmp_path / 'mnist'
    mnist.mkdir()
    arrays = {'train_images': stripe_digits(10), 'train_labels': np.arange(10, dtype=np.uint8),
              'test_images': stripe_digits(3, first=10), 'test_labels': np.arange(3,
                                                                                  dtype=np.uint8)}
    for key, stem in idx.IDX_FILES.items():
        (mnist / stem).write_bytes(idx_bytes(arrays[key]))
    script = _script()
    monkeypatch.setattr(script, 'MAX_NOISE', 0.0)  # ink: exactly the pixels not background
    outputs = {}
    for name, more in (('plain', []), ('with_extra', ['--extra=25',
                                                      f'--extra_out={tmp_path / "extra"}'])):
        outputs[name] = str(tmp_path / f'{name}.npz')
        monkeypatch.setattr(sys, 'argv', ['make_svhn_standin.py', f'--mnist={mnist}',
                                          f'--out={outputs[name]}', '--train=6', '--test=3',
                                          *more])
        script.main()
    source = np.load(tmp_path / 'extra' / 'source_index.npy')
    images = np.load(tmp_path / 'extra' / 'x_train.npy')
    labels = np.load(tmp_path / 'extra' / 'y_train.npy')
    assert images.shape == (25, 32, 32, 3) and labels.dtype == np.int32
    assert source.min() >= 0 and source.max() < 6  # the stand-in's 6 training digits
    np.testing.assert_array_equal(labels, arrays['train_labels'][source])
    # the ink lies in the rows of the 6 training digits' stripes (2..13, moved down by up to
    # 4), never in a later digit's, nor in a test digit's (22..27 and below)
    ink_rows = np.flatnonzero(np.any(images != images[:, :1, :1], axis=(0, 2, 3)))
    assert ink_rows.min() >= 2 and ink_rows.max() < 2 + 2 * 6 + 4
    with np.load(outputs['plain']) as plain, np.load(outputs['with_extra']) as mixed:
        for key in plain.files:
            np.testing.assert_array_equal(plain[key], mixed[key])
