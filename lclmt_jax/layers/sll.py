"""SLL, SDP-based Lipschitz layers (Araujo et al., 2023), in the corrected form of their
repository's commit 1abe5e1: 1-Lipschitz by construction.

A per-unit factor recomputed from the parameters on every call (``sll_scale``) makes the residual
layer 1-Lipschitz whatever the parameters are. Training uses the constant 1; the sound bound
measures, in float64, the operator the forward pass really applies (``sll_upper_bound``). The
float32 rounding is not analysed: the factor passes through exp, which the arithmetic model of
``lclmt_jax.rounding`` (A1-A3) does not bound, so an SLL network certifies the exact network
only (``arithmetic='exact'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lclmt_jax import bounds, convolution, rounding
from lclmt_jax.layers import LAYERS

Array = jax.Array

# SLL's guard against an all-zero Gram row (a dead inner unit); in the denominator only, where it
# only shrinks t.
SLL_TINY = 1e-12


def sll_scale(kernel: Array, q_raw: Array, tiny: float = SLL_TINY) -> Array:
    """SLL's per-inner-unit factor t_j = q_j / (sum_k R_jk q_k + tiny), q = exp(q_raw - max q_raw).

    ``kernel`` maps the features to the inner units (dense (n, m) or HWIO (k, k, n, m)); A is that
    map, R_jk = sum_Δ |(H_Δ)_jk| with H the blocks of A A^T on the plane (``gram_kernel`` of the
    kernel with its channel axes swapped: H_Δ = sum_p K_p^T K_{p+Δ}). Why |diag(√t) A|_2 <= 1
    (the weighted Schur test, Araujo et al.'s condition T - A A^T >= 0 with T = diag(1/t)): for
    N = A A^T and any x, with q_a > 0 the weight of a's unit,
        x^T N x <= sum_ab |N_ab|·|x_a|·|x_b| <= sum_ab |N_ab|·(x_a² q_b/q_a + x_b² q_a/q_b)/2
                 = sum_a x_a² (R q)_a / q_a,
    so N <= diag((R q)/q) <= diag(1/t) and diag(√t) N diag(√t) <= I. Zero padding and strides make
    A a compression S R C E of the plane conv C, and S R commutes with diag(√t), so
    |diag(√t) A|² <= |diag(√t) C C^T diag(√t)| <= 1. A unit whose q underflows to 0 gets t = 0
    and drops out; the rest keep positive weights and the argument applies to them. T depends on
    q only through ratios, so subtracting max q_raw changes nothing and keeps exp from overflowing.
    This is the corrected form: the original had an eps added to q_i on one side only, which
    made T too small and the layer not 1-Lipschitz.
    """
    swapped = jnp.swapaxes(bounds.as_conv_kernel(kernel), 2, 3)
    weights = jnp.exp(q_raw - jax.lax.stop_gradient(jnp.max(q_raw)))
    row_sums = jnp.sum(jnp.abs(bounds.gram_kernel(swapped)), axis=(0, 1))
    return weights / (jnp.dot(row_sums, weights, precision=jax.lax.Precision.HIGHEST) + tiny)


def sll_residual_bound(inner_norm: float) -> float:
    """Bound max(1, 2β² - 1) on the Jacobians of x -> x - 2 A^T(t ⊙ relu(A x + b)), given
    β >= |diag(√t) A|_2.

    The map is piecewise affine and continuous, so its Lipschitz constant is the largest norm of
    its Jacobians J = I - 2 A^T diag(t) S A, S = diag(relu') with entries in {0, 1} (in [0, 1]
    for any slope-in-[0, 1] activation). Diagonal matrices commute, so with B = diag(√t) A,
    J = I - 2 B^T S B: symmetric, and 0 <= B^T S B <= B^T B <= β² I, so J's eigenvalues lie in
    [1 - 2β², 1] and |J|_2 <= max(1, 2β² - 1). When t meets the SLL condition (``sll_scale``)
    β <= 1 and the bound is 1; a β above 1 (rounding) gives a larger but still sound bound.
    Increasing in β, so an upper bound on β gives an upper bound here.
    """
    return max(1.0, 2.0 * inner_norm * inner_norm - 1.0)


def sll_upper_bound(kernel: Array, q_raw: Array, input_shape: Sequence[int],
                    stride: int | Sequence[int] = 1, padding: convolution.ConvPadding = 'SAME',
                    tiny: float = SLL_TINY) -> float:
    """Guaranteed upper bound on the Lipschitz constant of an SLL conv layer
    (``sll_residual_bound``) from its raw parameters: β = |diag(√t) A|_2 computed in float64 for
    the t of the float32 and of the float64 forward pass (``sll_scale``), by
    ``bounds.conv_upper_bound`` with ``out_scale=√t`` on ``input_shape`` with its stride and zero
    padding (a dense layer is the 1×1 conv on one pixel). Rounded up by ``SOUND_SLACK``, as every
    sound bound here."""
    pairs = bounds.in_both_precisions(lambda k, q: (k, sll_scale(k, q, tiny)), kernel, q_raw)
    betas = [bounds.conv_upper_bound(k, input_shape, stride, padding, out_scale=np.sqrt(t))
             for k, t in pairs]
    return sll_residual_bound(max(betas)) * (1.0 + bounds.SOUND_SLACK)


def symmetric_uniform(limit: float) -> nn.initializers.Initializer:
    """Uniform in [-limit, limit] (SLL's bias initialisation, limit 1/sqrt(fan_in))."""
    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -limit, limit)
    return init


@LAYERS.register('sll')
class SLLConv(nn.Module):
    """SLL conv layer, corrected form: ``y = x - 2·A^T(t ⊙ relu(A x + b))``, A the bias-free
    zero-padded conv from the C input channels to ``inner`` channels and A^T its exact adjoint
    (``convolution.conv_with_adjoint``), t per inner channel from the Gram kernel of A A^T
    (``sll_scale``), recomputed on every call. y has x's shape for every stride and
    padding (A^T maps back), and the layer is 1-Lipschitz for all of them (``sll_scale``
    covers compressions of the plane conv); the references use stride 1, 'SAME'.

    Initialisation as the reference code: Glorot normal kernel, bias uniform in
    ±1/sqrt(k_h·k_w·C), q_raw standard normal. ``inner`` None: C. Bound: 1 in training,
    ``sll_upper_bound`` on the input's spatial shape when ``sound``.
    """

    inner: int | None = None
    kernel_size: int | tuple[int, int] = 3
    strides: int | tuple[int, int] = 1
    padding: convolution.ConvPadding = 'SAME'
    kernel_init: Any = nn.initializers.glorot_normal()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False):
        channels = x.shape[-1]
        inner = self.inner or channels
        kernel_hw = convolution.pair(self.kernel_size, 'kernel_size')
        strides = convolution.pair(self.strides, 'strides')
        pads = convolution.conv_padding(self.padding, x.shape[1:3], kernel_hw, strides)
        fan_in = kernel_hw[0] * kernel_hw[1] * channels
        kernel = self.param('kernel', self.kernel_init, (*kernel_hw, channels, inner))
        bias = self.param('bias', symmetric_uniform(fan_in ** -0.5), (inner,))
        q_raw = self.param('q', nn.initializers.normal(1.0), (inner,))
        t = sll_scale(kernel, q_raw).astype(x.dtype)
        image, adjoint = convolution.conv_with_adjoint(x, kernel.astype(x.dtype), strides, pads)
        y = x - 2.0 * adjoint(t * nn.relu(image + bias.astype(x.dtype)))
        if sound:
            rounding.refuse('SLL layers have no float32 rounding analysis: their weights pass '
                            'through exp, which the arithmetic model does not bound; certify '
                            "the exact network with arithmetic='exact'", self.path)
            return y, sll_upper_bound(kernel, q_raw, x.shape, strides, pads)
        return y, 1.0

    @classmethod
    def same_width(cls, width: int, kernel_size: int) -> SLLConv:
        """A k×k SLL conv on ``width`` channels (``LipConvNet``'s layer; ``inner`` = width)."""
        del width  # an SLL layer keeps its input's channels
        return cls(kernel_size=kernel_size)
