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
kernels, orthogonal for 1×1 ones (``layers.aol.AOLConv``); SLL as its reference code (Glorot normal
kernel, ``layers.sll.SLLConv``); orthogonal head.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from lclmt_jax import bounds, layers
from lclmt_jax.activations import ACTIVATIONS
from lclmt_jax.layers import LAYERS
from lclmt_jax.layers.head import ModelOutput, lipschitz_head
from lclmt_jax.models import MODELS

Array = jax.Array



def conv_family(name: str) -> type[nn.Module]:
    """The ``layers.LAYERS`` family ``name``, which must offer ``same_width`` (a k×k layer from
    ``width`` to ``width`` channels); a one-line ValueError naming those that do otherwise."""
    usable = [family for family in LAYERS.names() if hasattr(LAYERS.get(family), 'same_width')]
    if name not in usable:
        raise ValueError(f'unknown lipconvnet.layer {name!r}; allowed: {", ".join(usable)}')
    return LAYERS.get(name)


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
    center_input: bool = False

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False,
                 sound: bool = False) -> tuple[Array, float]:
        activation, family = ACTIVATIONS.get(self.activation), conv_family(self.layer)
        h = layers.shift(x, 0.5) if self.center_input else x
        h = layers.exact_map(functools.partial(zero_channels, width=self.width), h)
        body_lipschitz = 1.0
        for _ in range(self.blocks):
            for _ in range(self.layers_per_block):
                conv = family.same_width(h.shape[-1], self.kernel_size)
                h, layer_bound = conv(h, train=train, sound=sound)
                h, activation_bound = activation(h)
                body_lipschitz = bounds.chain(body_lipschitz, layer_bound, activation_bound)
            h = layers.exact_map(downsample, h)
        return layers.flatten(h), body_lipschitz


@MODELS.register('lipconvnet')
class LipConvNet(LipConvBody):
    """``LipConvBody`` (submodule ``'body'``, whose settings it takes) and a dense head
    (``lipschitz_head``).

    Settings: ``layer`` a ``layers.LAYERS`` family with ``same_width`` ('aol', 'cpl', 'sll');
    ``width`` (even) the first block's channels, doubled by every downsampling; ``blocks``;
    ``layers_per_block``; ``kernel_size`` (k×k, odd, so 'SAME' padding is centred);
    ``activation`` (an ``ACTIVATIONS`` name, MinMax by default); ``center_input``: the body sees
    x - 1/2 (a translation, L unchanged; as the LiResNet), so that zero-mean MinMax pairs and
    biases start balanced (off by default, as the runs made before it).
    """

    num_classes: int = 10
    estimator: bounds.Estimator = bounds.ONE_VECTOR

    def __post_init__(self):
        ACTIVATIONS.get(self.activation, 'activation')
        conv_family(self.layer)
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
                           self.kernel_size, self.activation, self.center_input, name='body')
        h, body_lipschitz = body(x, train=train, sound=sound)
        return lipschitz_head(h, body_lipschitz, self.num_classes, train=train, sound=sound,
                              estimator=self.estimator,
                              kernel_init=nn.initializers.orthogonal())
