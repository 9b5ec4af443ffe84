"""Float32 rounding: a guaranteed bound on how far the network users run is from the exact one.

The certificates of ``certify`` are proofs about the *exact* network f: the stored float32
parameters in real arithmetic. Users run the *float32* network f^ (``RestoredModel.logits``),
whose prediction can differ from f's where the margin is small. This module bounds, for every
example x and radius r, affinely in r,

    E_tj(r) >= sup_{|z - x|_2 <= r} |(f^_t - f^_j)(z) - (f_t - f_j)(z)|,          (1)

so that f^ predicts t on the whole (open) ball when, for every j != t,

    (f_t - f_j)(x) - K_tj·r - E_tj(r) > 0                                           (2)

(K_tj the certificate's Lipschitz constants, ``margins``); ``certify.certified_radii`` solves (2)
for the largest r in closed form, since E_tj(r) = E0_tj + E1_tj·r.

Assumptions (the arithmetic model)
----------------------------------
A1. IEEE 754 binary32 with round-to-nearest: every correctly rounded operation returns
    (a op b)(1 + d) + h with |d| <= u = 2^-24 and |h| <= 2·tau, tau = 2^-126 the smallest normal
    number. h covers gradual underflow (<= 2^-150), flush-to-zero of results (< tau) and
    denormals-are-zero on intermediate operands (< tau); XLA:CPU flushes subnormals (FTZ/DAZ),
    so these terms are needed, although they are ~1e-38. Operands that are parameters or inputs
    read as zero move by less than tau each.
A2. Every output of a dense or conv layer is the bias plus a sum of its n products w_i·x_i,
    in any order or tree, with or without FMA, or accumulated in higher precision: true of
    XLA:CPU (Eigen/oneDNN GEMM, im2col and direct convolutions) and of GEMM-based GPU
    kernels -- at ``Precision.HIGHEST``: a TF32 or bfloat16 pass has u = 2^-11 or 2^-8 and
    voids the bound. ``RestoredModel.logits`` traces the network under
    ``jax.default_matmul_precision('highest')``, which sets ``precision=HIGHEST`` on every
    ``dot_general`` and convolution it emits. Not covered: Winograd or FFT convolution
    algorithms (a GPU autotuner may pick them) and fast-math reassociation (off by default in
    XLA).
A3. +, -, ×, ÷, sqrt are correctly rounded; rsqrt (batch norm) has relative error at most
    2^-18 (XLA lowers it to 1/sqrt or to a 2-ulp library rsqrt).
A4. Nothing overflows. Not assumed but checked: every step bounds the magnitude of every value
    it computes on the whole ball, and the radius is cut where that bound reaches 2^127 (half
    the float32 range, which also absorbs the float64 rounding of the check itself).

The same model with u = 2^-53, tau = 2^-1022 describes the float64 evaluation that
``certify.logits_float64`` performs and the analysis below runs (its own rounding is bounded
too: the margins in (2) are float64 numbers, not exact ones).

Inner products (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., §3.1)
----------------------------------------------------------------------------------
With gamma_n = n·u/(1 - n·u): each term of b + sum_i w_i x_i passes through at most n + 1
roundings in any summation order, so by A1

    |fl(b + w·x) - (b + w·x)| <= gamma_{n+1}·(|w|·|x| + |b|)
                                  + tau·(4(n + 1)(1 + gamma_{n+1}) + |w|_1 + |x|_1),     (3)

the last term from the <= 2n + 1 operations' h (each <= 2·tau, amplified by <= 1 + gamma by
later roundings) and from operands read as zero (|w_i x_i - w'_i x'_i| <= tau(|w_i| + |x_i|)).
Taking L2 over the m outputs of a layer with kernel W (entrywise |W|) and bias b:

    delta(x^) <= gamma_{n+1}·(| |W||x^| |_2 + |b|_2) + tau·sqrt(m)·(4(n+1)(1 + gamma_{n+1})
                 + max_j |w_j|_1 + sqrt(n)·|x^|_2),                                       (4)

n the fan-in (kernel height·width·input channels for a conv, zero padding included) and
|x|_1 <= sqrt(n)|x|_2 over one output's receptive field.

The other steps
---------------
* ReLU, MinMax, GroupSort and flattening return exactly the function of their computed input
  (max and sorting only select operands): delta = 0, Lipschitz 1.
* Batch norm with fixed statistics, y = (x - mu)·m + beta, m = gamma/sqrt(var + eps), computed
  as three roundings on a multiplier m^ = m(1 + theta), |theta| <= (1 + 2^-18)(1 + u)^3(1 + s) - 1
  (s = |eps64 - eps32|/(var + eps32) when the float32 epsilon differs from the exact one):
  delta <= c·|(x^ - mu)·m|_2 + u·|beta broadcast|_2 + 4·tau·sqrt(size)·(1 + max|m|),
  c = (1 + theta)(1 + u)^3 - 1.
* Global average pooling, a sum of P terms then one division (or a product with a rounded 1/P):
  per channel gamma_{P+1}·(1/P)·sum_i |x^_i| (+ underflow), hence
  delta <= gamma_{P+1}/P·| sum_i |x^_i| |_2 + 6·tau·sqrt(C).
* A residual sum s + f: u·|s^ + f^| + 3·tau per element, plus each branch's own rounding.
* A shift x - c by a float32 constant (``Shift``): u·|x^ - c|_2 + 2·tau·sqrt(size).
* A kernel the network computes at run time (a LiResNet block's I + s·K·diag(gamma)): an
  entrywise bound D on the computed kernel's error adds |conv_D(|x^|)|_2 (``Conv``).
* A last-layer-normalised head (LLN): the computed columns w_c/|w_c| are within a relative
  kappa_c of the exact ones (``normalisation_error``), added to each logit's rounding (``Head``).

Propagation, and the ball
-------------------------
Let x_k(z) be the exact activation after step k at input z, x^_k(z) the computed one, L_k a
guaranteed Lipschitz constant of step k (the library's sound bounds) and a_k the float64
activation at the centre x. Then, writing e_k >= sup_z |x^_k(z) - x_k(z)| and
rho_k >= |a_k - x_k(x)| (float64 rounding),

    e_{k+1} <= L_k·e_k + delta^32_k,      rho_{k+1} <= L_k·rho_k + delta^64_k,            (5)

since x^_{k+1} - x_{k+1} = [fl(step(x^_k)) - step(x^_k)] + [step(x^_k) - step(x_k)]. Every
delta needs norms of the computed input x^_k(z) at every z of the ball. With the *spread*
d_k >= sup_z |x^_k(z) - a_k|_2, entrywise |x^_k| <= |a_k| + |x^_k - a_k|, so for instance

    | |W||x^_k(z)| |_2 <= | |W||a_k| |_2 + | |W| |_2·d_k,                                  (6)

with | |W| |_2 the operator norm of the entrywise-absolute kernel, bounded soundly as the library
bounds norms (``bounds.dense_upper_bound``: SVD; ``bounds.conv_upper_bound``: the conv on the
actual input shape) and | |W||a_k| |_2 computed per example in float64. The spread follows
|x^_{k+1}(z) - a_{k+1}| <= delta^32_k + L_k·d_k + delta^64_k:

    d_0 = r + e_0,   d_{k+1} = L_k·d_k + delta^32_k + delta^64_k,                          (7)

with e_0 = u·(|x|_2 + r) + tau·sqrt(n) the rounding of a float64 input to float32 (0 for
float32 inputs). Every bound is a sum of products of non-negative constants with d, so e_k and
d_k are affine in r with non-negative coefficients (``Affine``): E_tj is linear in r and (2) has
a closed-form solution.

The head f = W h + b ends the network: with h^ the computed body output,

    |(f^_t - f^_j) - (f_t - f_j)| <= |w_t - w_j|_2·e_body + eps_t + eps_j,

eps_c the rounding (3) of logit c, with |w_c|·|h^| <= |w_c|·|a| + |w_c|_2·d_body. The float64
margin used in (2) is within |w_t - w_j|_2·rho_body + eps64_t + eps64_j of the exact one, so
E_tj adds both precisions' terms.

A residual block y = s(x) + f(x) is one step of (5) and (7) whose Lipschitz constant is the
block's sound bound (``bounds.residual_sum``, BN folded) and whose delta is the two branches'
own rounding -- each branch walked by (5) and (7) from zero error and the block's spread -- plus
the rounding of the sum.

All bound arithmetic is float64 on non-negative numbers: every norm and the final allowance are
multiplied by 1 + ``bounds.SOUND_SLACK`` (1e-6), far above the relative rounding (< 1e-9) of
those few float64 sums; ``certify`` rounds the margins and the radius down.

Declaring a model's rounding (for new layers and models)
-------------------------------------------------------
A model is analysed by the function registered under its ``MODELS`` name in ``ANALYSES``
(``mlp``, ``cnn`` and ``wrn`` below; ``liresnet`` in ``models/liresnet.py``):
``(model, variables, input_shape) -> Network(steps, head)``, which re-walks the concrete
network (the model's fields, ``variables`` a ``Parameters`` view of its 'params' and
'batch_stats') as a sequence of steps. A model without one cannot be certified for float32
(``NotAnalysable``, one line). To add one, in the model's own file::

    from lclmt_jax import rounding

    @rounding.ANALYSES.register('liresnet')
    def _liresnet_rounding(model, variables, input_shape):
        params = variables['params']
        stem = rounding.Conv(params['stem']['kernel'], params['stem']['bias'], input_shape)
        steps = (stem, rounding.Activation('relu'), ...)
        return rounding.Network(steps, rounding.Head(params['head']['kernel'],
                                                     params['head']['bias']))

A new layer is a step: a ``Primitive`` with ``lipschitz`` (its sound bound), ``forward(a)``
(the exact map on float64 batches) and ``rounding(a, spread, arithmetic) -> Bound`` (delta of
its computed output on every input within ``spread`` of ``a``, and the magnitude of every value
it computes, both ``Affine`` in r), using ``affine_layer_bound`` for anything that is a matrix
product; or a composite with ``advance(state) -> State`` like ``Residual``. Two checks guard a
declaration: every parameter must be read (``Parameters.unread``), and the walk's float64 logits
must agree with the model's within the float64 rounding bound (``certify.certified_radii``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from lclmt_jax import bounds
from lclmt_jax.registry import Registry

_UP = 1.0 + bounds.SOUND_SLACK


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


class Step(Protocol):
    """One step of a network: maps a ``State`` to the next (equations (5) and (7))."""

    def advance(self, state: State) -> State: ...


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
        return largest * np.sqrt(np.sum(np.square(flat / scale[:, None]), axis=1)) * _UP


def overflow_limit(magnitude: Affine, arithmetic: Arithmetic) -> np.ndarray:
    """The radius r below which c + s·r < ``arithmetic.largest`` (0 if not even at r = 0)."""
    const, slope = np.broadcast_arrays(magnitude.const, magnitude.slope)
    with np.errstate(divide='ignore', invalid='ignore'):
        radius = np.where(slope > 0, (arithmetic.largest - const) / slope, np.inf)
    fits = (const < arithmetic.largest) & ~np.isnan(slope)
    return np.where(fits, radius, 0.0)


def advance(step: Primitive, state: State) -> State:
    """Equations (5) and (7) for a step whose rounding is local (``Primitive``)."""
    count = len(state.center)
    own = step.rounding(state.center, state.spread, FLOAT32)
    reference = step.rounding(state.center, Affine.zeros(count), FLOAT64)
    lipschitz = step.lipschitz
    limit = np.minimum(overflow_limit(own.magnitude, FLOAT32),
                       overflow_limit(reference.magnitude, FLOAT64))
    return State(step.forward(state.center),
                 lipschitz * state.reference + reference.rounding.const,
                 lipschitz * state.error + own.rounding,
                 lipschitz * state.spread + own.rounding + reference.rounding.const,
                 np.minimum(state.limit, limit))


def walk(steps: Sequence[Step], state: State) -> State:
    """The state after ``steps`` in order."""
    for step in steps:
        state = step.advance(state)
    return state


class Primitive:
    """A step with local rounding: ``lipschitz`` (a sound bound of the exact map), ``forward``
    (the exact map on float64 batches) and ``rounding`` (see the module docstring)."""

    lipschitz: float = 1.0

    def forward(self, a: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def rounding(self, a: np.ndarray, spread: Affine, arithmetic: Arithmetic) -> Bound:
        raise NotImplementedError

    def advance(self, state: State) -> State:
        return advance(self, state)


def _f64(value: Any) -> np.ndarray:
    return bounds.require_concrete(value, 'a rounding analysis')


class LayerConstants(NamedTuple):
    """The parameter-only data of (4) for one dense or conv layer (float64, rounded up)."""

    fan_in: int           # n
    outputs: int          # m, per example
    abs_norm: float       # | |W| |_2, the operator norm of the entrywise-absolute kernel
    bias_norm: float      # |b|_2 over all m outputs (the bias broadcast over positions)
    max_row_l1: float     # max_j |w_j|_1


def affine_layer_bound(constants: LayerConstants, products: np.ndarray, inputs: np.ndarray,
                       spread: Affine, arithmetic: Arithmetic) -> Bound:
    """Bound (4) on every input within ``spread`` of the centres, via (6).

    ``products`` = | |W||a| |_2 and ``inputs`` = |a|_2 per example (rounded up). Every partial
    sum and product of an output is at most (1 + gamma)·(|w_j|·|x^| + |b_j|) + underflow (the
    same analysis on a partial sum), and each output is at most the L2 norm: the magnitude.
    """
    g = gamma(constants.fan_in + 1, arithmetic)
    terms = constants.abs_norm * spread + products + constants.bias_norm
    # 8(n + 1): twice (4)'s, which also covers underflow in the float64 sums that computed
    # ``products`` (at most 2n·tau per output in the same arithmetic model).
    underflow = (arithmetic.tiny * np.sqrt(constants.outputs)) * (
        8.0 * (constants.fan_in + 1) * (1 + g) + constants.max_row_l1
        + np.sqrt(constants.fan_in) * (spread + inputs))
    return Bound(g * terms + underflow, (1 + g) * terms + underflow)


class Dense(Primitive):
    """x -> x @ kernel + bias (kernel (n, m)); Lipschitz |kernel|_2 (``bounds``)."""

    def __init__(self, kernel: Any, bias: Any = None):
        self.kernel = _f64(kernel)
        self.bias = np.zeros(self.kernel.shape[1]) if bias is None else _f64(bias)
        self.lipschitz = bounds.dense_upper_bound(self.kernel)
        self.abs_kernel = np.abs(self.kernel)
        self.constants = LayerConstants(
            self.kernel.shape[0], self.kernel.shape[1], bounds.dense_upper_bound(self.abs_kernel),
            float(np.linalg.norm(self.bias)) * _UP, float(self.abs_kernel.sum(0).max()) * _UP)

    def forward(self, a: np.ndarray) -> np.ndarray:
        return a @ self.kernel + self.bias

    def rounding(self, a: np.ndarray, spread: Affine, arithmetic: Arithmetic) -> Bound:
        return affine_layer_bound(self.constants, norms(np.abs(a) @ self.abs_kernel), norms(a),
                                  spread, arithmetic)


def _conv64(a: np.ndarray, kernel: np.ndarray, strides: tuple[int, int],
            pads: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    with jax.enable_x64(True):
        return np.asarray(bounds.conv(jnp.asarray(a, jnp.float64), jnp.asarray(kernel), strides,
                                      pads))


class Conv(Primitive):
    """The conv of ``LipschitzConv`` (HWIO kernel, stride, zero padding) on inputs of
    ``input_shape`` (H, W, C_in); Lipschitz ``bounds.conv_upper_bound`` on that shape.

    ``kernel_error``: for a kernel the network computes at run time from its parameters (a
    LiResNet block's I + s·K·diag(gamma)), a function of the ``Arithmetic`` returning an
    entrywise bound D >= |computed kernel - kernel|. The computed conv then also differs by
    conv_{K^ - K}(x^), entrywise at most conv_D(|x^|): L2 norm <= |conv_D(|a|)|_2 + |conv_D|·d,
    added to (4), whose terms use |K| + D (the computed kernel's magnitudes).
    """

    def __init__(self, kernel: Any, bias: Any, input_shape: Sequence[int],
                 strides: int | Sequence[int] = 1, padding: bounds.ConvPadding = 'SAME',
                 kernel_error: Callable[[Arithmetic], np.ndarray] | None = None):
        self.kernel = _f64(kernel)
        self.kernel_errors = {} if kernel_error is None else {
            arithmetic.name: _f64(kernel_error(arithmetic)) for arithmetic in (FLOAT32, FLOAT64)}
        self.strides = bounds.pair(strides, 'strides')
        hw = tuple(input_shape[:2])
        self.pads = bounds.conv_padding(padding, hw, self.kernel.shape[:2], self.strides)
        out_hw = tuple((n + lo + hi - k) // s + 1 for n, (lo, hi), k, s in
                       zip(hw, self.pads, self.kernel.shape[:2], self.strides, strict=True))
        self.output_shape = (*out_hw, self.kernel.shape[3])
        self.bias = None if bias is None else _f64(bias)
        # |K| + D: magnitudes of the kernel as computed (D of float32 covers float64's)
        self.abs_kernel = np.abs(self.kernel) + self.kernel_errors.get('float32', 0.0)
        self.shape = tuple(input_shape)
        self.lipschitz = bounds.conv_upper_bound(self.kernel, self.shape, self.strides,
                                                 self.pads)
        self.error_norms = {name: self._norm(error) for name, error in self.kernel_errors.items()}
        bias_norm = 0.0 if self.bias is None else float(np.linalg.norm(self.bias))
        self.constants = LayerConstants(
            int(np.prod(self.kernel.shape[:3])), int(np.prod(self.output_shape)),
            self._norm(self.abs_kernel), float(np.sqrt(out_hw[0] * out_hw[1])) * bias_norm * _UP,
            float(self.abs_kernel.sum((0, 1, 2)).max()) * _UP)

    def _norm(self, kernel: np.ndarray) -> float:
        return bounds.conv_upper_bound(kernel, self.shape, self.strides, self.pads)

    def forward(self, a: np.ndarray) -> np.ndarray:
        y = _conv64(a, self.kernel, self.strides, self.pads)
        return y if self.bias is None else y + self.bias

    def rounding(self, a: np.ndarray, spread: Affine, arithmetic: Arithmetic) -> Bound:
        products = norms(_conv64(np.abs(a), self.abs_kernel, self.strides, self.pads))
        bound = affine_layer_bound(self.constants, products, norms(a), spread, arithmetic)
        error = self.kernel_errors.get(arithmetic.name)
        if error is None:
            return bound
        perturbation = (norms(_conv64(np.abs(a), error, self.strides, self.pads))
                        + self.error_norms[arithmetic.name] * spread)
        return Bound(bound.rounding + perturbation, bound.magnitude)


class BatchNorm(Primitive):
    """Batch norm with fixed statistics, y = (x - mean)·m + beta, m = scale/sqrt(var + eps);
    Lipschitz ``bounds.batch_norm_upper_bound``. The exact map uses eps in float64; the
    float32 network's eps is float32(eps), a relative change s of m folded into theta."""

    def __init__(self, scale: Any, bias: Any, mean: Any, var: Any, epsilon: float):
        variance = _f64(var)
        self.mean, self.beta = _f64(mean), _f64(bias)
        self.multiplier = _f64(scale) / np.sqrt(variance + float(epsilon))
        self.lipschitz = bounds.batch_norm_upper_bound(scale, var, epsilon)
        self.max_multiplier = self.lipschitz  # max |m|, rounded up
        eps32 = float(np.float32(epsilon))
        shift = float(np.max(abs(float(epsilon) - eps32) / (variance + min(eps32, epsilon))))
        self.eps_shift = {'float32': shift * _UP, 'float64': 0.0}

    def forward(self, a: np.ndarray) -> np.ndarray:
        return (a - self.mean) * self.multiplier + self.beta

    def rounding(self, a: np.ndarray, spread: Affine, arithmetic: Arithmetic) -> Bound:
        u = arithmetic.unit
        # 1 + theta >= m^/m: the computed multiplier against the exact one (rsqrt, two
        # roundings, and the float32 eps)
        shift = self.eps_shift[arithmetic.name]
        multiplier = (1 + arithmetic.rsqrt_error) * (1 + u)**3 * (1 + shift)
        c = multiplier * (1 + u)**3 - 1
        size = a[0].size
        positions = size // self.mean.size
        scaled = norms((a - self.mean) * self.multiplier) + self.max_multiplier * spread
        beta = float(np.sqrt(positions) * np.linalg.norm(self.beta)) * _UP
        underflow = 4 * arithmetic.tiny * np.sqrt(size) * (1 + self.max_multiplier)
        centred = norms(a - self.mean) + spread  # |x^ - mean|_2, an intermediate
        magnitude = (1 + c) * (max(1.0, self.max_multiplier) * centred + beta) + underflow
        return Bound(c * scaled + u * beta + underflow, magnitude)


class Exact(Primitive):
    """A step that returns exactly its function of the computed input (no rounding, no new
    magnitudes): only selects, sorts or reshapes operands."""

    def rounding(self, a: np.ndarray, spread: Affine, arithmetic: Arithmetic) -> Bound:
        return Bound(Affine.zeros(len(a)), Affine.zeros(len(a)))


class Shift(Primitive):
    """x -> x - offset (a scalar exact in float32, e.g. LiResNet's 1/2): Lipschitz 1, one
    rounding per element, fl(x^ - c) = (x^ - c)(1 + d) + h:
    delta <= u·(|a - c|_2 + d) + 2·tau·sqrt(size)."""

    def __init__(self, offset: float):
        if float(np.float32(offset)) != offset:
            raise NotAnalysable(f'a shift by {offset!r} is not exact in float32')
        self.offset = float(offset)

    def forward(self, a: np.ndarray) -> np.ndarray:
        return a - self.offset

    def rounding(self, a: np.ndarray, spread: Affine, arithmetic: Arithmetic) -> Bound:
        values = norms(a - self.offset) + spread
        underflow = 2 * arithmetic.tiny * np.sqrt(a[0].size)
        return Bound(arithmetic.unit * values + underflow,
                     (1 + arithmetic.unit) * values + underflow)


class Flatten(Exact):
    """(N, ...) -> (N, features): exact, an isometry."""

    def forward(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(len(a), -1)


class ExactMap(Exact):
    """A jax function of the activations that only selects, moves, drops or zero-pads
    coordinates (exact in floating point) and is 1-Lipschitz, e.g. a LipConvNet's channel
    padding and downsampling; ``forward`` runs it in float64."""

    def __init__(self, function: Callable[[jax.Array], jax.Array]):
        self.function = function

    def forward(self, a: np.ndarray) -> np.ndarray:
        with jax.enable_x64(True):
            return np.asarray(self.function(jnp.asarray(a, jnp.float64)))

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """The per-example shape it maps ``input_shape`` to (traced, nothing computed)."""
        example = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
        return tuple(jax.eval_shape(self.function, example).shape[1:])


class Activation(ExactMap):
    """An ``ACTIVATIONS`` entry that only selects operands (exact in floating point) and is
    1-Lipschitz: ``EXACT_ACTIVATIONS``. Any other activation is not analysable."""

    EXACT_ACTIVATIONS = ('relu', 'minmax', 'groupsort4')

    def __init__(self, name: str):
        from lclmt_jax.activations import ACTIVATIONS

        if name not in self.EXACT_ACTIVATIONS:
            raise NotAnalysable(f'activation {name!r} has no rounding analysis (exact ones: '
                                f'{", ".join(self.EXACT_ACTIVATIONS)})')
        activation = ACTIVATIONS.get(name)
        super().__init__(lambda x: activation(x)[0])  # (output, bound) -> output


class AveragePool(Primitive):
    """Global average pooling over (H, W) of NHWC inputs; Lipschitz 1/sqrt(H·W) (``bounds``)."""

    def __init__(self, height: int, width: int):
        self.positions = height * width
        self.lipschitz = bounds.average_pool_bound(height, width, sound=True)

    def forward(self, a: np.ndarray) -> np.ndarray:
        return a.mean(axis=(1, 2))

    def rounding(self, a: np.ndarray, spread: Affine, arithmetic: Arithmetic) -> Bound:
        g = gamma(self.positions + 1, arithmetic)
        sums = norms(np.abs(a).sum(axis=(1, 2))) + np.sqrt(self.positions) * spread
        underflow = 6 * arithmetic.tiny * np.sqrt(a.shape[-1])
        return Bound((g / self.positions) * sums + underflow, (1 + g) * sums + underflow)


class Residual:
    """y = shortcut(x) + branch(x) (an empty shortcut is the identity), with ``lipschitz`` a
    sound bound of the whole block: one step of (5)/(7) whose delta is the branches' own
    rounding (each walked from zero error and the block's spread) plus that of the sum."""

    def __init__(self, branch: Sequence[Step], shortcut: Sequence[Step], lipschitz: float):
        self.branch, self.shortcut, self.lipschitz = tuple(branch), tuple(shortcut), lipschitz

    def advance(self, state: State) -> State:
        count = len(state.center)
        start = State(state.center, np.zeros(count), Affine.zeros(count), state.spread,
                      state.limit)
        f, s = walk(self.branch, start), walk(self.shortcut, start)
        total = f.center + s.center
        size = total[0].size
        norm = norms(total)
        spreads = f.spread + s.spread
        add32 = FLOAT32.unit * (spreads + norm) + 3 * FLOAT32.tiny * np.sqrt(size)
        add64 = FLOAT64.unit * norm + 3 * FLOAT64.tiny * np.sqrt(size)
        own = f.error + s.error + add32
        reference = f.reference + s.reference + add64
        limit = np.minimum(overflow_limit((1 + FLOAT32.unit) * (spreads + norm) + add32, FLOAT32),
                           overflow_limit(Affine((1 + FLOAT64.unit) * norm + add64,
                                                 np.zeros(count)), FLOAT64))
        lipschitz = self.lipschitz
        return State(total, lipschitz * state.reference + reference,
                     lipschitz * state.error + own,
                     lipschitz * state.spread + own + reference,
                     np.minimum(np.minimum(f.limit, s.limit), limit))


class Allowance(NamedTuple):
    """Per example: the rounding allowance E_tj(r) of (1), and what checks it.

    Attributes:
      logits: the analysis' own float64 logits, (N, C).
      body: e_body(r) + rho_body, (N,): multiplied by |w_t - w_j|_2.
      logit: eps_c(r) of each logit, both precisions, (N, C).
      reference: >= |float64 logits - exact logits| per class, (N, C).
      limit: the radius below which nothing overflows, (N,) (0: not certifiable at all).
      distances: |w_t - w_j|_2 of the head's columns, rounded up, (C, C).
    """

    logits: np.ndarray
    body: Affine
    logit: Affine
    reference: np.ndarray
    limit: np.ndarray
    distances: np.ndarray

    def pairs(self, labels: np.ndarray) -> Affine:
        """E_tj(r) for t = ``labels``: (N, C), rounded up (the j = t column is meaningless)."""
        rows = np.arange(len(labels))
        allowance = (self.distances[labels] * self.body[:, None] + self.logit
                     + self.logit[rows, labels][:, None])
        return _UP * allowance

    @staticmethod
    def concatenate(parts: Sequence[Allowance]) -> Allowance:
        join = lambda values: np.concatenate(values)  # noqa: E731
        affine = lambda values: Affine(join([v.const for v in values]),  # noqa: E731
                                       join([v.slope for v in values]))
        return Allowance(join([p.logits for p in parts]), affine([p.body for p in parts]),
                         affine([p.logit for p in parts]), join([p.reference for p in parts]),
                         join([p.limit for p in parts]), parts[0].distances)


def normalisation_error(kernel: Any, arithmetic: Arithmetic) -> np.ndarray:
    """Per column c of ``kernel``, kappa_c >= |computed w_c/|w_c| - exact|/|exact| entrywise
    (besides an absolute 2·tau per entry), for the normalisation ``w / sqrt(sum(w·w))`` of
    ``NormalizedHead`` (LLN) computed in ``arithmetic``.

    The sum S of n squares (non-negative terms) is computed within S·gamma_n + 4(n + 1)·tau
    (A1, A2); sqrt and the division add one rounding each, so the computed norm is
    N·(1 + nu) with sqrt(1 - gamma_n - 4(n + 1)·tau/S)·(1 - u) <= 1 + nu <=
    sqrt(1 + gamma_n + 4(n + 1)·tau/S)·(1 + u), and each entry w_i/N·(1 + d)/(1 + nu).
    A column whose sum of squares may underflow to 0 or overflow (A4) is refused.
    """
    w = _f64(kernel)
    n = w.shape[0]
    squares = np.sum(np.square(w), axis=0)
    u, g = arithmetic.unit, gamma(n, arithmetic)
    with np.errstate(divide='ignore', invalid='ignore'):
        underflow = 4.0 * (n + 1) * arithmetic.tiny / squares
        lower = np.sqrt(np.maximum(1.0 - g - underflow, 0.0)) * (1 - u)
        upper = np.sqrt(1.0 + g + underflow) * (1 + u)
        kappa = np.maximum((1 + u) / lower - 1, 1 - (1 - u) / upper)
    if not np.all(np.isfinite(kappa)):
        raise NotAnalysable('a normalised head column is too small for a rounding bound')
    if np.any((1 + g) * squares + underflow * squares >= arithmetic.largest):
        raise NotAnalysable(f'a normalised head column is too large: its squared norm overflows '
                            f'{arithmetic.name}')
    return kappa * _UP


def aol_kernel_error(kernel: Any, arithmetic: Arithmetic,
                     epsilon: float = bounds.AOL_EPSILON) -> np.ndarray:
    """Entrywise D >= |computed aol_kernel(K) - exact| for ``bounds.aol_kernel`` computed in
    ``arithmetic`` (the rescaling that AOL layers recompute from K on every call).

    G_Δ (``bounds.gram_kernel``) has inner products of m = k_h·k_w·C_out terms, so
    |G^ - G| <= gamma_m·(the Gram of |K|) + underflow; r_i sums P = (2k_h - 1)(2k_w - 1)·C_in
    of their absolute values, so |r^ - r| <= ((1 + gamma_P)(1 + gamma_m) - 1)·A_i + underflow,
    A = ``bounds.gram_row_sums(|K|)`` >= r. Adding eps (itself rounded, u·eps) is one more
    rounding: |s^ - (r + eps)| <= rho·(r + eps). rsqrt (A3) then gives
    d^/d in [(1 + rho)^-1/2 (1 - e_rsqrt), (1 - rho)^-1/2 (1 + e_rsqrt)], and K·d^ one last
    rounding: D = kappa_i·|K_aol| + 2·tau with kappa_i = (1 - rho_i)^-1/2 (1 + e_rsqrt)(1 + u) - 1.
    """
    w = _f64(kernel)
    conv_kernel = w.reshape((1, 1, *w.shape)) if w.ndim == 2 else w
    k_h, k_w, c_in, c_out = conv_kernel.shape
    with jax.enable_x64(True):
        rows = np.asarray(bounds.gram_row_sums(jnp.asarray(w)))
        abs_rows = np.asarray(bounds.gram_row_sums(jnp.asarray(np.abs(w)))) * _UP
        exact = np.asarray(bounds.aol_kernel(jnp.asarray(w), epsilon))
    u = arithmetic.unit
    g_products = gamma(k_h * k_w * c_out, arithmetic)
    g_sums = gamma((2 * k_h - 1) * (2 * k_w - 1) * c_in, arithmetic)
    terms = (2 * k_h - 1) * (2 * k_w - 1) * c_in * (k_h * k_w * c_out + 1)
    gram_error = ((1 + g_sums) * (1 + g_products) - 1) * abs_rows + 8 * terms * arithmetic.tiny
    denominator = rows + epsilon
    rho = (gram_error + u * epsilon + u * (denominator + gram_error + u * epsilon)) / denominator
    if np.any(rho >= 0.5):
        raise NotAnalysable('an AOL kernel too small for a rounding bound of its rescaling')
    kappa = (1 - rho)**-0.5 * (1 + arithmetic.rsqrt_error) * (1 + u) - 1
    return (kappa[:, None] * np.abs(exact) + 2 * arithmetic.tiny) * _UP


class Head:
    """The dense head f = h @ kernel + bias that ends every network (``lipschitz_head``).

    ``normalized``: LLN (``models.NormalizedHead``), f = h @ (w_c/|w_c|)_c + bias with the
    normalisation computed by the network: ``kernel`` is the stored one, the analysis uses its
    float64 normalisation and adds each arithmetic's ``normalisation_error`` kappa_c to logit c,
    |h^·(w^_c computed - w^_c)| <= kappa_c·|h^|·|w^_c| + 2·tau·sqrt(n)·|h^|_2.
    """

    def __init__(self, kernel: Any, bias: Any = None, normalized: bool = False):
        self.kernel = _f64(kernel)
        self.normalized = normalized
        self.kappa = {arithmetic.name: normalisation_error(self.kernel, arithmetic) if normalized
                      else np.zeros(self.kernel.shape[1]) for arithmetic in (FLOAT32, FLOAT64)}
        if normalized:
            self.kernel = self.kernel / np.linalg.norm(self.kernel, axis=0, keepdims=True)
        self.bias = np.zeros(self.kernel.shape[1]) if bias is None else _f64(bias)
        self.abs_kernel = np.abs(self.kernel)
        self.column_norms = np.linalg.norm(self.kernel, axis=0) * _UP
        self.column_l1 = self.abs_kernel.sum(0) * _UP
        columns = self.kernel.T
        self.distances = np.sqrt(np.sum(np.square(columns[:, None] - columns[None]), -1)) * _UP

    def finish(self, state: State) -> Allowance:
        """The allowance from the body's final state (the module docstring's head rule)."""
        a = state.center
        logits = a @ self.kernel + self.bias
        fan_in = self.kernel.shape[0]
        weighted = (np.abs(a) @ self.abs_kernel) * _UP  # |a|·|w_c|
        inputs = norms(a)[:, None]
        limit = state.limit
        rounding = {}
        for arithmetic, spread in ((FLOAT32, state.spread[:, None]),
                                   (FLOAT64, Affine.zeros(len(a))[:, None])):
            g = gamma(fan_in + 1, arithmetic)
            features = self.column_norms * spread + weighted  # >= |h^|·|w_c| on the ball
            terms = features + np.abs(self.bias)
            underflow = arithmetic.tiny * (8.0 * (fan_in + 1) * (1 + g) + self.column_l1
                                           + np.sqrt(fan_in) * (spread + inputs))
            if self.normalized:
                underflow = underflow + 2 * arithmetic.tiny * np.sqrt(fan_in) * (spread + inputs)
            kappa = self.kappa[arithmetic.name]
            # (3) on the computed columns (magnitudes up to 1 + kappa), then their error
            rounding[arithmetic.name] = g * (terms + kappa * features) + kappa * features \
                + underflow
            limit = np.minimum(limit, overflow_limit((1 + g) * (1 + kappa) * terms + underflow,
                                                     arithmetic).min(axis=1))
        reference = rounding['float64'].const
        return Allowance(logits, state.error + state.reference,
                         rounding['float32'] + reference,
                         self.column_norms * state.reference[:, None] + reference,
                         limit, self.distances)


class Parameters:
    """A variables tree that records which leaves were read, so an analysis that forgets a
    layer is caught (``unread``)."""

    def __init__(self, tree: Any, path: str = ''):
        self._tree, self._path = tree, path
        self._read: set[str] = set()
        self._children: dict[str, Parameters] = {}

    def __getitem__(self, key: str) -> Any:
        value = self._tree[key]
        if isinstance(value, dict) or hasattr(value, 'keys'):
            return self._children.setdefault(key, Parameters(value, f'{self._path}{key}/'))
        self._read.add(key)
        return np.asarray(value)

    @property
    def raw(self) -> Any:
        """The underlying tree, for a module that reads it itself (marks nothing as read)."""
        return self._tree

    def unread(self) -> list[str]:
        missing = []
        for key in self._tree:
            if key in self._children:
                missing += self._children[key].unread()
            elif key not in self._read:
                missing.append(f'{self._path}{key}')
        return missing


class Network(NamedTuple):
    """A model as the analysis sees it: steps, then the head."""

    steps: tuple[Step, ...]
    head: Head


Builder = Callable[[Any, dict, tuple[int, ...]], Network]

# Model name (``models.MODELS``) -> the function that re-walks it; see the module docstring.
ANALYSES: Registry[Builder] = Registry('rounding analysis')


def model_name(model: Any) -> str:
    """The ``MODELS`` name of a model instance."""
    from lclmt_jax.models import MODELS

    for name in MODELS.names():
        if MODELS.get(name) is type(model):
            return name
    raise NotAnalysable(f'{type(model).__name__} is not a registered model; no float32 rounding '
                        'analysis')


def network(model: Any, variables: Any, input_shape: Sequence[int]) -> Network:
    """The model's registered rounding analysis on its concrete variables.

    Raises ``NotAnalysable`` (one line) for a model without one, or one that does not read all
    of the model's parameters.
    """
    name = model_name(model)
    if name not in ANALYSES.names():
        raise NotAnalysable(
            f'model {name!r} has no float32 rounding analysis (lclmt_jax.rounding.ANALYSES: '
            f'{", ".join(ANALYSES.names())}); declare one (see lclmt_jax/rounding.py) or '
            "certify the exact network with arithmetic='exact'")
    tree = {key: value for key, value in variables.items() if key in ('params', 'batch_stats')}
    params = Parameters(jax.device_get(tree))
    built = ANALYSES.get(name)(model, params, tuple(input_shape))
    unread = params.unread()
    if unread:
        raise NotAnalysable(f'the rounding analysis of model {name!r} does not cover '
                            f'{", ".join(unread[:3])}{" ..." if len(unread) > 3 else ""}')
    return built


def analyse(net: Network, images: np.ndarray, batch_size: int = 256) -> Allowance:
    """The allowance of every image (NHWC, any float dtype), in batches."""
    images = np.asarray(images)
    if not len(images):
        classes = net.head.kernel.shape[1]
        none = Affine(np.zeros((0, classes)), np.zeros((0, classes)))
        return Allowance(np.zeros((0, classes)), none[:, 0], none, np.zeros((0, classes)),
                         np.zeros(0), net.head.distances)
    parts = []
    for start in range(0, len(images), batch_size):
        x = np.asarray(images[start:start + batch_size], np.float64)
        count, size = len(x), x[0].size
        inputs = norms(x)
        finite = np.isfinite(x.reshape(count, -1)).all(axis=1)
        error = Affine(FLOAT32.unit * inputs + FLOAT32.tiny * np.sqrt(size),
                       np.full(count, FLOAT32.unit))
        spread = error + Affine(np.zeros(count), np.ones(count))
        limit = np.where(finite, overflow_limit(Affine(inputs, np.ones(count)), FLOAT32), 0.0)
        with np.errstate(all='ignore'):
            state = walk(net.steps, State(x, np.zeros(count), error, spread, limit))
            parts.append(net.head.finish(state))
    return Allowance.concatenate(parts)


# ----------------------------------------------------------------------------- the models


def dense_layers(params: Parameters, count: int, activation: str) -> list[Step]:
    """``models.dense_stack``'s layers ``LipschitzDense_0`` ... each followed by ``activation``."""
    steps: list[Step] = []
    for index in range(count):
        layer = params[f'LipschitzDense_{index}']
        steps += [Dense(layer['kernel'], layer['bias']), Activation(activation)]
    return steps


def _head(params: Parameters) -> Head:
    return Head(params['head']['kernel'], params['head']['bias'])


@ANALYSES.register('mlp')
def _mlp(model: Any, variables: Parameters, input_shape: tuple[int, ...]) -> Network:
    """``models.mlp.MLP``: flatten, dense + activation per hidden layer, head."""
    params = variables['params']
    steps = [Flatten(), *dense_layers(params, len(model.hidden_sizes), model.activation)]
    return Network(tuple(steps), _head(params))


@ANALYSES.register('cnn')
def _cnn(model: Any, variables: Parameters, input_shape: tuple[int, ...]) -> Network:
    """``models.cnn.CNN``: convs ('SAME', with bias) + activation, flatten, dense, head."""
    params = variables['params']
    steps: list[Step] = []
    shape = input_shape
    for index, (_, _, stride) in enumerate(model.convs):
        layer = params[f'LipschitzConv_{index}']
        conv = Conv(layer['kernel'], layer['bias'], shape, stride, 'SAME')
        steps += [conv, Activation(model.activation)]
        shape = conv.output_shape
    steps += [Flatten(), *dense_layers(params, len(model.dense), model.activation)]
    return Network(tuple(steps), _head(params))


def _batch_norm(params: Parameters, stats: Parameters) -> BatchNorm:
    from lclmt_jax.layers import LipschitzBatchNorm

    return BatchNorm(params['scale'], params['bias'], stats['mean'], stats['var'],
                     LipschitzBatchNorm.epsilon)


@ANALYSES.register('wrn')
def _wrn(model: Any, variables: Parameters, input_shape: tuple[int, ...]) -> Network:
    """``models.wrn.WideResNet``: stem conv, pre-activation blocks as ``Residual`` steps (each
    with the block's own sound bound, BN folded), BN, ReLU, average pool, head."""
    from lclmt_jax.models.wrn import PreActBlock

    params, stats = variables['params'], variables['batch_stats']
    stem = Conv(params['stem']['kernel'], None, input_shape, 1, 'SAME')
    steps: list[Step] = [stem]
    shape = stem.output_shape
    for group, (base, stride) in enumerate(zip((16, 32, 64), (1, 2, 2), strict=True)):
        for index in range((model.depth - 4) // 6):
            name = f'group{group + 1}_block{index + 1}'
            p, s = params[name], stats[name]
            features, strides = base * model.width, stride if index == 0 else 1
            block = PreActBlock(features, strides, model.fold_bn, model.zero_init_residual,
                                model.estimator)
            _, bound = block.apply({'params': p.raw, 'batch_stats': s.raw},
                                   jnp.zeros((1, *shape), jnp.float32), sound=True)
            bn1 = _batch_norm(p['bn1'], s['bn1'])
            conv1 = Conv(p['conv1']['kernel'], None, shape, strides, 'SAME')
            conv2 = Conv(p['conv2']['kernel'], None, conv1.output_shape, 1, 'SAME')
            branch = (bn1, Activation('relu'), conv1, _batch_norm(p['bn2'], s['bn2']),
                      Activation('relu'), conv2)
            shortcut = () if shape[-1] == features and strides == 1 else (
                bn1, Activation('relu'), Conv(p['shortcut']['kernel'], None, shape, strides,
                                              'SAME'))
            steps.append(Residual(branch, shortcut, float(bound)))
            shape = conv2.output_shape
    steps += [_batch_norm(params['final_bn'], stats['final_bn']), Activation('relu'),
              AveragePool(shape[0], shape[1])]
    return Network(tuple(steps), _head(params))
