"""Data augmentation on the device, inside the jitted train step (``config.augment``).

Pure functions of a uint8 NHWC batch and a key: a random crop with zero padding (each image is
shifted by up to ``padding`` pixels along each axis, the pixels it leaves behind are 0), a
random horizontal flip and RandAugment-style colour ops (``colour_jitter``), in that order, as
LiResNet's and BRONet's torchvision pipelines (RandomCrop, RandomHorizontalFlip, then
RandAugment applied with probability 1/2). The key of a step is derived from (seed, step) alone
(``step_key``), so a run draws the same augmentations on 1 and N devices (``jax.random`` values
do not depend on how the batch is sharded) and a resumed run continues exactly.

Off by default (``crop_padding = 0``, ``flip = False``, ``colour_ops = 0``): flipping digits
changes their meaning (2/5, 3, 7), so only natural images turn ``flip`` and the colour ops on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# Folded into the seed's key first, so augmentation draws never coincide with the epoch order's
# (``input_pipeline.epoch_key`` folds the epoch number into the same seed).
_AUGMENT_STREAM = 0x41554720
# Folded into a step's key for the colour ops, so the crop and flip draws of a step stay those
# of runs made before the colour ops existed.
_COLOUR_STREAM = 0x434F4C52


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


def _grey(image: Array) -> Array:
    """Luma (ITU-R 601, as PIL's ``convert('L')``) of an HWC image, kept HW1; 1 channel: itself."""
    if image.shape[-1] != 3:
        return image
    return image @ jnp.array([0.299, 0.587, 0.114], image.dtype)[:, None]


def _blend(image: Array, base: Array | float, factor: Array, top: float) -> Array:
    """PIL's ``ImageEnhance``: base + factor·(image - base), clipped to [0, top]."""
    return jnp.clip(base + factor * (image - base), 0.0, top)


def _autocontrast(image: Array, top: float) -> Array:
    """Each channel stretched to [0, top]; a constant channel is left alone."""
    low = image.min(axis=(0, 1), keepdims=True)
    high = image.max(axis=(0, 1), keepdims=True)
    span = high - low
    return jnp.where(span > 0, (image - low) * top / jnp.where(span > 0, span, 1.0), image)


def _colour_ops(magnitude: float, top: float) -> tuple:
    """The ops ``(image, sign) -> image`` on a float HWC image in [0, top], at torchvision's
    RandAugment ``magnitude`` (0..30 of its 31 bins): the colour ops of its list (identity,
    brightness, colour i.e. saturation, contrast, solarize, posterize, autocontrast). The
    enhancement factors are 1 ± 0.9·magnitude/30 (``sign`` ±1), the solarize threshold
    top·(1 - magnitude/30), and posterize keeps 8 - round(magnitude/7.5) bits of each 0-255
    level."""
    strength = 0.9 * magnitude / 30
    threshold = top * (1.0 - magnitude / 30)
    step = 2 ** (8 - max(1, 8 - round(magnitude / 7.5))) * top / 255  # one kept level's width
    return (
        lambda image, sign: image,
        lambda image, sign: _blend(image, 0.0, 1.0 + sign * strength, top),
        lambda image, sign: _blend(image, _grey(image), 1.0 + sign * strength, top),
        lambda image, sign: _blend(image, _grey(image).mean(), 1.0 + sign * strength, top),
        lambda image, sign: jnp.where(image >= threshold, top - image, image),
        lambda image, sign: jnp.floor(image / step + 1e-4) * step,
        lambda image, sign: _autocontrast(image, top),
    )


def colour_jitter(images: Array, key: Array, num_ops: int, probability: float = 0.5,
                  magnitude: float = 9.0) -> Array:
    """RandAugment-style colour augmentation of an NHWC batch (uint8 in 0-255 or float in [0,
    1]; same shape, dtype and range): each image, with ``probability``, gets ``num_ops`` ops in
    a row, each drawn uniformly from ``_colour_ops`` with a random sign, all per image and
    determined by ``key``. uint8 results are rounded to the nearest level. ``num_ops`` = 0: the
    batch itself. Geometric ops (rotations, shears) are left out: the crops and flips cover
    shifts and mirrors."""
    if num_ops == 0:
        return images
    top = 255.0 if images.dtype == jnp.uint8 else 1.0
    ops = _colour_ops(magnitude, top)

    def one(image, image_key):
        keys = jax.random.split(image_key, 3)
        choices = jax.random.randint(keys[0], (num_ops,), 0, len(ops))
        signs = jnp.where(jax.random.bernoulli(keys[1], 0.5, (num_ops,)), 1.0, -1.0)
        out = image.astype(jnp.float32)
        for index in range(num_ops):
            out = jax.lax.switch(choices[index], ops, out, signs[index])
        out = jnp.where(jax.random.bernoulli(keys[2], probability), out,
                        image.astype(jnp.float32))
        return jnp.round(out).astype(image.dtype) if top == 255.0 else out.astype(image.dtype)

    return jax.vmap(one)(images, jax.random.split(key, images.shape[0]))


def is_on(crop_padding: int = 0, flip: bool = False, colour_ops: int = 0, **colour) -> bool:
    """Whether the settings (``config.augment``'s fields) change any image."""
    del colour
    return bool(crop_padding or flip or colour_ops)


def augment(images: Array, key: Array, crop_padding: int = 0, flip: bool = False,
            colour_ops: int = 0, colour_probability: float = 0.5,
            colour_magnitude: float = 9.0) -> Array:
    """The configured augmentations of a uint8 NHWC batch (same shape and dtype; arguments as the
    fields of ``config.augment``); the identity when all are off. The crop and flip draws are
    those of (``key``) alone, whether the colour ops are on or not."""
    crop_key, flip_key = jax.random.split(key)
    images = random_crop(images, crop_key, crop_padding)
    images = random_flip(images, flip_key) if flip else images
    return colour_jitter(images, jax.random.fold_in(key, _COLOUR_STREAM), colour_ops,
                         colour_probability, colour_magnitude)


def check_fits(crop_padding: int, image_shape: tuple[int, ...]) -> None:
    """Refuses, in one line, shifts of half the image or more: they move most of every image out
    of the frame (a 28x28 digit shifted by up to 100 pixels is mostly zeros)."""
    side = min(image_shape[:2])
    if 2 * crop_padding >= side:
        raise ValueError(f'augment.crop_padding={crop_padding} shifts the {image_shape[0]}x'
                         f'{image_shape[1]} images by up to half their size or more; it must be '
                         f'below {(side + 1) // 2}')
