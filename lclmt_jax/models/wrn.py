"""WideResNet (Zagoruyko & Komodakis, 2016) with pre-activation blocks, for 32x32 images."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax

from lclmt_jax import bounds
from lclmt_jax.activations import relu
from lclmt_jax.layers import LipschitzBatchNorm, LipschitzConv, global_average_pool
from lclmt_jax.models import MODELS, ModelOutput, lipschitz_head

Array = jax.Array


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al., 2016; as in WRN): returns ``(y, bound)``.

    o = ReLU(BN1(x)), f(o) = conv2(ReLU(BN2(conv1(o)))) with conv1 3×3 of stride ``strides``
    and conv2 3×3 of stride 1 (no conv biases: a BN follows or the block ends in a sum).
    y = x + f(o) when the shapes agree (identity shortcut taken *before* BN1), otherwise
    y = s(o) + f(o) with s the 1×1 strided shortcut conv (as in the WRN code).

    Bound (``fold_bn=True``, the default). Write each BN (fixed statistics, see
    ``LipschitzBatchNorm``) as z -> D z + c with D diagonal, and ReLU(a) - ReLU(b) = S (a - b)
    with S diagonal, entries in [0, 1], depending on (a, b). For two inputs x, x', with
    K1, K2, Ks the (linear) convs:

        f(o) - f(o') = K2 S2 D2 K1 S1 D1 (x - x') = K2 S2 (D2 K1 D1) S1 (x - x'),

    since diagonal matrices commute (S1 D1 = D1 S1). |S| <= 1, so |f(o) - f(o')| <=
    |K2|·|D2 K1 D1|·|x - x'|, and likewise |s(o) - s(o')| <= |Ks D1|·|x - x'|. Hence

    * identity shortcut: bound = 1 + |D2 K1 D1|·|K2|;
    * projection shortcut: bound = |Ks D1| + |D2 K1 D1|·|K2|.

    |D2 K1 D1| and |Ks D1| are single conv norms with channel-scaled kernels (``LipschitzConv``'s
    ``in_scale``/``out_scale``, from ``LipschitzBatchNorm(per_channel=True)``, which gives |D|:
    D = Σ|D| with Σ a ±1 diagonal, orthogonal, so |D2 K1 D1| = ||D2| K1 |D1||). By
    submultiplicativity they never exceed the products |D1|·|K1|·|D2| and |D1|·|Ks|, and are
    usually far below them: max_c |D_c| comes from the channel of least variance, whose kernel
    slice a folded norm weighs correctly (at init, WRN-16-4's bound on 32×32 inputs is ~17×
    smaller). This is also how the LMT paper bounds conv + BN: as one linear map.

    ``fold_bn=False``: the product of the layer bounds, 1 + L_bn1·L_conv1·L_bn2·L_conv2 and
    L_bn1·(L_s + L_conv1·L_bn2·L_conv2) (kept for comparison).
    """

    features: int
    strides: int = 1
    fold_bn: bool = True
    zero_init_residual: bool = False
    estimator: bounds.Estimator = bounds.ONE_VECTOR

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False,
                 sound: bool = False) -> tuple[Array, Array | float]:
        kw = {'train': train, 'sound': sound}
        bn = functools.partial(LipschitzBatchNorm, per_channel=self.fold_bn)
        conv = functools.partial(LipschitzConv, use_bias=False,
                                 kernel_init=nn.initializers.he_normal(),
                                 estimator=self.estimator)
        identity = x.shape[-1] == self.features and self.strides == 1
        conv2_init = {'kernel_init': nn.initializers.zeros} if self.zero_init_residual else {}
        o, bn1 = bn(name='bn1')(x, **kw)  # per channel (C,) when folding, else a scalar
        o, l_relu1 = relu(o)
        conv1 = conv(self.features, 3, self.strides, name='conv1')
        if not self.fold_bn:
            h, l_conv1 = conv1(o, **kw)
            h, l_bn2 = bn(name='bn2')(h, **kw)
            h, l_relu2 = relu(h)
            h, l_conv2 = conv(self.features, 3, 1, name='conv2', **conv2_init)(h, **kw)
            l_f = bounds.chain(l_conv1, l_bn2, l_relu2, l_conv2)
            if identity:
                return x + h, bounds.residual_sum(bounds.chain(bn1, l_relu1, l_f))
            s, l_s = conv(self.features, 1, self.strides, name='shortcut')(o, **kw)
            return s + h, bounds.chain(bn1, l_relu1, bounds.residual_sum(l_f, l_s))
        # conv1's folded bound needs bn2's multipliers, which depend on conv1's output: the
        # output first, the bound in a second call (whose unused forward conv XLA removes).
        h, _ = conv1(o, **kw, with_bound=False)
        h, bn2 = bn(name='bn2')(h, **kw)
        _, l_conv1 = conv1(o, **kw, in_scale=bn1, out_scale=bn2)
        h, _ = relu(h)
        h, l_conv2 = conv(self.features, 3, 1, name='conv2', **conv2_init)(h, **kw)
        l_f = bounds.chain(l_conv1, l_conv2)  # ReLUs are inside the folded norms (S1, S2 above)
        if identity:
            return x + h, bounds.residual_sum(l_f)
        s, l_s = conv(self.features, 1, self.strides, name='shortcut')(o, **kw, in_scale=bn1)
        return s + h, bounds.residual_sum(l_f, l_s)


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
