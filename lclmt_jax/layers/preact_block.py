"""The pre-activation residual block of WideResNets, with its batch norms folded into its
convs' bounds, and its float32 rounding as one residual step."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax

from lclmt_jax import bounds, rounding
from lclmt_jax.activations import relu
from lclmt_jax.layers import LAYERS
from lclmt_jax.layers.batchnorm import LipschitzBatchNorm
from lclmt_jax.layers.conv import LipschitzConv

Array = jax.Array


@LAYERS.register('preact_block')
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
        with rounding.capture() as pre:  # BN1-ReLU: shared by the branch and the shortcut
            o, bn1 = bn(name='bn1')(x, **kw)  # per channel (C,) when folding, else a scalar
            o, l_relu1 = relu(o)
        conv1 = conv(self.features, 3, self.strides, name='conv1')
        with rounding.capture() as branch:
            if self.fold_bn:
                # conv1's folded bound needs bn2's multipliers, which depend on conv1's output:
                # the output first, the bound in a second call (whose unused forward conv XLA
                # removes, and whose rounding step is dropped).
                h, _ = conv1(o, **kw, with_bound=False)
                h, bn2 = bn(name='bn2')(h, **kw)
                with rounding.capture():
                    _, l_conv1 = conv1(o, **kw, in_scale=bn1, out_scale=bn2)
                h, _ = relu(h)
                h, l_conv2 = conv(self.features, 3, 1, name='conv2', **conv2_init)(h, **kw)
                # ReLUs are inside the folded norms (S1, S2 above)
                l_f = bounds.chain(l_conv1, l_conv2)
            else:
                h, l_conv1 = conv1(o, **kw)
                h, l_bn2 = bn(name='bn2')(h, **kw)
                h, l_relu2 = relu(h)
                h, l_conv2 = conv(self.features, 3, 1, name='conv2', **conv2_init)(h, **kw)
                l_f = bounds.chain(l_conv1, l_bn2, l_relu2, l_conv2)
        shortcut: list = []
        if identity:
            y = x + h
            bound = bounds.residual_sum(l_f if self.fold_bn else bounds.chain(bn1, l_relu1, l_f))
        else:
            with rounding.capture() as shortcut:
                s, l_s = conv(self.features, 1, self.strides, name='shortcut')(
                    o, **kw, **({'in_scale': bn1} if self.fold_bn else {}))
            y, bound = s + h, bounds.residual_sum(l_f, l_s)
            if not self.fold_bn:
                bound = bounds.chain(bn1, l_relu1, bound)
        rounding.record(lambda: rounding.Residual(
            pre + branch, pre + shortcut if shortcut else (), float(bound)))
        return y, bound

