"""LiResNet (Hu et al., NeurIPS 2023): residual blocks whose Lipschitz bound is tight.

Network (``LiResNet``): x - 1/2 (a shift, Lipschitz constant 1), a strided stem conv, MinMax,
``depth`` linear residual blocks y = x + conv_K(x) + b each followed by MinMax, a neck (a
k×k stride-k 'VALID' conv, MinMax, flatten, a dense layer, MinMax) and a last-layer-normalised
head (``models.NormalizedHead``, LLN). No batch norm: every map is a fixed linear map or a
1-Lipschitz activation, so L_body = |stem|·prod_b |I + A_b|·|neck conv|·|dense| (``bounds.chain``).

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
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from lclmt_jax import bounds, rounding
from lclmt_jax.activations import ACTIVATIONS
from lclmt_jax.layers import LipschitzConv
from lclmt_jax.models import (
    INITIALIZERS,
    MODELS,
    ModelOutput,
    dense_stack,
    lipschitz_head,
)

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
        y = bounds.conv(x, merged.astype(x.dtype), (1, 1), pads) + bias.astype(x.dtype)
        if sound:
            exact = block_kernel(bounds.require_concrete(kernel, 'a residual block'),
                                 bounds.require_concrete(scale, 'a residual block'),
                                 self.residual_scale)
            return y, bounds.conv_upper_bound(exact, x.shape, 1, pads)
        v = self.variable('lipschitz', 'v', lambda: bounds.normalize(
            jax.random.normal(self.make_rng('params'), (1, *x.shape[1:]))))
        if v.value.shape[1:] != x.shape[1:]:
            raise ValueError(f'{self.name}: initialized for inputs of shape {v.value.shape[1:]}, '
                             f'applied to {x.shape[1:]}; the bound depends on the input shape')
        sigma, v_new = bounds.conv_power_iteration(merged, v.value, 1, pads,
                                                   steps=self.estimator.power_iterations)
        if train and self.is_mutable_collection('lipschitz') and not self.is_initializing():
            v.value = v_new
        return y, sigma


@MODELS.register('liresnet')
class LiResNet(nn.Module):
    """LiResNet: stem, ``depth`` ``LiResBlock``s of ``width`` channels, neck, LLN head.

    stem: conv ``width`` of ``stem_kernel``×``stem_kernel``, stride ``stem_stride``, zero padding
    (stem_kernel - 1)//2 on every side (5×5 stride 2: 32×32 -> 16×16, 28×28 -> 14×14); neck:
    conv ``neck_features`` of ``neck_size``×``neck_size`` with stride ``neck_size``, 'VALID'
    (16×16 -> 4×4 for 4), flatten, dense ``dense_features``; ``activation`` after the stem,
    every block, the neck conv and the dense layer. The head is LLN when ``normalize_head``
    (certified with the pairwise constants |w^_t - w^_j|·L_body). ``center_input``: the network
    sees x - 1/2 (the reference's input shift; a translation, so L is unchanged). Orthogonal
    initialisation (``weight_init``) for stem, neck, dense and head.

    L_body = L_stem·prod_b L_block_b·L_neck·L_dense (each activation 1); every factor is the
    layer's exact or sound operator norm on its actual input shape when certifying.
    """

    depth: int = 6
    width: int = 32
    stem_kernel: int = 5
    stem_stride: int = 2
    block_kernel_size: int = 3
    neck_features: int = 64
    neck_size: int = 4
    dense_features: int = 512
    activation: str = 'minmax'
    weight_init: str = 'orthogonal'
    normalize_head: bool = True
    center_input: bool = True
    num_classes: int = 10
    estimator: bounds.Estimator = bounds.ONE_VECTOR

    def __post_init__(self):
        ACTIVATIONS.get(self.activation, 'activation')
        INITIALIZERS.get(self.weight_init, 'weight_init')
        for name in ('width', 'stem_kernel', 'stem_stride', 'block_kernel_size', 'neck_features',
                     'neck_size', 'dense_features'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'liresnet.{name} must be a positive int, got {value!r}')
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 0:
            raise ValueError(f'liresnet.depth must be an int >= 0, got {self.depth!r}')
        if self.block_kernel_size % 2 == 0:
            raise ValueError('liresnet.block_kernel_size must be odd (the identity sits at the '
                             f'centre tap), got {self.block_kernel_size}')
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False) -> ModelOutput:
        activation, init = ACTIVATIONS.get(self.activation), INITIALIZERS.get(self.weight_init)
        kw = {'train': train, 'sound': sound}
        h = x - 0.5 if self.center_input else x
        h, body_lipschitz = LipschitzConv(
            self.width, self.stem_kernel, self.stem_stride, (self.stem_kernel - 1) // 2,
            kernel_init=init, estimator=self.estimator, name='stem')(h, **kw)
        h, activation_bound = activation(h)
        body_lipschitz = bounds.chain(body_lipschitz, activation_bound)
        for index in range(self.depth):
            h, block_bound = LiResBlock(self.block_kernel_size, block_scale(self.depth),
                                        self.estimator,
                                        name=f'block{index + 1}')(h, **kw)
            h, activation_bound = activation(h)
            body_lipschitz = bounds.chain(body_lipschitz, block_bound, activation_bound)
        h, neck_bound = LipschitzConv(self.neck_features, self.neck_size, self.neck_size,
                                      'VALID', kernel_init=init, estimator=self.estimator,
                                      name='neck')(h, **kw)
        h, activation_bound = activation(h)
        body_lipschitz = bounds.chain(body_lipschitz, neck_bound, activation_bound)
        h = h.reshape((h.shape[0], -1))
        h, body_lipschitz = dense_stack(h, (self.dense_features,), activation, body_lipschitz,
                                        estimator=self.estimator, kernel_init=init, **kw)
        return lipschitz_head(h, body_lipschitz, self.num_classes, estimator=self.estimator,
                              kernel_init=init, normalize=self.normalize_head, **kw)


@rounding.ANALYSES.register('liresnet')
def _rounding_analysis(model: LiResNet, variables: rounding.Parameters,
                       input_shape: tuple[int, ...]) -> rounding.Network:
    """The float32 rounding of a ``LiResNet`` (``rounding``): the shift, the stem, each block
    as the one conv K' = I + s·K·diag(gamma) whose float32 kernel the network computes at run
    time (``block_kernel_error``), the neck, the dense layer and the head, LLN normalisation
    included (``rounding.normalisation_error``)."""
    params = variables['params']
    activation = rounding.Activation(model.activation)
    steps: list[rounding.Step] = [rounding.Shift(0.5)] if model.center_input else []
    stem = rounding.Conv(params['stem']['kernel'], params['stem']['bias'], input_shape,
                         model.stem_stride, (model.stem_kernel - 1) // 2)
    steps += [stem, activation]
    shape, size, scale = stem.output_shape, model.block_kernel_size, block_scale(model.depth)
    for index in range(model.depth):
        block = params[f'block{index + 1}']
        kernel, gamma = block['kernel'], block['scale']
        merged = block_kernel(np.asarray(kernel, np.float64), np.asarray(gamma, np.float64),
                              scale)
        steps += [rounding.Conv(merged, block['bias'], shape, 1, size // 2,
                                kernel_error=functools.partial(block_kernel_error, kernel,
                                                               gamma, scale)),
                  activation]
    neck = rounding.Conv(params['neck']['kernel'], params['neck']['bias'], shape,
                         model.neck_size, 'VALID')
    steps += [neck, activation, rounding.Flatten(),
              *rounding.dense_layers(params, 1, model.activation)]
    head = rounding.Head(params['head']['kernel'], params['head']['bias'],
                         normalized=model.normalize_head)
    return rounding.Network(tuple(steps), head)
