"""Flax layers that return their own Lipschitz bound: ``(y, bound)`` for every call.

``bound`` is a Lipschitz constant of ``x -> y`` in L2, computed by the pure functions of
``lclmt_jax.bounds``:

* ``sound=False`` (training): a differentiable *estimate* from power iteration with persistent
  vectors kept in the ``'lipschitz'`` variable collection, as ``bounds.Estimator`` says (steps per
  call, a block of vectors, the exact norm of thin layers), kept when the collection is mutable
  and ``train=True``. Power iteration converges from *below*, so this value steers training but
  certifies nothing.
* ``sound=True`` (certification): a guaranteed *upper* bound computed on the host in float64 from
  the concrete parameters (never under ``jit``).

Adding a layer type means adding its module here and its two bound functions to ``bounds.py``;
the train step never changes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lclmt_jax import bounds

Array = jax.Array


def _power_iteration_vector(module: nn.Module, shape: tuple[int, ...]) -> nn.Variable:
    """The persistent unit vector of a layer's power iteration, random at init."""
    return module.variable(
        'lipschitz', 'v',
        lambda: bounds.normalize(jax.random.normal(module.make_rng('params'), shape)))


def _keep_vector(module: nn.Module, train: bool) -> bool:
    """Whether this call may store the updated vector (training, collection mutable)."""
    return train and module.is_mutable_collection('lipschitz') and not module.is_initializing()


class LipschitzDense(nn.Module):
    """Fully connected layer ``y = x @ kernel + bias`` returning its Lipschitz bound |kernel|_2.

    The training estimate follows ``estimator``, with matrix products only: thin layers (smaller
    side <= ``exact_below``) use their small Gram matrix (``bounds.dense_gram_norm``, no state);
    others keep a persistent block of ``subspace_size`` vectors (``bounds.dense_block_iteration``)
    or a single vector (``bounds.dense_power_iteration``), advanced ``power_iterations`` times per
    training call; ``estimator.rayleigh_ritz`` re-orthonormalises the block instead
    (``models.refresh_estimates``, once per epoch).
    """

    features: int
    kernel_init: Any = nn.initializers.lecun_normal()
    estimator: bounds.Estimator = bounds.ONE_VECTOR

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False):
        kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features))
        bias = self.param('bias', nn.initializers.zeros, (self.features,))
        y = x @ kernel + bias
        if sound:
            return y, bounds.dense_upper_bound(kernel)
        estimator, size = self.estimator, min(kernel.shape)
        if size <= estimator.exact_below:
            return y, bounds.dense_gram_norm(kernel)
        block = min(estimator.subspace_size, size)
        if block > 1:
            state = self.variable('lipschitz', 'v', lambda: jnp.linalg.qr(jax.random.normal(
                self.make_rng('params'), (x.shape[-1], block)))[0])
            if estimator.rayleigh_ritz:
                new = bounds.dense_rayleigh_ritz(kernel, state.value)
                sigma, _ = bounds.dense_block_iteration(kernel, new)
            else:
                sigma, new = bounds.dense_block_iteration(kernel, state.value,
                                                          estimator.power_iterations)
        else:
            state = _power_iteration_vector(self, (x.shape[-1],))
            sigma, new = bounds.dense_power_iteration(kernel, state.value,
                                                      estimator.power_iterations)
        if _keep_vector(self, train):
            state.value = new
        return y, sigma


class LipschitzConv(nn.Module):
    """2-D conv (NHWC, HWIO kernel, cross-correlation as ``lax.conv``) returning its bound.

    The bound is for the conv as a linear map on the input's actual spatial shape (stride and
    zero padding included); the bias does not change a Lipschitz constant. The power-iteration
    vector ``'lipschitz'/'v'`` has shape (1, H, W, C_in), fixed at init, so the layer must keep
    seeing inputs of that spatial shape.

    ``in_scale``/``out_scale`` (per-channel, e.g. the multipliers of the batch norms before and
    after the conv, see ``LipschitzBatchNorm.per_channel``) change only the returned bound: it is
    then that of diag(out_scale)·conv·diag(in_scale), while ``y`` is still the plain conv. A
    network uses it to bound BN-conv-BN chains as one operator (``models.wrn.PreActBlock``),
    which is much tighter than the product of the three norms. In sound mode the scales must be
    concrete. ``with_bound=False`` returns ``(y, None)`` and leaves the power iteration alone:
    for a caller whose ``out_scale`` depends on ``y``, which then calls the layer again on the
    same input for the bound (the second forward conv is unused and compiled away).
    """

    features: int
    kernel_size: int | tuple[int, int] = 3
    strides: int | tuple[int, int] = 1
    padding: bounds.ConvPadding = 'SAME'
    use_bias: bool = True
    kernel_init: Any = nn.initializers.lecun_normal()
    estimator: bounds.Estimator = bounds.ONE_VECTOR

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False,
                 in_scale: Any = None, out_scale: Any = None, with_bound: bool = True):
        kernel_hw = bounds.pair(self.kernel_size, 'kernel_size')
        strides = bounds.pair(self.strides, 'strides')
        pads = bounds.conv_padding(self.padding, x.shape[1:3], kernel_hw, strides)
        kernel = self.param('kernel', self.kernel_init, (*kernel_hw, x.shape[-1], self.features))
        y = bounds.conv(x, kernel.astype(x.dtype), strides, pads)
        if self.use_bias:
            y = y + self.param('bias', nn.initializers.zeros, (self.features,)).astype(x.dtype)
        if not with_bound:
            return y, None
        if sound:
            return y, bounds.conv_upper_bound(kernel, x.shape, strides, pads, in_scale,
                                              out_scale)
        v = _power_iteration_vector(self, (1, *x.shape[1:]))
        if v.value.shape[1:] != x.shape[1:]:
            raise ValueError(f'{self.name}: initialized for inputs of shape {v.value.shape[1:]}, '
                             f'applied to {x.shape[1:]}; the bound depends on the input shape')
        sigma, v_new = bounds.conv_power_iteration(kernel, v.value, strides, pads, in_scale,
                                                   out_scale, self.estimator.power_iterations)
        if _keep_vector(self, train):
            v.value = v_new
        return y, sigma


class LipschitzBatchNorm(nn.Module):
    """Batch norm over the last (channel) axis, y = gamma·(x - mu)/sqrt(var + eps) + beta.

    Statistics: batch mean/variance over all but the channel axis when ``train=True`` (over the
    whole global batch: under the trainer's sharded ``jit`` XLA inserts the cross-device sums),
    the running averages in collection ``'batch_stats'`` otherwise and always when ``sound=True``
    (the certificate is for the eval-mode network). Running averages are updated in train mode when
    ``'batch_stats'`` is mutable.

    Bound: max_c |gamma_c|/sqrt(var_c + eps) with the variance that mode uses. For eval and sound
    mode it is exact (see ``batch_norm_upper_bound``). In train mode the batch statistics depend
    on x, and the bound treats them as constants -- BN as the affine map it applies to this batch
    -- which is the standard LMT convention (Tsuzuku et al., 2018): it steers training, and the
    certificate always uses eval mode. The train-mode value is differentiable in gamma and in the
    batch variance.

    ``per_channel=True`` returns the whole diagonal |D| = |gamma|/sqrt(var + eps) (C,) instead of
    its maximum -- float64 ``batch_norm_multipliers`` in sound mode -- for a following or
    preceding conv to fold into its own bound (``LipschitzConv``'s ``in_scale``/``out_scale``).
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    per_channel: bool = False

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False):
        features = x.shape[-1]
        scale = self.param('scale', nn.initializers.ones, (features,))
        bias = self.param('bias', nn.initializers.zeros, (features,))
        running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
        running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
        if train and not sound:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axes)
            var = jnp.mean(jnp.square(x - mean), axes)
            if self.is_mutable_collection('batch_stats') and not self.is_initializing():
                m = self.momentum
                running_mean.value = m * running_mean.value + (1 - m) * mean
                running_var.value = m * running_var.value + (1 - m) * var
        else:
            mean, var = running_mean.value, running_var.value
        multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
        y = (x - mean.astype(x.dtype)) * multiplier.astype(x.dtype) + bias.astype(x.dtype)
        if sound:
            if self.per_channel:
                return y, bounds.batch_norm_multipliers(scale, var, self.epsilon)
            return y, bounds.batch_norm_upper_bound(scale, var, self.epsilon)
        if self.per_channel:
            return y, jnp.abs(multiplier)
        return y, jnp.max(jnp.abs(multiplier))


def global_average_pool(x: Array, *, sound: bool = False) -> tuple[Array, float]:
    """Mean over the spatial axes of NHWC ``x`` and its Lipschitz constant (``bounds``)."""
    return jnp.mean(x, axis=(1, 2)), bounds.average_pool_bound(x.shape[1], x.shape[2], sound)


# ----------------------------------------------------------------------------- 1-Lipschitz layers
#
# AOL and SLL layers are 1-Lipschitz by construction (``bounds.aol_scale``, ``bounds.sll_scale``):
# their training bound is the constant 1 (no power iteration, no ``'lipschitz'`` variables), and
# their sound bound is the float64 norm of the operator the forward pass applies, <= 1 + 1e-5.


def dirac_init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """The identity conv (HWIO): 1 from input channel i to output channel i < min(C_in, C_out) at
    the tap ((k_h - 1)//2, (k_w - 1)//2), 0 elsewhere. That tap is the one 'SAME' padding (XLA:
    the odd pixel at the end) aligns with the output's own pixel, so at stride 1 the conv starts
    as x -> x on the shared channels. ``key`` is unused (the identity is deterministic)."""
    del key
    k_h, k_w, c_in, c_out = shape
    identity = jnp.eye(c_in, c_out, dtype=dtype)
    return jnp.zeros(shape, dtype).at[(k_h - 1) // 2, (k_w - 1) // 2].set(identity)


def _symmetric_uniform(limit: float) -> nn.initializers.Initializer:
    """Uniform in [-limit, limit] (SLL's bias initialisation, limit 1/sqrt(fan_in))."""
    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -limit, limit)
    return init


class AOLDense(nn.Module):
    """Almost-orthogonal dense layer (Prach & Lampert, 2022): ``y = x @ (diag(d)·kernel) + bias``
    with d recomputed from ``kernel`` on every call (``bounds.aol_scale``), so |diag(d)·kernel|_2
    <= 1 whatever the parameters; orthogonal initialisation (then diag(d)·kernel is orthogonal up
    to eps). Bound: 1 in training, ``bounds.aol_upper_bound`` (float64 SVD of the rescaled
    kernel) when ``sound``."""

    features: int
    kernel_init: Any = nn.initializers.orthogonal()
    epsilon: float = bounds.AOL_EPSILON

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False):
        kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features))
        bias = self.param('bias', nn.initializers.zeros, (self.features,))
        y = x @ bounds.aol_kernel(kernel, self.epsilon).astype(x.dtype) + bias.astype(x.dtype)
        if sound:
            return y, bounds.aol_upper_bound(kernel, epsilon=self.epsilon)
        return y, 1.0


class AOLConv(nn.Module):
    """Almost-orthogonal conv (NHWC, HWIO kernel): the kernel with input channel i scaled by
    d_i = (sum_Δ sum_j |G_Δ|_ij + eps)^(-1/2), G the Gram kernel of C^T C on the plane
    (``bounds.aol_scale``), recomputed on every call; then an ordinary zero-padded conv.

    The references use stride 1 and 'SAME' zero padding; any stride and padding is 1-Lipschitz
    too (the layer is a compression of the plane conv, see ``bounds.aol_scale``), and the sound
    bound (``bounds.aol_upper_bound`` on the input's spatial shape) covers each case exactly as
    it is computed. ``kernel_init`` None: the identity (``dirac_init``) for k×k kernels, as
    AOL's IdentityCenterInitializer and 1LipschitzLayersCompared's Dirac init, and orthogonal for
    1×1. Bound: 1 in training.
    """

    features: int
    kernel_size: int | tuple[int, int] = 3
    strides: int | tuple[int, int] = 1
    padding: bounds.ConvPadding = 'SAME'
    use_bias: bool = True
    kernel_init: Any = None
    epsilon: float = bounds.AOL_EPSILON

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False):
        kernel_hw = bounds.pair(self.kernel_size, 'kernel_size')
        strides = bounds.pair(self.strides, 'strides')
        pads = bounds.conv_padding(self.padding, x.shape[1:3], kernel_hw, strides)
        init = self.kernel_init or (nn.initializers.orthogonal() if kernel_hw == (1, 1)
                                    else dirac_init)
        kernel = self.param('kernel', init, (*kernel_hw, x.shape[-1], self.features))
        y = bounds.conv(x, bounds.aol_kernel(kernel, self.epsilon).astype(x.dtype), strides, pads)
        if self.use_bias:
            y = y + self.param('bias', nn.initializers.zeros, (self.features,)).astype(x.dtype)
        if sound:
            return y, bounds.aol_upper_bound(kernel, x.shape, strides, pads, self.epsilon)
        return y, 1.0


class SLLDense(nn.Module):
    """SDP-based Lipschitz layer (Araujo et al., 2023), corrected form, on features x (n,):
    ``y = x - 2·W diag(t) relu(W^T x + b)`` with W = ``kernel`` (n, inner) and t recomputed from
    W and the weights ``q`` on every call (``bounds.sll_scale``). 1-Lipschitz for every
    parameter value (``bounds.sll_residual_bound``); ReLU inside is what the proof needs.

    Initialisation as the reference code: Glorot normal W, bias uniform in ±1/sqrt(n), q_raw
    standard normal. ``inner`` None: n. Bound: 1 in training, ``bounds.sll_upper_bound`` when
    ``sound``.
    """

    inner: int | None = None
    kernel_init: Any = nn.initializers.glorot_normal()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False):
        features = x.shape[-1]
        inner = self.inner or features
        kernel = self.param('kernel', self.kernel_init, (features, inner))
        bias = self.param('bias', _symmetric_uniform(features ** -0.5), (inner,))
        q_raw = self.param('q', nn.initializers.normal(1.0), (inner,))
        t = bounds.sll_scale(kernel, q_raw).astype(x.dtype)
        w = kernel.astype(x.dtype)
        y = x - 2.0 * (t * nn.relu(x @ w + bias.astype(x.dtype))) @ w.T
        if sound:
            return y, bounds.sll_upper_bound(kernel, q_raw)
        return y, 1.0


class SLLConv(nn.Module):
    """SLL conv layer, corrected form: ``y = x - 2·A^T(t ⊙ relu(A x + b))``, A the bias-free
    zero-padded conv from the C input channels to ``inner`` channels and A^T its exact adjoint
    (``bounds.conv_with_adjoint``), t per inner channel from the Gram kernel of A A^T
    (``bounds.sll_scale``), recomputed on every call. y has x's shape for every stride and
    padding (A^T maps back), and the layer is 1-Lipschitz for all of them (``bounds.sll_scale``
    covers compressions of the plane conv); the references use stride 1, 'SAME'.

    Initialisation as the reference code: Glorot normal kernel, bias uniform in
    ±1/sqrt(k_h·k_w·C), q_raw standard normal. ``inner`` None: C. Bound: 1 in training,
    ``bounds.sll_upper_bound`` on the input's spatial shape when ``sound``.
    """

    inner: int | None = None
    kernel_size: int | tuple[int, int] = 3
    strides: int | tuple[int, int] = 1
    padding: bounds.ConvPadding = 'SAME'
    kernel_init: Any = nn.initializers.glorot_normal()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False):
        channels = x.shape[-1]
        inner = self.inner or channels
        kernel_hw = bounds.pair(self.kernel_size, 'kernel_size')
        strides = bounds.pair(self.strides, 'strides')
        pads = bounds.conv_padding(self.padding, x.shape[1:3], kernel_hw, strides)
        fan_in = kernel_hw[0] * kernel_hw[1] * channels
        kernel = self.param('kernel', self.kernel_init, (*kernel_hw, channels, inner))
        bias = self.param('bias', _symmetric_uniform(fan_in ** -0.5), (inner,))
        q_raw = self.param('q', nn.initializers.normal(1.0), (inner,))
        t = bounds.sll_scale(kernel, q_raw).astype(x.dtype)
        image, adjoint = bounds.conv_with_adjoint(x, kernel.astype(x.dtype), strides, pads)
        y = x - 2.0 * adjoint(t * nn.relu(image + bias.astype(x.dtype)))
        if sound:
            return y, bounds.sll_upper_bound(kernel, q_raw, x.shape, strides, pads)
        return y, 1.0
