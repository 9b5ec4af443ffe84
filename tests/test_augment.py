"""RandAugment-style colour augmentation: shapes, dtypes and ranges kept, per image, determined
by the key, off by default, and the crop and flip draws of a step unchanged by it."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lclmt_jax import augment, config_schema

pytestmark = pytest.mark.fast


def _images(n=16, channels=3, dtype=jnp.uint8):
    images = jax.random.randint(jax.random.key(0), (n, 8, 8, channels), 0, 256)
    return images.astype(jnp.uint8) if dtype == jnp.uint8 else images / 255.0


def test_off_by_default_and_the_identity_when_off():
    settings = dict(config_schema.default_config().augment)
    assert settings['colour_ops'] == 0 and not augment.is_on(**settings)
    images = _images()
    assert augment.colour_jitter(images, jax.random.key(1), 0) is images
    assert augment.augment(images, jax.random.key(1), **settings) is images
    assert augment.is_on(**{**settings, 'colour_ops': 2})


@pytest.mark.parametrize('dtype', [jnp.uint8, jnp.float32])
@pytest.mark.parametrize('channels', [1, 3])
def test_shape_dtype_and_range_are_kept_and_images_change_independently(dtype, channels):
    images = _images(channels=channels, dtype=dtype)
    fn = jax.jit(lambda x, key: augment.colour_jitter(x, key, 2, 1.0, 9.0))
    out = fn(images, jax.random.key(3))
    chex.assert_shape(out, images.shape)
    chex.assert_type(out, images.dtype)
    top = 255 if dtype == jnp.uint8 else 1.0
    assert float(out.min()) >= 0 and float(out.max()) <= top
    changed = np.asarray(jnp.any(out != images, axis=(1, 2, 3)))
    assert changed.sum() >= 8  # most images changed (identity is 1 op in 7)
    # deterministic given the key, different with another
    chex.assert_trees_all_equal(out, fn(images, jax.random.key(3)))
    assert not np.array_equal(out, fn(images, jax.random.key(4)))


def test_probability_zero_changes_nothing_and_one_half_about_half():
    images = _images(n=200)
    chex.assert_trees_all_equal(augment.colour_jitter(images, jax.random.key(0), 2, 0.0), images)
    out = augment.colour_jitter(images, jax.random.key(0), 1, 0.5, 9.0)
    changed = float(jnp.mean(jnp.any(out != images, axis=(1, 2, 3))))
    # applied to half, and one op in 7 is the identity: about 0.5 · 6/7 = 0.43
    assert 0.3 < changed < 0.56


def test_each_op_does_what_its_name_says():
    image = _images(n=1)[0].astype(jnp.float32)
    ops = augment._colour_ops(9.0, 255.0)
    identity, brightness, saturation, contrast, solarize, posterize, autocontrast = ops
    chex.assert_trees_all_equal(identity(image, 1.0), image)
    chex.assert_trees_all_close(brightness(image, -1.0), image * 0.73, rtol=1e-6)
    grey = saturation(image, -1.0 / 0.27)  # factor 0: the luma in every channel
    chex.assert_trees_all_close(grey, jnp.broadcast_to(grey[..., :1], grey.shape), atol=1e-4)
    flat = contrast(image, -1.0 / 0.27)  # factor 0: the mean luma everywhere
    np.testing.assert_allclose(np.asarray(flat).std(), 0.0, atol=1e-3)
    threshold = 255 * (1 - 9 / 30)
    chex.assert_trees_all_equal(solarize(image, 1.0),
                                jnp.where(image >= threshold, 255 - image, image))
    # posterize at magnitude 9 keeps 7 bits: the levels' lowest bit cleared
    chex.assert_trees_all_equal(posterize(image, 1.0), (image.astype(jnp.int32) & ~1)
                                .astype(jnp.float32))
    stretched = autocontrast(image * 0.5 + 20, 1.0)
    np.testing.assert_allclose(np.asarray(stretched).min(axis=(0, 1)), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(stretched).max(axis=(0, 1)), 255.0, rtol=1e-6)


def test_the_crop_and_flip_of_a_step_do_not_depend_on_the_colour_ops():
    """A run resumed after the colour ops were added draws the crops and flips it drew before."""
    images = _images()
    key = augment.step_key(0, 5)
    geometric = augment.augment(images, key, 2, True)
    coloured = augment.augment(images, key, 2, True, colour_ops=2, colour_probability=1.0)
    expected = augment.colour_jitter(geometric, jax.random.fold_in(key, augment._COLOUR_STREAM),
                                     2, 1.0)
    chex.assert_trees_all_equal(coloured, expected)
