"""LiResNet (Hu et al., NeurIPS 2023): linear residual blocks whose Lipschitz bound is tight.

Network (``LiResNet``): x - 1/2 (a shift, Lipschitz constant 1), a strided stem conv, MinMax,
``depth`` linear residual blocks y = x + conv_K(x) + b (``layers.liresnet_block``, where the
block's bound and its proof live) each followed by MinMax, a neck (a k×k stride-k 'VALID' conv,
MinMax, flatten, a dense layer, MinMax) and a last-layer-normalised head
(``layers.head.NormalizedHead``, LLN). No batch norm: every map is a fixed linear map or a
1-Lipschitz activation, so L_body = |stem|·prod_b |I + A_b|·|neck conv|·|dense| (``bounds.chain``).

``block='bro'`` is BRONet's backbone (Lai et al., ICML 2025): every residual block replaced by a
BRO conv (``layers.bro``: a block reflector per frequency, rank width//2, zero padding cropped
back), each followed by MinMax; L_body then has the BRO convs' sound bounds (each max(1, the
computed symbols' norms)) in place of |I + A_b|. BRO convs have no float32 rounding analysis, so
that variant certifies the exact network only (``arithmetic='exact'``).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from lclmt_jax import bounds, layers
from lclmt_jax.activations import ACTIVATIONS
from lclmt_jax.layers.bro import BROConv
from lclmt_jax.layers.conv import LipschitzConv
from lclmt_jax.layers.head import ModelOutput, lipschitz_head
from lclmt_jax.layers.liresnet_block import LiResBlock, block_scale
from lclmt_jax.models import INITIALIZERS, MODELS, dense_stack

Array = jax.Array

# The blocks a LiResNet stacks (``block``): LiResNet's linear residual block, or a BRO conv.
BLOCKS = ('residual', 'bro')


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

    ``block``: 'residual' (``LiResBlock``) or 'bro' (``layers.bro.BROConv`` of
    ``block_kernel_size``, BRONet's backbone; module docstring).
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
    block: str = 'residual'
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
        if self.block not in BLOCKS:
            raise ValueError(f'liresnet.block must be one of {", ".join(BLOCKS)}, got '
                             f'{self.block!r}')
        if self.block == 'bro' and self.width < 2:
            raise ValueError(f'liresnet.block=bro needs width >= 2, got {self.width}')
        if self.block_kernel_size % 2 == 0:
            raise ValueError('liresnet.block_kernel_size must be odd (the identity sits at the '
                             f'centre tap), got {self.block_kernel_size}')
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False) -> ModelOutput:
        activation, init = ACTIVATIONS.get(self.activation), INITIALIZERS.get(self.weight_init)
        kw = {'train': train, 'sound': sound}
        h = layers.shift(x, 0.5) if self.center_input else x
        h, body_lipschitz = LipschitzConv(
            self.width, self.stem_kernel, self.stem_stride, (self.stem_kernel - 1) // 2,
            kernel_init=init, estimator=self.estimator, name='stem')(h, **kw)
        h, activation_bound = activation(h)
        body_lipschitz = bounds.chain(body_lipschitz, activation_bound)
        for index in range(self.depth):
            name = f'block{index + 1}'
            block = (BROConv(kernel_size=self.block_kernel_size, name=name) if self.block == 'bro'
                     else LiResBlock(self.block_kernel_size, block_scale(self.depth),
                                     self.estimator, name=name))
            h, block_bound = block(h, **kw)
            h, activation_bound = activation(h)
            body_lipschitz = bounds.chain(body_lipschitz, block_bound, activation_bound)
        h, neck_bound = LipschitzConv(self.neck_features, self.neck_size, self.neck_size,
                                      'VALID', kernel_init=init, estimator=self.estimator,
                                      name='neck')(h, **kw)
        h, activation_bound = activation(h)
        body_lipschitz = bounds.chain(body_lipschitz, neck_bound, activation_bound)
        h = layers.flatten(h)
        h, body_lipschitz = dense_stack(h, (self.dense_features,), activation, body_lipschitz,
                                        estimator=self.estimator, kernel_init=init, **kw)
        return lipschitz_head(h, body_lipschitz, self.num_classes, estimator=self.estimator,
                              kernel_init=init, normalize=self.normalize_head, **kw)
