"""A convolutional network that is 1-Lipschitz by construction up to its head: AOL or SLL convs.

In the style of the ConvNets of "1-Lipschitz Layers Compared" (Prach et al., 2024): the input's
channels are zero-padded to ``width``; then ``blocks`` blocks, each of ``layers_per_block``
k×k convs (AOL or SLL, ``layer``) at the block's width, each followed by ``activation``
(MinMax), and a parameter-free downsampling (keep the first half of the channels, then 2×2
space-to-depth: half the resolution, twice the channels); then flatten and the dense head.
Every map of the body is 1-Lipschitz, so ``body_lipschitz`` is the product of the layers' bounds:
1.0 in training, the float64 sound bounds (each <= 1 + 1e-5) when certifying, and the pairwise
certificate of ``lipschitz_head`` applies unchanged.

Default (width 16, 3 blocks of 2 layers, 3×3): 32×32×3 -> 4×4×128 = 2048 features; 28×28×1 ->
28, 14, 7 (padded to 8), 4: also 2048. Initialisation: the identity (Dirac) for AOL's k×k
kernels, orthogonal for 1×1 ones (``layers.AOLConv``); SLL as its reference code (Glorot normal
kernel, ``layers.SLLConv``); orthogonal head.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lclmt_jax import bounds, rounding
from lclmt_jax.activations import ACTIVATIONS
from lclmt_jax.layers import AOLConv, SLLConv
from lclmt_jax.models import MODELS, ModelOutput, lipschitz_head

Array = jax.Array

LAYERS = ('aol', 'sll')


def zero_channels(x: Array, width: int) -> Array:
    """NHWC ``x`` with zero channels appended up to ``width``: an isometric embedding
    (|pad(x) - pad(y)| = |x - y|), so 1-Lipschitz."""
    if x.shape[-1] > width:
        raise ValueError(f'lipconvnet.width={width} is below the {x.shape[-1]} input channels')
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, width - x.shape[-1])))


def downsample(x: Array) -> Array:
    """Half the channels (the first ones), then 2×2 space-to-depth: (N, H, W, C) ->
    (N, ceil(H/2), ceil(W/2), 2C), with no parameters and Lipschitz constant 1.

    Keeping coordinates is a projection (norm 1); an odd H or W is zero-padded by one row or
    column at the end (an isometric embedding); space-to-depth permutes coordinates (an
    isometry). The composition is 1-Lipschitz.
    """
    n, h, w, c = x.shape
    x = x[..., :c // 2]
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    h, w = x.shape[1] // 2, x.shape[2] // 2
    x = x.reshape(n, h, 2, w, 2, c // 2).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h, w, 4 * (c // 2))


class LipConvBody(nn.Module):
    """The body of ``LipConvNet``: flat features and their bound (``bounds.chain`` of the layers'
    and activations' bounds; zero channels and ``downsample`` are 1-Lipschitz)."""

    layer: str = 'aol'
    width: int = 16
    blocks: int = 3
    layers_per_block: int = 2
    kernel_size: int = 3
    activation: str = 'minmax'

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False,
                 sound: bool = False) -> tuple[Array, float]:
        activation = ACTIVATIONS.get(self.activation)
        h, body_lipschitz = zero_channels(x, self.width), 1.0
        for _ in range(self.blocks):
            for _ in range(self.layers_per_block):
                if self.layer == 'aol':
                    conv = AOLConv(h.shape[-1], self.kernel_size)
                else:
                    conv = SLLConv(kernel_size=self.kernel_size)
                h, layer_bound = conv(h, train=train, sound=sound)
                h, activation_bound = activation(h)
                body_lipschitz = bounds.chain(body_lipschitz, layer_bound, activation_bound)
            h = downsample(h)
        return h.reshape((h.shape[0], -1)), body_lipschitz


@MODELS.register('lipconvnet')
class LipConvNet(LipConvBody):
    """``LipConvBody`` (submodule ``'body'``, whose settings it takes) and a dense head
    (``lipschitz_head``).

    Settings: ``layer`` 'aol' | 'sll'; ``width`` (even) the first block's channels, doubled by
    every downsampling; ``blocks``; ``layers_per_block``; ``kernel_size`` (k×k, odd, so 'SAME'
    padding is centred); ``activation`` (an ``ACTIVATIONS`` name, MinMax by default).
    """

    num_classes: int = 10
    estimator: bounds.Estimator = bounds.ONE_VECTOR

    def __post_init__(self):
        ACTIVATIONS.get(self.activation, 'activation')
        if self.layer not in LAYERS:
            raise ValueError(f'lipconvnet.layer must be one of {LAYERS}, got {self.layer!r}')
        for name in ('width', 'blocks', 'layers_per_block', 'kernel_size'):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'lipconvnet.{name} must be a positive int, got {value!r}')
        if self.width % 2 or self.kernel_size % 2 == 0:
            raise ValueError('lipconvnet.width must be even and lipconvnet.kernel_size odd, got '
                             f'{self.width} and {self.kernel_size}')
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False) -> ModelOutput:
        body = LipConvBody(self.layer, self.width, self.blocks, self.layers_per_block,
                           self.kernel_size, self.activation, name='body')
        h, body_lipschitz = body(x, train=train, sound=sound)
        return lipschitz_head(h, body_lipschitz, self.num_classes, train=train, sound=sound,
                              estimator=self.estimator,
                              kernel_init=nn.initializers.orthogonal())


@rounding.ANALYSES.register('lipconvnet')
def _rounding_analysis(model: LipConvNet, variables: rounding.Parameters,
                       input_shape: tuple[int, ...]) -> rounding.Network:
    """The float32 rounding of an AOL ``LipConvNet`` (``rounding``): each AOL conv with the
    kernel it recomputes at run time (``rounding.aol_kernel_error``), the exact channel padding
    and downsampling, the dense head. SLL layers are not analysable: their weights pass
    through exp, which the arithmetic model (A1-A3) does not bound."""
    if model.layer != 'aol':
        raise rounding.NotAnalysable(f'lipconvnet layer {model.layer!r} has no float32 rounding '
                                     'analysis (its weights pass through exp); only AOL has')
    params = variables['params']
    activation = rounding.Activation(model.activation)
    pad = rounding.ExactMap(functools.partial(zero_channels, width=model.width))
    shape, halve = pad.output_shape(input_shape), rounding.ExactMap(downsample)
    steps: list[rounding.Step] = [pad]
    index = 0
    for _ in range(model.blocks):
        for _ in range(model.layers_per_block):
            layer = params['body'][f'AOLConv_{index}']
            kernel = layer['kernel']
            with jax.enable_x64(True):
                applied = np.asarray(bounds.aol_kernel(jnp.asarray(kernel, jnp.float64)))
            conv = rounding.Conv(applied, layer['bias'], shape, 1, 'SAME',
                                 kernel_error=functools.partial(rounding.aol_kernel_error,
                                                                kernel))
            steps += [conv, activation]
            index += 1
        steps.append(halve)
        shape = halve.output_shape(shape)
    steps.append(rounding.Flatten())
    head = rounding.Head(params['head']['kernel'], params['head']['bias'])
    return rounding.Network(tuple(steps), head)
