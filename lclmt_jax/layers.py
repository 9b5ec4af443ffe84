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

    The training estimate follows ``estimator``: the exact norm for thin layers (smaller side
    <= ``exact_below``), else a block of ``subspace_size`` vectors or a single one, advanced
    ``power_iterations`` times per training call.
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
            return y, bounds.dense_exact_norm(kernel)
        block = min(estimator.subspace_size, size)
        if block > 1:
            basis = self.variable('lipschitz', 'v', lambda: jnp.linalg.qr(jax.random.normal(
                self.make_rng('params'), (x.shape[-1], block)))[0])
            sigma, new = bounds.dense_subspace_iteration(kernel, basis.value,
                                                         estimator.power_iterations)
        else:
            basis = _power_iteration_vector(self, (x.shape[-1],))
            sigma, new = bounds.dense_power_iteration(kernel, basis.value,
                                                      estimator.power_iterations)
        if _keep_vector(self, train):
            basis.value = new
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
