"""WideResNet (Zagoruyko & Komodakis, 2016) with pre-activation blocks
(``layers.preact_block``), for 32x32 images."""

from __future__ import annotations

import flax.linen as nn
import jax

from lclmt_jax import bounds
from lclmt_jax.activations import relu
from lclmt_jax.layers.batchnorm import LipschitzBatchNorm
from lclmt_jax.layers.conv import LipschitzConv
from lclmt_jax.layers.head import ModelOutput, lipschitz_head
from lclmt_jax.layers.pooling import global_average_pool
from lclmt_jax.layers.preact_block import PreActBlock
from lclmt_jax.models import MODELS

Array = jax.Array


@MODELS.register('wrn')
class WideResNet(nn.Module):
    """WRN-depth-width (Zagoruyko & Komodakis, 2016) with pre-activation blocks.

    Stem 3×3 conv (16), three groups of (depth - 4)/6 ``PreActBlock``s of widths 16·w, 32·w,
    64·w and first strides 1, 2, 2, then BN-ReLU, global average pooling and the dense ``'head'``.
    body bound = L_stem · prod_blocks L_block · L_bn · 1/sqrt(H·W) (chain rule: each stage maps
    the previous stage's output), L = body · L_head, with L_block folded or not by ``fold_bn``
    (see ``PreActBlock``; the final BN stays a separate factor, so that ``body_lipschitz`` keeps
    bounding the head's input for the pairwise certificate). No dropout.

    ``zero_init_residual``: every block's conv2 starts at zero, so each residual branch starts as
    the zero map (Goyal et al., 2017; Zhang et al., 2019, Fixup): identity blocks start with bound
    exactly 1 and projection blocks with |Ks D1|, the initial L is orders of magnitude smaller
    (``configs.svhn_variant`` turns it on; the power iteration keeps its vector while a kernel is
    zero).
    """

    depth: int = 16
    width: int = 4
    num_classes: int = 10
    fold_bn: bool = True
    zero_init_residual: bool = False
    estimator: bounds.Estimator = bounds.ONE_VECTOR

    def __post_init__(self):
        if self.depth < 10 or (self.depth - 4) % 6:
            raise ValueError(f'WRN depth must be 6n + 4 with n >= 1, got {self.depth}')
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False) -> ModelOutput:
        kw = {'train': train, 'sound': sound}
        h, body_lipschitz = LipschitzConv(16, 3, use_bias=False,
                                          kernel_init=nn.initializers.he_normal(),
                                          estimator=self.estimator,
                                          name='stem')(x, **kw)
        for group, (base, stride) in enumerate(zip((16, 32, 64), (1, 2, 2), strict=True)):
            for index in range((self.depth - 4) // 6):
                h, bound = PreActBlock(base * self.width, stride if index == 0 else 1,
                                       self.fold_bn, self.zero_init_residual,
                                       self.estimator,
                                       name=f'group{group + 1}_block{index + 1}')(h, **kw)
                body_lipschitz = bounds.chain(body_lipschitz, bound)
        h, l_bn = LipschitzBatchNorm(name='final_bn')(h, **kw)
        h, l_relu = relu(h)
        h, l_pool = global_average_pool(h, sound=sound)
        body_lipschitz = bounds.chain(body_lipschitz, l_bn, l_relu, l_pool)
        return lipschitz_head(h, body_lipschitz, self.num_classes, train=train, sound=sound,
                              estimator=self.estimator)
