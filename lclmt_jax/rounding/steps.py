"""The steps of the float32 analysis (equations (3)-(7) of ``lclmt_jax.rounding``): a step
maps the walk's ``State`` to the next. Dense and conv layers (the matrix products every layer
family is built from), exact maps, shifts and residual sums; a layer family with a rounding of
its own (batch norm, pooling, a kernel computed at run time) builds on these in its module."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from lclmt_jax import bounds, convolution
from lclmt_jax.rounding.arithmetic import (
    FLOAT32,
    FLOAT64,
    UP,
    Affine,
    Arithmetic,
    Bound,
    NotAnalysable,
    State,
    f64,
    gamma,
    norms,
    overflow_limit,
)


class Step(Protocol):
    """One step of a network: maps a ``State`` to the next (equations (5) and (7))."""

    def advance(self, state: State) -> State: ...


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
    """x -> x @ kernel + bias (kernel (n, m)); Lipschitz |kernel|_2 (``bounds``), or
    ``lipschitz`` when the recording layer has computed that sound bound already."""

    def __init__(self, kernel: Any, bias: Any = None, lipschitz: float | None = None):
        self.kernel = f64(kernel)
        self.bias = np.zeros(self.kernel.shape[1]) if bias is None else f64(bias)
        self.lipschitz = bounds.dense_upper_bound(self.kernel) if lipschitz is None else lipschitz
        self.abs_kernel = np.abs(self.kernel)
        self.constants = LayerConstants(
            self.kernel.shape[0], self.kernel.shape[1], bounds.dense_upper_bound(self.abs_kernel),
            float(np.linalg.norm(self.bias)) * UP, float(self.abs_kernel.sum(0).max()) * UP)

    def forward(self, a: np.ndarray) -> np.ndarray:
        return a @ self.kernel + self.bias

    def rounding(self, a: np.ndarray, spread: Affine, arithmetic: Arithmetic) -> Bound:
        return affine_layer_bound(self.constants, norms(np.abs(a) @ self.abs_kernel), norms(a),
                                  spread, arithmetic)


def conv64(a: np.ndarray, kernel: np.ndarray, strides: tuple[int, int],
            pads: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    with jax.enable_x64(True):
        return np.asarray(convolution.conv(jnp.asarray(a, jnp.float64), jnp.asarray(kernel),
                                           strides, pads))


class Conv(Primitive):
    """A conv (HWIO kernel, stride, zero padding) on inputs of ``input_shape`` (H, W, C_in);
    Lipschitz ``bounds.conv_upper_bound`` on that shape, or ``lipschitz`` when the layer that
    records the step has computed that sound bound already.

    ``kernel_error``: for a kernel the network computes at run time from its parameters (a
    LiResNet block's I + s·K·diag(gamma)), a function of the ``Arithmetic`` returning an
    entrywise bound D >= |computed kernel - kernel|. The computed conv then also differs by
    conv_{K^ - K}(x^), entrywise at most conv_D(|x^|): L2 norm <= |conv_D(|a|)|_2 + |conv_D|·d,
    added to (4), whose terms use |K| + D (the computed kernel's magnitudes).
    """

    def __init__(self, kernel: Any, bias: Any, input_shape: Sequence[int],
                 strides: int | Sequence[int] = 1, padding: convolution.ConvPadding = 'SAME',
                 kernel_error: Callable[[Arithmetic], np.ndarray] | None = None,
                 lipschitz: float | None = None):
        self.kernel = f64(kernel)
        self.kernel_errors = {} if kernel_error is None else {
            arithmetic.name: f64(kernel_error(arithmetic)) for arithmetic in (FLOAT32, FLOAT64)}
        self.strides = convolution.pair(strides, 'strides')
        hw = tuple(input_shape[:2])
        self.pads = convolution.conv_padding(padding, hw, self.kernel.shape[:2], self.strides)
        out_hw = tuple((n + lo + hi - k) // s + 1 for n, (lo, hi), k, s in
                       zip(hw, self.pads, self.kernel.shape[:2], self.strides, strict=True))
        self.output_shape = (*out_hw, self.kernel.shape[3])
        self.bias = None if bias is None else f64(bias)
        # |K| + D: magnitudes of the kernel as computed (D of float32 covers float64's)
        self.abs_kernel = np.abs(self.kernel) + self.kernel_errors.get('float32', 0.0)
        self.shape = tuple(input_shape)
        self.lipschitz = self._norm(self.kernel) if lipschitz is None else lipschitz
        self.error_norms = {name: self._norm(error) for name, error in self.kernel_errors.items()}
        bias_norm = 0.0 if self.bias is None else float(np.linalg.norm(self.bias))
        self.constants = LayerConstants(
            int(np.prod(self.kernel.shape[:3])), int(np.prod(self.output_shape)),
            self._norm(self.abs_kernel), float(np.sqrt(out_hw[0] * out_hw[1])) * bias_norm * UP,
            float(self.abs_kernel.sum((0, 1, 2)).max()) * UP)

    def _norm(self, kernel: np.ndarray) -> float:
        return bounds.conv_upper_bound(kernel, self.shape, self.strides, self.pads)

    def forward(self, a: np.ndarray) -> np.ndarray:
        y = conv64(a, self.kernel, self.strides, self.pads)
        return y if self.bias is None else y + self.bias

    def rounding(self, a: np.ndarray, spread: Affine, arithmetic: Arithmetic) -> Bound:
        products = norms(conv64(np.abs(a), self.abs_kernel, self.strides, self.pads))
        bound = affine_layer_bound(self.constants, products, norms(a), spread, arithmetic)
        error = self.kernel_errors.get(arithmetic.name)
        if error is None:
            return bound
        perturbation = (norms(conv64(np.abs(a), error, self.strides, self.pads))
                        + self.error_norms[arithmetic.name] * spread)
        return Bound(bound.rounding + perturbation, bound.magnitude)


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
    coordinates (exact in floating point) and is 1-Lipschitz, e.g. an exactly-rounded activation
    (MinMax, ReLU) or a LipConvNet's channel padding and downsampling; ``forward`` runs it in
    float64."""

    def __init__(self, function: Callable[[jax.Array], jax.Array]):
        self.function = function

    def forward(self, a: np.ndarray) -> np.ndarray:
        with jax.enable_x64(True):
            return np.asarray(self.function(jnp.asarray(a, jnp.float64)))



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
