"""AOL, almost-orthogonal layers (Prach & Lampert, 2022): 1-Lipschitz by construction.

A rescaling recomputed from the kernel on every call (``aol_scale``) makes the layer's norm <= 1
whatever the parameters are. Training uses the constant 1; the sound bound does not assume it but
measures, in float64, the operator the forward pass really applies (``aol_upper_bound``), so
rounding that broke the construction would show as a bound above 1; the float32 rounding step is
the conv with the kernel's run-time rescaling error (``aol_kernel_error``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lclmt_jax import bounds, convolution, rounding
from lclmt_jax.layers import LAYERS, record
from lclmt_jax.rounding.arithmetic import UP, f64

Array = jax.Array

# AOL's epsilon: it only shrinks the rescaling, so any value >= 0 keeps the layer 1-Lipschitz.
AOL_EPSILON = 1e-6


def gram_row_sums(kernel: Array) -> Array:
    """r_i = sum_Δ sum_j |(G_Δ)_ij| (``gram_kernel``): the absolute row sums of C^T C at input
    channel i, the same at every position. G_{-Δ} = G_Δ^T, so summing over all Δ makes rows and
    columns alike."""
    return jnp.sum(jnp.abs(bounds.gram_kernel(kernel)), axis=(0, 1, 3))


def aol_scale(kernel: Array, epsilon: float = AOL_EPSILON) -> Array:
    """AOL's per-input-channel rescaling d_i = (r_i + eps)^(-1/2), r = ``gram_row_sums``.

    Why C·diag(d) is 1-Lipschitz (the Schur test; Gershgorin on diag(r) - C^T C): M = C^T C is
    symmetric, so for every x
        x^T M x <= sum_ab |M_ab|·|x_a|·|x_b| <= sum_ab |M_ab|·(x_a² + x_b²)/2 = sum_a r_a x_a²,
    i.e. M <= diag(r) (Loewner order; r_a is r_i for a = (position, channel i), as the block rows
    are alike). With D = diag(d) repeated over positions, |C D|² = λ_max(D M D) and
    D M D <= D diag(r) D = diag(r/(r + eps)) <= I, so |C D|_2 <= 1. For a dense kernel C is
    the matrix itself. For a conv on a finite input with zero padding and any stride the layer is
    x -> S R C E D x (E: zero extension to the plane, an isometry that commutes with D; R: the
    restriction to the computed outputs; S: keeping every s-th one), so its norm is at most
    |S|·|R|·|C D|·|E| <= 1. Equality holds for orthogonal columns (and for the identity conv).
    """
    return jax.lax.rsqrt(gram_row_sums(kernel) + epsilon)


def aol_kernel(kernel: Array, epsilon: float = AOL_EPSILON) -> Array:
    """The kernel AOL applies: ``kernel`` with input channel i scaled by d_i (``aol_scale``); the
    same for a dense (in, out) and an HWIO kernel. Its norm is <= 1 for every ``kernel``."""
    return kernel * aol_scale(kernel, epsilon)[:, None]


def aol_upper_bound(kernel: Array, input_shape: Sequence[int],
                    stride: int | Sequence[int] = 1, padding: convolution.ConvPadding = 'SAME',
                    epsilon: float = AOL_EPSILON) -> float:
    """Guaranteed upper bound on the norm of an AOL conv with raw HWIO parameter ``kernel`` on
    inputs of ``input_shape`` (a dense layer is the 1×1 conv on one pixel).

    Not the constant 1 of ``aol_scale``'s proof: the exact norm of the rescaled kernel as the
    float32 and the float64 forward passes compute it (``aol_kernel``), in float64, with its
    stride and zero padding, by the circular embedding (``bounds.conv_upper_bound``, sound for
    zero padding as its grid holds the padded input). It is <= 1 + 1e-6 unless rounding broke
    the construction, and then it says so.
    """
    kernels = [k for (k,) in bounds.in_both_precisions(lambda k: (aol_kernel(k, epsilon),),
                                                        kernel)]
    return max(bounds.conv_upper_bound(k, input_shape, stride, padding) for k in kernels)


def aol_kernel_error(kernel: Any, arithmetic: rounding.Arithmetic,
                     epsilon: float = AOL_EPSILON) -> np.ndarray:
    """Entrywise D >= |computed aol_kernel(K) - exact| for ``aol_kernel`` computed in
    ``arithmetic`` (the rescaling that AOL layers recompute from K on every call).

    G_Δ (``bounds.gram_kernel``) has inner products of m = k_h·k_w·C_out terms, so
    |G^ - G| <= gamma_m·(the Gram of |K|) + underflow; r_i sums P = (2k_h - 1)(2k_w - 1)·C_in
    of their absolute values, so |r^ - r| <= ((1 + gamma_P)(1 + gamma_m) - 1)·A_i + underflow,
    A = ``gram_row_sums(|K|)`` >= r. Adding eps (itself rounded, u·eps) is one more
    rounding: |s^ - (r + eps)| <= rho·(r + eps). rsqrt (A3) then gives
    d^/d in [(1 + rho)^-1/2 (1 - e_rsqrt), (1 - rho)^-1/2 (1 + e_rsqrt)], and K·d^ one last
    rounding: D = kappa_i·|K_aol| + 2·tau with kappa_i = (1 - rho_i)^-1/2 (1 + e_rsqrt)(1 + u) - 1.
    """
    w = f64(kernel)
    conv_kernel = w.reshape((1, 1, *w.shape)) if w.ndim == 2 else w
    k_h, k_w, c_in, c_out = conv_kernel.shape
    with jax.enable_x64(True):
        rows = np.asarray(gram_row_sums(jnp.asarray(w)))
        abs_rows = np.asarray(gram_row_sums(jnp.asarray(np.abs(w)))) * UP
        exact = np.asarray(aol_kernel(jnp.asarray(w), epsilon))
    u = arithmetic.unit
    g_products = rounding.gamma(k_h * k_w * c_out, arithmetic)
    g_sums = rounding.gamma((2 * k_h - 1) * (2 * k_w - 1) * c_in, arithmetic)
    terms = (2 * k_h - 1) * (2 * k_w - 1) * c_in * (k_h * k_w * c_out + 1)
    gram_error = ((1 + g_sums) * (1 + g_products) - 1) * abs_rows + 8 * terms * arithmetic.tiny
    denominator = rows + epsilon
    rho = (gram_error + u * epsilon + u * (denominator + gram_error + u * epsilon)) / denominator
    if np.any(rho >= 0.5):
        raise rounding.NotAnalysable('an AOL kernel too small for a rounding bound of its '
                                     'rescaling')
    kappa = (1 - rho)**-0.5 * (1 + arithmetic.rsqrt_error) * (1 + u) - 1
    return (kappa[:, None] * np.abs(exact) + 2 * arithmetic.tiny) * UP


def rounding_step(kernel: Any, bias: Any, input_shape: Sequence[int], strides: tuple[int, int],
                  pads: tuple[tuple[int, int], tuple[int, int]],
                  epsilon: float = AOL_EPSILON) -> rounding.Conv:
    """The float32 rounding of an AOL conv: the conv with the exactly rescaled kernel, plus the
    error of the rescaling the network computes at run time (``aol_kernel_error``)."""
    with jax.enable_x64(True):
        applied = np.asarray(aol_kernel(jnp.asarray(f64(kernel)), epsilon))
    return rounding.Conv(applied, bias, input_shape, strides, pads,
                         kernel_error=functools.partial(aol_kernel_error, kernel,
                                                        epsilon=epsilon))


def dirac_init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """The identity conv (HWIO): 1 from input channel i to output channel i < min(C_in, C_out) at
    the tap ((k_h - 1)//2, (k_w - 1)//2), 0 elsewhere. That tap is the one 'SAME' padding (XLA:
    the odd pixel at the end) aligns with the output's own pixel, so at stride 1 the conv starts
    as x -> x on the shared channels. ``key`` is unused (the identity is deterministic)."""
    del key
    k_h, k_w, c_in, c_out = shape
    identity = jnp.eye(c_in, c_out, dtype=dtype)
    return jnp.zeros(shape, dtype).at[(k_h - 1) // 2, (k_w - 1) // 2].set(identity)


def neighbour_pairs_init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """A k×k HWIO kernel whose output channels 2m and 2m + 1 copy input channel m, for
    m < min(C_in, C_out // 2): 2m at the centre tap (the pixel itself, as ``dirac_init``), 2m + 1
    at the m-th of the other taps (a neighbour; taps cycle in row-major order). ``key`` is unused.

    Why not the identity: after the conv comes MinMax on channel pairs (2m, 2m + 1), which then
    gives (min, max) of a pixel and its neighbour, i.e. their mean ± |x_p - x_q|/2: an edge
    strength whose sign does not depend on whether the ink is darker than its background. With
    the identity, MinMax pairs two *colour* channels of one pixel, the network starts nearly
    linear in the image, and where ink and background colours are random per image (SVHN, the
    stand-in) the class signal of a linear map averages to zero: measured on the stand-in, the
    AOL LipConvNet stays at loss ln 10 from the identity, while a linear probe on the features of
    this init reaches 0.87 test accuracy against 0.20 (scripts/aol_colour_diagnosis.py). Every
    output channel reads one tap of one input channel, so C^T C is diagonal: AOL's rescaling is
    1/sqrt(2) on the channels used, exactly orthogonal columns up to that scale.
    """
    del key
    k_h, k_w, c_in, c_out = shape
    centre = ((k_h - 1) // 2, (k_w - 1) // 2)
    neighbours = [(a, b) for a in range(k_h) for b in range(k_w) if (a, b) != centre]
    kernel = np.zeros(shape, np.float32)
    for m in range(min(c_in, c_out // 2)):
        kernel[centre[0], centre[1], m, 2 * m] = 1.0
        row, column = neighbours[m % len(neighbours)]
        kernel[row, column, m, 2 * m + 1] = 1.0
    return jnp.asarray(kernel, dtype)


@LAYERS.register('aol')
class AOLConv(nn.Module):
    """Almost-orthogonal conv (NHWC, HWIO kernel): the kernel with input channel i scaled by
    d_i = (sum_Δ sum_j |G_Δ|_ij + eps)^(-1/2), G the Gram kernel of C^T C on the plane
    (``aol_scale``), recomputed on every call; then an ordinary zero-padded conv.

    The references use stride 1 and 'SAME' zero padding; any stride and padding is 1-Lipschitz
    too (the layer is a compression of the plane conv, see ``aol_scale``), and the sound
    bound (``aol_upper_bound`` on the input's spatial shape) covers each case exactly as
    it is computed. ``kernel_init`` None: ``neighbour_pairs_init`` for k×k kernels (pixel and
    neighbour side by side for the MinMax that follows; the identity, ``dirac_init``, as AOL's
    IdentityCenterInitializer and 1LipschitzLayersCompared's Dirac init, does not learn on
    randomly coloured digits), and orthogonal for 1×1. Bound: 1 in training.
    """

    features: int
    kernel_size: int | tuple[int, int] = 3
    strides: int | tuple[int, int] = 1
    padding: convolution.ConvPadding = 'SAME'
    use_bias: bool = True
    kernel_init: Any = None
    epsilon: float = AOL_EPSILON

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False):
        kernel_hw = convolution.pair(self.kernel_size, 'kernel_size')
        strides = convolution.pair(self.strides, 'strides')
        pads = convolution.conv_padding(self.padding, x.shape[1:3], kernel_hw, strides)
        init = self.kernel_init or (nn.initializers.orthogonal() if kernel_hw == (1, 1)
                                    else neighbour_pairs_init)
        kernel = self.param('kernel', init, (*kernel_hw, x.shape[-1], self.features))
        y = convolution.conv(x, aol_kernel(kernel, self.epsilon).astype(x.dtype), strides, pads)
        bias = None
        if self.use_bias:
            bias = self.param('bias', nn.initializers.zeros, (self.features,))
            y = y + bias.astype(x.dtype)
        if sound:
            record(self, lambda: rounding_step(kernel, bias, x.shape[1:], strides, pads,
                                               self.epsilon))
            return y, aol_upper_bound(kernel, x.shape, strides, pads, self.epsilon)
        return y, 1.0

    @classmethod
    def same_width(cls, width: int, kernel_size: int) -> AOLConv:
        """A k×k AOL conv from ``width`` to ``width`` channels (``LipConvNet``'s layer)."""
        return cls(width, kernel_size)
