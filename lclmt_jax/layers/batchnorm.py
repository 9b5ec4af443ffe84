"""Batch norm with its exact Lipschitz constant in eval mode, and its float32 rounding."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lclmt_jax import bounds, rounding
from lclmt_jax.layers import LAYERS, record
from lclmt_jax.rounding.arithmetic import UP, f64

Array = jax.Array


def batch_norm_multipliers(scale: Array, var: Array, epsilon: float) -> np.ndarray:
    """|gamma_c|/sqrt(var_c + eps) per channel in float64: |D| of BN with fixed statistics.

    eps is taken as the smaller of its float64 and float32 values so the multipliers are at least
    those of the network evaluated in either precision. Not rounded up: a bound built from them
    adds ``SOUND_SLACK`` itself.
    """
    gamma = bounds.require_concrete(scale, 'a batch norm layer')
    variance = bounds.require_concrete(var, 'a batch norm layer')
    eps = min(float(epsilon), float(np.float32(epsilon)))
    return np.abs(gamma) / np.sqrt(variance + eps)


def batch_norm_upper_bound(scale: Array, var: Array, epsilon: float) -> float:
    """Guaranteed bound max_c |gamma_c|/sqrt(var_c + eps) of BN with fixed statistics, float64.

    BN with fixed (mean, var) is x -> D x + const with D diagonal (per channel, repeated over
    positions), so its L2 Lipschitz constant is exactly max |D| (a diagonal matrix's spectral norm
    is its largest absolute entry). eps as in ``batch_norm_multipliers``; SOUND_SLACK covers
    rounding.
    """
    return float(np.max(batch_norm_multipliers(scale, var, epsilon)) * (1.0 + bounds.SOUND_SLACK))


class BatchNormStep(rounding.Primitive):
    """Batch norm with fixed statistics, y = (x - mean)·m + beta, m = scale/sqrt(var + eps);
    Lipschitz ``batch_norm_upper_bound``. The exact map uses eps in float64; the
    float32 network's eps is float32(eps), a relative change s of m folded into theta."""

    def __init__(self, scale: Any, bias: Any, mean: Any, var: Any, epsilon: float):
        variance = f64(var)
        self.mean, self.beta = f64(mean), f64(bias)
        self.multiplier = f64(scale) / np.sqrt(variance + float(epsilon))
        self.lipschitz = batch_norm_upper_bound(scale, var, epsilon)
        self.max_multiplier = self.lipschitz  # max |m|, rounded up
        eps32 = float(np.float32(epsilon))
        shift = float(np.max(abs(float(epsilon) - eps32) / (variance + min(eps32, epsilon))))
        self.eps_shift = {'float32': shift * UP, 'float64': 0.0}

    def forward(self, a: np.ndarray) -> np.ndarray:
        return (a - self.mean) * self.multiplier + self.beta

    def rounding(self, a: np.ndarray, spread: rounding.Affine,
                 arithmetic: rounding.Arithmetic) -> rounding.Bound:
        u = arithmetic.unit
        # 1 + theta >= m^/m: the computed multiplier against the exact one (rsqrt, two
        # roundings, and the float32 eps)
        shift = self.eps_shift[arithmetic.name]
        multiplier = (1 + arithmetic.rsqrt_error) * (1 + u)**3 * (1 + shift)
        c = multiplier * (1 + u)**3 - 1
        size = a[0].size
        positions = size // self.mean.size
        scaled = rounding.norms((a - self.mean) * self.multiplier) + self.max_multiplier * spread
        beta = float(np.sqrt(positions) * np.linalg.norm(self.beta)) * UP
        underflow = 4 * arithmetic.tiny * np.sqrt(size) * (1 + self.max_multiplier)
        centred = rounding.norms(a - self.mean) + spread  # |x^ - mean|_2, an intermediate
        magnitude = (1 + c) * (max(1.0, self.max_multiplier) * centred + beta) + underflow
        return rounding.Bound(c * scaled + u * beta + underflow, magnitude)


@LAYERS.register('batchnorm')
class LipschitzBatchNorm(nn.Module):
    """Batch norm over the last (channel) axis, y = gamma·(x - mu)/sqrt(var + eps) + beta.

    Statistics: batch mean/variance over all but the channel axis when ``train=True`` (over the
    whole global batch: under the trainer's sharded ``jit`` XLA inserts the cross-device sums),
    the running averages in collection ``'batch_stats'`` otherwise and always when ``sound=True``
    (the certificate is for the eval-mode network). Running averages are updated in train mode when
    ``'batch_stats'`` is mutable.

    Bound: max_c |gamma_c|/sqrt(var_c + eps) with the variance that mode uses. For eval and sound
    mode it is exact (``batch_norm_upper_bound``). In train mode the batch statistics depend
    on x, and the bound treats them as constants -- BN as the affine map it applies to this batch
    -- which is the standard LMT convention (Tsuzuku et al., 2018): it steers training, and the
    certificate always uses eval mode. The train-mode value is differentiable in gamma and in the
    batch variance.

    ``per_channel=True`` returns the whole diagonal |D| = |gamma|/sqrt(var + eps) (C,) instead of
    its maximum -- float64 ``batch_norm_multipliers`` in sound mode -- for a following or
    preceding conv to fold into its own bound (``LipschitzConv``'s ``in_scale``/``out_scale``).
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    per_channel: bool = False

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False):
        features = x.shape[-1]
        scale = self.param('scale', nn.initializers.ones, (features,))
        bias = self.param('bias', nn.initializers.zeros, (features,))
        running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
        running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
        if train and not sound:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axes)
            var = jnp.mean(jnp.square(x - mean), axes)
            if self.is_mutable_collection('batch_stats') and not self.is_initializing():
                m = self.momentum
                running_mean.value = m * running_mean.value + (1 - m) * mean
                running_var.value = m * running_var.value + (1 - m) * var
        else:
            mean, var = running_mean.value, running_var.value
        multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
        y = (x - mean.astype(x.dtype)) * multiplier.astype(x.dtype) + bias.astype(x.dtype)
        if sound:
            record(self, lambda: BatchNormStep(scale, bias, mean, var, self.epsilon))
            if self.per_channel:
                return y, batch_norm_multipliers(scale, var, self.epsilon)
            return y, batch_norm_upper_bound(scale, var, self.epsilon)
        if self.per_channel:
            return y, jnp.abs(multiplier)
        return y, jnp.max(jnp.abs(multiplier))
