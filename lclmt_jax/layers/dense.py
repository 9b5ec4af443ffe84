"""Dense layers with a power-iteration estimate of |W|_2 and its exact float64 bound."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lclmt_jax import bounds, rounding
from lclmt_jax.layers import LAYERS, keeps_vector, power_iteration_vector, record

Array = jax.Array


@LAYERS.register('dense')
class LipschitzDense(nn.Module):
    """Fully connected layer ``y = x @ kernel + bias`` returning its Lipschitz bound |kernel|_2.

    The training estimate follows ``estimator``, with matrix products only: thin layers (smaller
    side <= ``exact_below``) use their small Gram matrix (``bounds.dense_gram_norm``, no state);
    others keep a persistent block of ``subspace_size`` vectors (``bounds.dense_block_iteration``)
    or a single vector (``bounds.dense_power_iteration``), advanced ``power_iterations`` times per
    training call; ``estimator.rayleigh_ritz`` re-orthonormalises the block instead
    (``models.refresh_estimates``, once per epoch).

    Sound bound: the largest singular value by float64 SVD, rounded up
    (``bounds.dense_upper_bound``): exact up to LAPACK's backward error, which ``SOUND_SLACK``
    covers. Rounding step: ``rounding.Dense``, equation (4) of ``lclmt_jax.rounding``.
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
            bound = bounds.dense_upper_bound(kernel)
            record(self, lambda: rounding.Dense(kernel, bias, lipschitz=bound))
            return y, bound
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
            state = power_iteration_vector(self, (x.shape[-1],))
            sigma, new = bounds.dense_power_iteration(kernel, state.value,
                                                      estimator.power_iterations)
        if keeps_vector(self, train):
            state.value = new
        return y, sigma
