"""The arithmetic model of the float32 analysis (A1-A4 of ``lclmt_jax.rounding``) and the
per-example quantities every step works with: affine bounds in the radius, a step's bound, the
state of the walk, norms rounded up and the overflow check."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from lclmt_jax import bounds

# Every norm and allowance is multiplied by this (module docstring of ``lclmt_jax.rounding``).
UP = 1.0 + bounds.SOUND_SLACK


def f64(value: Any) -> np.ndarray:
    """A concrete parameter as float64 (a traced one means the analysis ran under ``jit``)."""
    return bounds.require_concrete(value, 'a rounding analysis')


class NotAnalysable(ValueError):
    """A network whose float32 rounding this module cannot bound (no declared analysis)."""


class Arithmetic(NamedTuple):
    """A floating-point format as A1-A4 use it."""

    name: str
    unit: float          # u: unit roundoff of round-to-nearest
    tiny: float          # tau: smallest normal number (underflow and flush-to-zero terms)
    largest: float       # values must stay below this (half the range): no overflow
    rsqrt_error: float   # relative error of rsqrt


FLOAT32 = Arithmetic('float32', 2.0**-24, 2.0**-126, 2.0**127, 2.0**-18)
FLOAT64 = Arithmetic('float64', 2.0**-53, 2.0**-1022, 2.0**1023, 2.0**-47)


def gamma(n: int, arithmetic: Arithmetic) -> float:
    """gamma_n = n·u/(1 - n·u), rounded up (n·u and 1 - n·u are exact in float64)."""
    nu = n * arithmetic.unit
    if nu >= 0.5:
        raise NotAnalysable(f'an inner product of length {n} is too long for a {arithmetic.name} '
                            'rounding bound')
    return nu / (1.0 - nu) * (1.0 + 2.0**-50)


@dataclasses.dataclass(frozen=True)
class Affine:
    """c + s·r per example (arrays c, s >= 0): a bound that grows linearly with the radius r."""

    const: np.ndarray
    slope: np.ndarray
    __array_ufunc__ = None  # ``array * Affine`` calls ``Affine.__rmul__``

    @staticmethod
    def zeros(count: int) -> Affine:
        return Affine(np.zeros(count), np.zeros(count))

    def __add__(self, other: Affine | np.ndarray | float) -> Affine:
        if isinstance(other, Affine):
            return Affine(self.const + other.const, self.slope + other.slope)
        return Affine(self.const + other, self.slope)

    __radd__ = __add__

    def __mul__(self, factor: np.ndarray | float) -> Affine:
        """Scaled by a non-negative factor (a number or an array broadcasting with c)."""
        return Affine(self.const * factor, self.slope * factor)

    __rmul__ = __mul__

    def __getitem__(self, index: Any) -> Affine:
        return Affine(self.const[index], self.slope[index])

    def at(self, radius: np.ndarray | float) -> np.ndarray:
        return self.const + self.slope * radius


class Bound(NamedTuple):
    """What one step adds, per example, for one arithmetic."""

    rounding: Affine   # >= |computed output - exact step of the same computed input|_2
    magnitude: Affine  # >= |every value the step computes| (the overflow check, A4)


class State(NamedTuple):
    """The analysis after some steps, per example (``count`` = N).

    Attributes:
      center: a, the float64 activation at x, (N, ...).
      reference: rho >= |a - x_k(x)|_2, the float64 rounding so far, (N,).
      error: e >= sup_z |x^_k(z) - x_k(z)|_2, the float32 rounding so far.
      spread: d >= sup_z |x^_k(z) - a|_2.
      limit: the radius below which no value computed so far overflows (A4), (N,).
    """

    center: np.ndarray
    reference: np.ndarray
    error: Affine
    spread: Affine
    limit: np.ndarray


def norms(a: np.ndarray) -> np.ndarray:
    """Per-example L2 norms of (N, ...) float64 rows, rounded up.

    Each row is scaled by its largest entry first, so squares neither underflow (which would
    understate the norm of tiny activations) nor overflow below the largest float.
    """
    a = np.asarray(a, np.float64)
    flat = np.abs(a.reshape(len(a), int(np.prod(a.shape[1:]))))
    if flat.size == 0:
        return np.zeros(len(flat))
    with np.errstate(all='ignore'):
        largest = flat.max(axis=1)
        scale = np.where(largest > 0, largest, 1.0)
        return largest * np.sqrt(np.sum(np.square(flat / scale[:, None]), axis=1)) * UP


def overflow_limit(magnitude: Affine, arithmetic: Arithmetic) -> np.ndarray:
    """The radius r below which c + s·r < ``arithmetic.largest`` (0 if not even at r = 0)."""
    const, slope = np.broadcast_arrays(magnitude.const, magnitude.slope)
    with np.errstate(divide='ignore', invalid='ignore'):
        radius = np.where(slope > 0, (arithmetic.largest - const) / slope, np.inf)
    fits = (const < arithmetic.largest) & ~np.isnan(slope)
    return np.where(fits, radius, 0.0)
