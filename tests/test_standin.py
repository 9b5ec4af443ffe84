"""The SVHN stand-in generator (scripts/make_svhn_standin.py) colours digits as documented."""

import importlib.util
import os

import numpy as np
import pytest

pytestmark = pytest.mark.fast

SCRIPT = os.path.join(os.path.dirname(__file__), '..', 'scripts', 'make_svhn_standin.py')


def _colour_digits():
    spec = importlib.util.spec_from_file_location('make_svhn_standin', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.colour_digits


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
