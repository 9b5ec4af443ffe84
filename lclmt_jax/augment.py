"""Data augmentation on the device, inside the jitted train step (``config.augment``).

Pure functions of a uint8 NHWC batch and a key: a random crop with zero padding (each image is
shifted by up to ``padding`` pixels along each axis, the pixels it leaves behind are 0) and a
random horizontal flip. The key of a step is derived from (seed, step) alone (``step_key``), so
a run draws the same augmentations on 1 and N devices (``jax.random`` values do not depend on
how the batch is sharded) and a resumed run continues exactly.

Off by default (``crop_padding = 0``, ``flip = False``): flipping digits changes their meaning
(2/5, 3, 7), so only natural images turn ``flip`` on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# Folded into the seed's key first, so augmentation draws never coincide with the epoch order's
# (``input_pipeline.epoch_key`` folds the epoch number into the same seed).
_AUGMENT_STREAM = 0x41554720


def step_key(seed: int, step: Array | int) -> Array:
    """The key of the augmentations of training step ``step``: a function of (seed, step)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _AUGMENT_STREAM), step)


def random_crop(images: Array, key: Array, padding: int) -> Array:
    """Pads every image with ``padding`` zeros on each side and crops back to its size at a
    uniformly random offset in [0, 2·padding]² per image: a shift by (dy, dx) in
    [-padding, padding]², zeros where the shifted image left the frame."""
    if padding == 0:
        return images
    height, width = images.shape[1:3]
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (images.shape[0], 2), 0, 2 * padding + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                     (height, width, image.shape[-1]))

    return jax.vmap(crop)(padded, offsets)


def random_flip(images: Array, key: Array) -> Array:
    """Mirrors each image left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def augment(images: Array, key: Array, crop_padding: int = 0, flip: bool = False) -> Array:
    """The configured augmentations of a uint8 NHWC batch (same shape and dtype); the identity
    when both are off."""
    crop_key, flip_key = jax.random.split(key)
    images = random_crop(images, crop_key, crop_padding)
    return random_flip(images, flip_key) if flip else images


def check_fits(crop_padding: int, image_shape: tuple[int, ...]) -> None:
    """Refuses, in one line, shifts of half the image or more: they move most of every image out
    of the frame (a 28x28 digit shifted by up to 100 pixels is mostly zeros)."""
    side = min(image_shape[:2])
    if 2 * crop_padding >= side:
        raise ValueError(f'augment.crop_padding={crop_padding} shifts the {image_shape[0]}x'
                         f'{image_shape[1]} images by up to half their size or more; it must be '
                         f'below {(side + 1) // 2}')
