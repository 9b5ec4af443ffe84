"""Zero-padded 2-D convolutions as linear maps: padding rules, the conv and its exact adjoint.

Every conv of the library (forward passes, power iterations, sound bounds, rounding analysis)
runs through :func:`conv` with the explicit padding :func:`conv_padding` returns, so all of them
see the same linear map. NHWC activations, HWIO kernels, cross-correlation as ``lax.conv``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

Array = jax.Array

ConvPadding = str | int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]]
CONV_DIMS = ('NHWC', 'HWIO', 'NHWC')


def pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    """``value`` as a pair of positive ints (an int means the same on both spatial axes)."""
    values = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != 2 or any(int(v) < 1 for v in values):
        raise ValueError(f'{what} must be a positive int or a pair of them, got {value!r}')
    return int(values[0]), int(values[1])


def conv_padding(padding: ConvPadding, input_hw: Sequence[int], kernel_hw: Sequence[int],
                 strides: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit zero padding ``((top, bottom), (left, right))`` of a conv on an H×W input.

    ``'SAME'`` follows XLA (output size ceil(n/s), total padding max((out-1)·s + k - n, 0), the
    odd pixel at the end), ``'VALID'`` is no padding, an int p pads p on every side, ``(ph, pw)``
    pads ph rows and pw columns on both sides, and ``((t, b), (l, r))`` is taken as is. Every conv
    in this file is run with the explicit padding returned here, so the forward pass, the power
    iteration and the sound bound all see the same linear map.
    """
    if isinstance(padding, str):
        if padding.upper() == 'VALID':
            pads = ((0, 0), (0, 0))
        elif padding.upper() == 'SAME':
            pads = []
            for n, k, s in zip(input_hw, kernel_hw, strides, strict=True):
                total = max((-(-n // s) - 1) * s + k - n, 0)
                pads.append((total // 2, total - total // 2))
            pads = tuple(pads)
        else:
            raise ValueError(f"padding must be 'SAME', 'VALID' or ints, got {padding!r}")
    elif isinstance(padding, (int, np.integer)):
        pads = ((int(padding),) * 2,) * 2
    elif len(padding) == 2 and all(isinstance(p, (int, np.integer)) for p in padding):
        pads = ((int(padding[0]),) * 2, (int(padding[1]),) * 2)
    else:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(pads) != 2 or any(p < 0 for side in pads for p in side):
        raise ValueError(f'conv padding must be non-negative, got {padding!r}')
    for n, k, (lo, hi) in zip(input_hw, kernel_hw, pads, strict=True):
        if n + lo + hi < k:
            raise ValueError(f'a {tuple(kernel_hw)} kernel does not fit the padded input '
                             f'{tuple(input_hw)} with padding {padding!r}')
    return pads


def conv(x: Array, kernel: Array, strides: tuple[int, int],
          pads: tuple[tuple[int, int], tuple[int, int]]) -> Array:
    """Bias-free cross-correlation (what ``lax.conv`` computes), NHWC input, HWIO kernel."""
    return jax.lax.conv_general_dilated(x, kernel, window_strides=strides, padding=pads,
                                        dimension_numbers=CONV_DIMS)


def conv_with_adjoint(x: Array, kernel: Array, strides: tuple[int, int],
                      pads: tuple[tuple[int, int], tuple[int, int]]
                      ) -> tuple[Array, Callable[[Array], Array]]:
    """``A x`` for the bias-free zero-padded conv A (``conv``) and A^T as a function.

    A^T is the transpose of the same linear map (``jax.vjp``), so <A x, y> = <x, A^T y> exactly
    in exact arithmetic, whatever the stride and padding: what SLL's 1-Lipschitz proof needs.
    """
    image, pullback = jax.vjp(lambda z: conv(z, kernel, strides, pads), x)
    return image, lambda y: pullback(y)[0]
