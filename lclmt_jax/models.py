"""Networks built from Lipschitz-carrying layers; each returns logits and its Lipschitz bound.

Convention used by the pairwise certificate: the last layer is a ``LipschitzDense`` named
``'head'``, and ``body_lipschitz`` bounds the map from the input to the head's input.

Bounds compose by two rules: a chain g ∘ f is L_g·L_f-Lipschitz, and a sum s + f of two maps of
the same input is (L_s + L_f)-Lipschitz (triangle inequality). The WRN blocks also fold each batch
norm's diagonal into a neighbouring conv and bound the pair as one operator (``PreActBlock``).
With ``sound=True`` every factor is a float64 upper bound inflated by ``layers.SOUND_SLACK``
(1e-6) against errors below 1e-9, so the few dozen float64 roundings (relative 1.1e-16 each) of
these products and sums stay covered.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lclmt_jax.layers import (
    LipschitzBatchNorm,
    LipschitzConv,
    LipschitzDense,
    global_average_pool,
    relu,
)

Array = jax.Array


class ModelOutput(NamedTuple):
    """Logits, a Lipschitz bound L of x -> logits, and the bound of x -> head input."""

    logits: Array
    lipschitz: Array
    body_lipschitz: Array


class MLP(nn.Module):
    """The paper's MNIST network: flatten, dense layers with ReLU, dense head.

    L = prod_k |W_k|_2, since ReLU and flatten are 1-Lipschitz.
    """

    hidden_sizes: Sequence[int] = (100, 100, 100)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False) -> ModelOutput:
        h = x.reshape((x.shape[0], -1))
        body_lipschitz = 1.0
        for width in self.hidden_sizes:
            h, bound = LipschitzDense(width)(h, train=train, sound=sound)
            h = nn.relu(h)
            body_lipschitz = body_lipschitz * bound
        logits, head_bound = LipschitzDense(self.num_classes, name='head')(
            h, train=train, sound=sound)
        return ModelOutput(logits, body_lipschitz * head_bound, body_lipschitz)


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
    bn_axis_name: str | None = None
    fold_bn: bool = True
    zero_init_residual: bool = False

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False,
                 sound: bool = False) -> tuple[Array, Array | float]:
        kw = {'train': train, 'sound': sound}
        bn = functools.partial(LipschitzBatchNorm, axis_name=self.bn_axis_name,
                               per_channel=self.fold_bn)
        conv = functools.partial(LipschitzConv, use_bias=False,
                                 kernel_init=nn.initializers.he_normal())
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
            l_f = l_conv1 * l_bn2 * l_relu2 * l_conv2
            if identity:
                return x + h, 1.0 + bn1 * l_relu1 * l_f
            s, l_s = conv(self.features, 1, self.strides, name='shortcut')(o, **kw)
            return s + h, bn1 * l_relu1 * (l_s + l_f)
        # conv1's folded bound needs bn2's multipliers, which depend on conv1's output: the
        # output first, the bound in a second call (whose unused forward conv XLA removes).
        h, _ = conv1(o, **kw, with_bound=False)
        h, bn2 = bn(name='bn2')(h, **kw)
        _, l_conv1 = conv1(o, **kw, in_scale=bn1, out_scale=bn2)
        h, _ = relu(h)
        h, l_conv2 = conv(self.features, 3, 1, name='conv2', **conv2_init)(h, **kw)
        l_f = l_conv1 * l_conv2  # ReLUs are inside the folded norms (S1, S2 above)
        if identity:
            return x + h, 1.0 + l_f
        s, l_s = conv(self.features, 1, self.strides, name='shortcut')(o, **kw, in_scale=bn1)
        return s + h, l_s + l_f


class WideResNet(nn.Module):
    """WRN-depth-width (Zagoruyko & Komodakis, 2016) with pre-activation blocks.

    Stem 3×3 conv (16), three groups of (depth - 4)/6 ``PreActBlock``s of widths 16·w, 32·w,
    64·w and first strides 1, 2, 2, then BN-ReLU, global average pooling and the dense ``'head'``.
    body bound = L_stem · prod_blocks L_block · L_bn · 1/sqrt(H·W) (chain rule: each stage maps
    the previous stage's output), L = body · L_head, with L_block folded or not by ``fold_bn``
    (see ``PreActBlock``; the final BN stays a separate factor, so that ``body_lipschitz`` keeps
    bounding the head's input for the pairwise certificate). No dropout. ``bn_axis_name`` is the
    mapped axis over which train-mode batch statistics are averaged (``'data'`` inside the
    trainer's ``shard_map``); None for use outside any mapped axis. Eval and sound mode never use
    it.

    ``zero_init_residual``: every block's conv2 starts at zero, so each residual branch starts as
    the zero map (Goyal et al., 2017; Zhang et al., 2019, Fixup): identity blocks start with bound
    exactly 1 and projection blocks with |Ks D1|, the initial L is orders of magnitude smaller
    (``configs.svhn_variant`` turns it on; the power iteration keeps its vector while a kernel is
    zero).
    """

    depth: int = 16
    width: int = 4
    num_classes: int = 10
    bn_axis_name: str | None = None
    fold_bn: bool = True
    zero_init_residual: bool = False

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False) -> ModelOutput:
        if self.depth < 10 or (self.depth - 4) % 6:
            raise ValueError(f'WRN depth must be 6n + 4 with n >= 1, got {self.depth}')
        kw = {'train': train, 'sound': sound}
        h, body_lipschitz = LipschitzConv(16, 3, use_bias=False,
                                          kernel_init=nn.initializers.he_normal(),
                                          name='stem')(x, **kw)
        for group, (base, stride) in enumerate(zip((16, 32, 64), (1, 2, 2), strict=True)):
            for index in range((self.depth - 4) // 6):
                h, bound = PreActBlock(base * self.width, stride if index == 0 else 1,
                                       self.bn_axis_name, self.fold_bn,
                                       self.zero_init_residual,
                                       name=f'group{group + 1}_block{index + 1}')(h, **kw)
                body_lipschitz = body_lipschitz * bound
        h, l_bn = LipschitzBatchNorm(axis_name=self.bn_axis_name, name='final_bn')(h, **kw)
        h, l_relu = relu(h)
        h, l_pool = global_average_pool(h, sound=sound)
        body_lipschitz = body_lipschitz * l_bn * l_relu * l_pool
        logits, head_bound = LipschitzDense(self.num_classes, name='head')(h, **kw)
        return ModelOutput(logits, body_lipschitz * head_bound, body_lipschitz)


MODELS = ('mlp', 'wrn')

# The trainer's mesh axis (``train.DATA_AXIS``; not imported: train imports this module).
_TRAIN_AXIS = 'data'


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """Builds the network named by ``config.model`` with the dataset's number of classes.

    ``'wrn'`` reads ``config.wrn.depth``, ``config.wrn.width`` and
    ``config.wrn.zero_init_residual`` (16, 4 and False when absent) and averages train-mode BN
    statistics over the trainer's ``'data'`` axis; ``model.init`` and eval-mode ``apply`` still
    work outside ``shard_map``.
    """
    if config.model == 'mlp':
        return MLP(hidden_sizes=tuple(config.mlp.hidden_sizes), num_classes=num_classes)
    if config.model == 'wrn':
        wrn = config.get('wrn', None)
        wrn = {} if wrn is None else wrn
        return WideResNet(depth=int(wrn.get('depth', 16)), width=int(wrn.get('width', 4)),
                          num_classes=num_classes, bn_axis_name=_TRAIN_AXIS,
                          zero_init_residual=bool(wrn.get('zero_init_residual', False)))
    raise ValueError(f'unknown model {config.model!r}; allowed: {", ".join(MODELS)}')


def init_variables(model: nn.Module, rng: Array, input_shape: Sequence[int]) -> dict:
    """Initializes params, power-iteration vectors and BN statistics for (1, *input_shape) inputs.

    Runs in eval mode (``train=False``), so it needs no mapped axis even for models whose BN
    averages over one in training.
    """
    return model.init({'params': rng}, jnp.zeros((1, *input_shape), jnp.float32))
