"""Writes an SVHN-like stand-in (coloured 32x32x3 MNIST digits) as an ``npz`` for the WRN configs.

SVHN cannot be downloaded on a machine without internet; this stand-in keeps what matters for
the WRN experiments in docs/SVHN.md: 32x32x3 inputs, 10 digit classes, and colour and contrast
that vary from image to image (each digit gets a random foreground and background colour, so
some are faint, as in SVHN). It is not SVHN: its figures are no substitute for the paper's.

  python scripts/make_svhn_standin.py --mnist=../shared/data/mnist --out=runs/svhn_standin.npz
  python launch.py --config=experiments/svhn_lc.py:smoke --workdir=runs/standin_lc \\
      --config.data.source=npz --config.data.path=runs/svhn_standin.npz

``--extra=N`` also writes N extra training images (``config.data.extra``, the stand-in for the
references' generated images) as an ``npy`` directory (``--extra_out``): x_train.npy,
y_train.npy and source_index.npy, the training digit each was made from. They are made from the
stand-in's own training digits only (the first ``--train`` MNIST training digits, never a test
digit), each with new colours, a random position in the 32x32 frame (shifted up to 2 pixels
from the centre) and a noise texture over background and ink; the stand-in itself is unchanged
(its colours come from a generator of their own):

  python scripts/make_svhn_standin.py --mnist=../shared/data/mnist --out=runs/svhn_standin.npz \\
      --extra=60000 --extra_out=runs/svhn_standin_extra
  python launch.py --config=experiments/svhn_lc.py:smoke --workdir=runs/standin_extra \\
      --config.data.source=npz --config.data.path=runs/svhn_standin.npz \\
      --config.data.extra.source=npy --config.data.extra.path=runs/svhn_standin_extra \\
      --config.data.extra.share=0.75
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lclmt_jax import data  # noqa: E402

SIZE, SHIFT = 32, 2  # the frame, and how far an extra image's digit moves from its centre
EXTRA_CHUNK = 10000  # extra images made and written at a time
MAX_NOISE = 0.15  # an extra image's noise texture: standard deviation up to this, per image


def paint(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 32, 32, 1) ink in [0, 1] -> float (N, 32, 32, 3): per image, a random background
    colour where there is no ink and a random foreground colour where there is."""
    background = rng.uniform(0, 1, (len(ink), 1, 1, 3))
    foreground = rng.uniform(0, 1, (len(ink), 1, 1, 3))
    return background + (foreground - background) * ink


def to_pixels(images: np.ndarray) -> np.ndarray:
    return np.round(255 * np.clip(images, 0, 1)).astype(np.uint8)


def colour_digits(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 28, 28) uint8 digits -> (N, 32, 32, 3) uint8: per image, background + ink colour."""
    pad = (SIZE - digits.shape[1]) // 2
    ink = np.pad(digits, ((0, 0), (pad, pad), (pad, pad))).astype(np.float32)[..., None] / 255
    return to_pixels(paint(ink, rng))


def shifted(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 32, 32, 1) ink in [0, 1], each digit at a random position in
    the frame (its top-left corner anywhere in [0, 4]^2)."""
    ink = np.zeros((len(digits), SIZE, SIZE, 1), np.float32)
    corners = rng.integers(0, 2 * SHIFT + 1, (len(digits), 2))
    height, width = digits.shape[1:]
    for row in range(2 * SHIFT + 1):
        for column in range(2 * SHIFT + 1):
            at = (corners[:, 0] == row) & (corners[:, 1] == column)
            ink[at, row:row + height, column:column + width, 0] = digits[at] / 255
    return ink


def extra_images(digits: np.ndarray, count: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` new (32, 32, 3) uint8 images from the (N, 28, 28) ``digits`` -- the only
    digits it sees -- and the index of the digit each was made from: a digit drawn at random,
    moved (``shifted``), painted in new colours (``paint``) and overlaid with Gaussian noise of
    a random strength (up to ``MAX_NOISE``), a texture over background and ink alike."""
    source = rng.integers(0, len(digits), count)
    images = paint(shifted(digits[source], rng), rng)
    strength = rng.uniform(0, MAX_NOISE, (count, 1, 1, 1))
    images += strength * rng.standard_normal(images.shape)
    return to_pixels(images), source


def write_extra(directory: str, digits: np.ndarray, labels: np.ndarray, count: int,
                seed: int) -> None:
    """Writes ``count`` extra images of ``digits`` (labelled as the digit they come from) as an
    ``npy`` source directory, ``EXTRA_CHUNK`` at a time into memory-mapped files, so that a
    million images never sit in memory at once; with ``source_index.npy``, their provenance."""
    os.makedirs(directory, exist_ok=True)
    images = np.lib.format.open_memmap(os.path.join(directory, 'x_train.npy'), mode='w+',
                                       dtype=np.uint8, shape=(count, SIZE, SIZE, 3))
    rng = np.random.default_rng([seed, 1])  # apart from the stand-in's own colours
    sources = np.zeros(count, np.int64)
    for start in range(0, count, EXTRA_CHUNK):
        stop = min(start + EXTRA_CHUNK, count)
        images[start:stop], sources[start:stop] = extra_images(digits, stop - start, rng)
    images.flush()
    np.save(os.path.join(directory, 'y_train.npy'), labels[sources].astype(np.int32))
    np.save(os.path.join(directory, 'source_index.npy'), sources)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--mnist', required=True, help='directory of the four MNIST IDX files')
    parser.add_argument('--out', required=True, help='the .npz file to write')
    parser.add_argument('--train', type=int, default=20000, help='train examples (first N)')
    parser.add_argument('--test', type=int, default=2000, help='test examples (first N)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--extra', type=int, default=0,
                        help='extra training images to write, made from the train digits')
    parser.add_argument('--extra_out', default='runs/svhn_standin_extra',
                        help='the npy directory the extra images go to')
    args = parser.parse_args()
    mnist = data.load_dataset(argparse.Namespace(source='idx', path=args.mnist))
    rng = np.random.default_rng(args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez(args.out,
             x_train=colour_digits(mnist.train_images[:args.train, ..., 0], rng),
             y_train=mnist.train_labels[:args.train],
             x_test=colour_digits(mnist.test_images[:args.test, ..., 0], rng),
             y_test=mnist.test_labels[:args.test])
    print(f'wrote {args.out}: {min(args.train, len(mnist.train_labels))} train, '
          f'{min(args.test, len(mnist.test_labels))} test, 32x32x3')
    if args.extra > 0:
        write_extra(args.extra_out, mnist.train_images[:args.train, ..., 0],
                    mnist.train_labels[:args.train], args.extra, args.seed)
        print(f'wrote {args.extra_out}: {args.extra} extra train images from the '
              f'{min(args.train, len(mnist.train_labels))} train digits (source=npy)')


if __name__ == '__main__':
    main()
