"""Writes an SVHN-like stand-in (coloured 32x32x3 MNIST digits) as an ``npz`` for the WRN configs.

SVHN cannot be downloaded on a machine without internet; this stand-in keeps what matters for
the WRN experiments in docs/SVHN.md: 32x32x3 inputs, 10 digit classes, and colour and contrast
that vary from image to image (each digit gets a random foreground and background colour, so
some are faint, as in SVHN). It is not SVHN: its figures are no substitute for the paper's.

  python scripts/make_svhn_standin.py --mnist=../shared/data/mnist --out=runs/svhn_standin.npz
  python launch.py --config=experiments/svhn_lc.py:smoke --workdir=runs/standin_lc \\
      --config.data.source=npz --config.data.path=runs/svhn_standin.npz
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lclmt_jax import data  # noqa: E402


def colour_digits(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 28, 28) uint8 digits -> (N, 32, 32, 3) uint8: per image, background + ink colour."""
    ink = np.pad(digits, ((0, 0), (2, 2), (2, 2))).astype(np.float32)[..., None] / 255
    background = rng.uniform(0, 1, (len(digits), 1, 1, 3))
    foreground = rng.uniform(0, 1, (len(digits), 1, 1, 3))
    return np.round(255 * (background + (foreground - background) * ink)).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--mnist', required=True, help='directory of the four MNIST IDX files')
    parser.add_argument('--out', required=True, help='the .npz file to write')
    parser.add_argument('--train', type=int, default=20000, help='train examples (first N)')
    parser.add_argument('--test', type=int, default=2000, help='test examples (first N)')
    parser.add_argument('--seed', type=int, default=0)
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


if __name__ == '__main__':
    main()
