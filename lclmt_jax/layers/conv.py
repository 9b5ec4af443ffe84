"""2-D convs with a power-iteration estimate of their operator norm on the input's actual shape,
its sound bound by the circular embedding, and channel scales folded into the bound."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from lclmt_jax import bounds, convolution, rounding
from lclmt_jax.layers import LAYERS, image_vector, keeps_vector, record

Array = jax.Array


@LAYERS.register('conv')
class LipschitzConv(nn.Module):
    """2-D conv (NHWC, HWIO kernel, cross-correlation as ``lax.conv``) returning its bound.

    The bound is for the conv as a linear map on the input's actual spatial shape (stride and
    zero padding included); the bias does not change a Lipschitz constant. The power-iteration
    vector ``'lipschitz'/'v'`` has shape (1, H, W, C_in), fixed at init, so the layer must keep
    seeing inputs of that spatial shape. Sound bound: ``bounds.conv_upper_bound``, the exact
    norm of the circular conv on a torus that holds the padded input (the zero-padded conv is a
    restriction of it, so never larger). Rounding step: ``rounding.Conv`` on that shape.

    ``in_scale``/``out_scale`` (per-channel, e.g. the multipliers of the batch norms before and
    after the conv, see ``LipschitzBatchNorm.per_channel``) change only the returned bound: it is
    then that of diag(out_scale)·conv·diag(in_scale), while ``y`` is still the plain conv. A
    network uses it to bound BN-conv-BN chains as one operator (``layers.preact_block``), which
    is much tighter than the product of the three norms. In sound mode the scales must be
    concrete. ``with_bound=False`` returns ``(y, None)`` and leaves the power iteration alone:
    for a caller whose ``out_scale`` depends on ``y``, which then calls the layer again on the
    same input for the bound (the second forward conv is unused and compiled away; the caller
    drops its rounding step with ``rounding.capture``).
    """

    features: int
    kernel_size: int | tuple[int, int] = 3
    strides: int | tuple[int, int] = 1
    padding: convolution.ConvPadding = 'SAME'
    use_bias: bool = True
    kernel_init: Any = nn.initializers.lecun_normal()
    estimator: bounds.Estimator = bounds.ONE_VECTOR

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False,
                 in_scale: Any = None, out_scale: Any = None, with_bound: bool = True):
        kernel_hw = convolution.pair(self.kernel_size, 'kernel_size')
        strides = convolution.pair(self.strides, 'strides')
        pads = convolution.conv_padding(self.padding, x.shape[1:3], kernel_hw, strides)
        kernel = self.param('kernel', self.kernel_init, (*kernel_hw, x.shape[-1], self.features))
        y = convolution.conv(x, kernel.astype(x.dtype), strides, pads)
        bias = None
        if self.use_bias:
            bias = self.param('bias', nn.initializers.zeros, (self.features,))
            y = y + bias.astype(x.dtype)
        if sound:
            plain = in_scale is None and out_scale is None
            bound = bounds.conv_upper_bound(kernel, x.shape, strides, pads, in_scale,
                                            out_scale) if with_bound else None
            record(self, lambda: rounding.Conv(kernel, bias, x.shape[1:], strides, pads,
                                               lipschitz=bound if plain else None))
            return y, bound
        if not with_bound:
            return y, None
        v = image_vector(self, x)
        sigma, v_new = bounds.conv_power_iteration(kernel, v.value, strides, pads, in_scale,
                                                   out_scale, self.estimator.power_iterations)
        if keeps_vector(self, train):
            v.value = v_new
        return y, sigma
