"""The LiResNet block (Hu et al., NeurIPS 2023): a linear residual block whose bound is tight.

The block as one linear map. A 3×3 'SAME' conv with centred zero padding p = (k-1)/2 (k odd)
reads x at the output's own position through its centre tap, so with K' = K + I at the centre
tap (``block_kernel``) the block's linear part is exactly one conv:

    x + conv_K(x) = conv_{K'}(x)   (same padding, same grid).

*Sound.* ``bounds.conv_upper_bound(K', ...)`` bounds |conv_{K'}| by the exact norm of the
circular conv C_N(K') on a torus of N = H + k - 1 >= the padded size (the zero-padded conv is a
restriction of C_N applied to a zero-extended input, |R C_N E| <= |C_N|; a same-size torus N = H
is *not* an upper bound for zero padding). So |I + A_K| <= |C_N(K')|, the bound is sound, and
the block with its bias and MinMax is |C_N(K')|-Lipschitz.

*Tighter than 1 + |K|.* On the torus C_N(K') = I_N + C_N(K) (the identity tap is the identity
map there too), so by the triangle inequality |C_N(K')| <= |I_N| + |C_N(K)| = 1 + |C_N(K)|, which
is what ``bounds.residual_sum`` would give with K's own sound bound: one map is never looser. It
is usually much tighter: per frequency w the block's symbol is I + K^(w), whose norm is 1 + |K^|
only when the top singular direction of K^(w) is aligned with the identity (positive-definite
direction); for K = -I/2 it is 1/2 instead of 3/2, for a skew K^ it is sqrt(1 + |K^|^2). The
identity must be added in the spatial kernel *before* anything spectral: adding it to the DFT of
an uncentred kernel drops the phase factor of the centre tap and is not the block's symbol.

Training estimate: power iteration on the same map, ``bounds.conv_power_iteration(K', v)`` with
the persistent vector v in the ``'lipschitz'`` collection, ``estimator.power_iterations`` steps
per update; a lower bound that steers training (the certificate uses only the sound bound).

Rounding step: the one conv K' whose float32 kernel the network computes at run time
(``block_kernel_error``).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from lclmt_jax import bounds, convolution, rounding
from lclmt_jax.layers import LAYERS, image_vector, keeps_vector, record

Array = jax.Array


def _identity_tap(size: int, channels: int) -> np.ndarray:
    """The HWIO kernel of the identity map: I at the centre tap of a size×size kernel."""
    identity = np.zeros((size, size, channels, channels), np.float32)
    identity[size // 2, size // 2] = np.eye(channels, dtype=np.float32)
    return identity


def block_kernel(kernel: Any, scale: Any, residual_scale: float) -> Any:
    """K' = residual_scale·K·diag(scale) + I at the centre tap: the HWIO kernel of the block's
    linear map x -> x + conv_{residual_scale·K·diag(scale)}(x) (see the module docstring).

    Works on jax arrays (training, forward) and float64 numpy arrays (sound bound) alike; the
    identity is exact in every float type.
    """
    size, _, c_in, c_out = kernel.shape
    if size % 2 == 0 or kernel.shape[1] != size or c_in != c_out:
        raise ValueError(f'a residual block needs a square odd kernel with C_in = C_out, got '
                         f'{kernel.shape}')
    return residual_scale * (kernel * scale) + _identity_tap(size, c_in)


def block_scale(depth: int) -> float:
    """s = depth^-1/2, the scale of every block's conv (the reference's choice)."""
    return 1.0 / math.sqrt(max(depth, 1))


def block_kernel_error(kernel: Any, scale: Any, residual_scale: float,
                       arithmetic: rounding.Arithmetic) -> np.ndarray:
    """Entrywise D >= |K'^ - K'|: ``block_kernel`` computed in ``arithmetic`` against exact.

    The network computes fl(fl(s^·fl(K·gamma)) + I), s^ = s(1 + d0) the rounded scale: three
    roundings of s·K·gamma, (1 + u)^3 - 1 relative, and underflow of the two products at most
    2·tau·s^ + 2·tau; the identity is added to the centre tap's diagonal (adding 0 elsewhere is
    exact), one more rounding there, u·|s^K^gamma^ + 1| <= u·((1 + u)^3·|s·K·gamma| + 1). Hence
    D = ((1 + u)^4 - 1)·|s·K·gamma| + u·[centre diagonal] + 4·tau·(1 + s), rounded up.
    """
    kernel, scale = np.asarray(kernel, np.float64), np.asarray(scale, np.float64)
    u = arithmetic.unit
    scaled = np.abs(residual_scale * (kernel * scale))
    identity = _identity_tap(kernel.shape[0], kernel.shape[2])
    error = ((1 + u)**4 - 1) * scaled + u * identity + 4 * arithmetic.tiny * (1 + residual_scale)
    return error * (1 + bounds.SOUND_SLACK)


@LAYERS.register('liresnet_block')
class LiResBlock(nn.Module):
    """y = x + conv_{s·K·diag(gamma)}(x) + b ('SAME', stride 1), returning ``(y, bound)``.

    Parameters: ``kernel`` K (k, k, C, C), N(0, 1/(k²C)²) at init as in the reference, so each
    block starts close to the identity; ``scale`` gamma (C,), ones; ``bias`` (C,), zeros.
    s = ``residual_scale`` (the network uses depth^-1/2). The bound is that of the whole block
    map conv_{K'} (module docstring): ``bounds.conv_upper_bound(K')`` in float64 when sound,
    power iteration on K' otherwise.
    """

    kernel_size: int = 3
    residual_scale: float = 1.0
    estimator: bounds.Estimator = bounds.ONE_VECTOR

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False):
        width, size = x.shape[-1], self.kernel_size
        pads = ((size // 2, size // 2), (size // 2, size // 2))  # centred: the identity tap
        kernel = self.param('kernel', nn.initializers.normal(1.0 / (size * size * width)),
                            (size, size, width, width))
        scale = self.param('scale', nn.initializers.ones, (width,))
        bias = self.param('bias', nn.initializers.zeros, (width,))
        merged = block_kernel(kernel, scale, self.residual_scale)
        y = convolution.conv(x, merged.astype(x.dtype), (1, 1), pads) + bias.astype(x.dtype)
        if sound:
            exact = block_kernel(bounds.require_concrete(kernel, 'a residual block'),
                                 bounds.require_concrete(scale, 'a residual block'),
                                 self.residual_scale)
            bound = bounds.conv_upper_bound(exact, x.shape, 1, pads)
            record(self, lambda: rounding.Conv(
                exact, bias, x.shape[1:], 1, pads, lipschitz=bound,
                kernel_error=functools.partial(block_kernel_error, kernel, scale,
                                               self.residual_scale)))
            return y, bound
        v = image_vector(self, x)
        sigma, v_new = bounds.conv_power_iteration(merged, v.value, 1, pads,
                                                   steps=self.estimator.power_iterations)
        if keeps_vector(self, train):
            v.value = v_new
        return y, sigma
