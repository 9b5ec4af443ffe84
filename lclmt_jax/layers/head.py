"""The dense head that ends every network, plain or last-layer-normalised (LLN), and the
network's output: the logits with the bounds the certificate reads (``ModelOutput``)."""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lclmt_jax import bounds, rounding
from lclmt_jax.layers import LAYERS, record
from lclmt_jax.layers.dense import LipschitzDense

Array = jax.Array


class ModelOutput(NamedTuple):
    """Logits, a bound L of x -> logits, the bound L_body of x -> head input, the head's kernel.

    L = L_body·|head_kernel|_2. With ``sound=True`` the bounds are guaranteed float64 upper
    bounds; otherwise training estimates.
    """

    logits: Array
    lipschitz: Array
    body_lipschitz: Array
    head_kernel: Array


@LAYERS.register('normalized_head')
class NormalizedHead(nn.Module):
    """Last-layer normalisation (LLN; Singla et al., 2022): ``y = h @ W^ + bias`` with every
    class column w^_c = w_c/|w_c| of unit L2 norm. Returns ``(y, W^, bound)``.

    W^ is computed in the dtype of the forward pass (float32 in training, float64 in the
    certifying forward pass of ``certify.logits_float64``); with ``sound=True`` it is the float64
    normalisation of the concrete kernel on the host, i.e. the weights that float64 forward pass
    applies, so the pairwise constants |w^_t - w^_j|·L_body describe the logits being certified.
    bound = |W^|_2: exact (``dense_exact_norm``, the class count is the small side) in training,
    ``dense_upper_bound`` when sound.
    """

    features: int
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: Array, *, sound: bool = False):
        kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features))
        bias = self.param('bias', nn.initializers.zeros, (self.features,))
        if sound:
            matrix = bounds.require_concrete(kernel, 'a normalised head')
            unit = matrix / np.linalg.norm(matrix, axis=0, keepdims=True)
            record(self, lambda: rounding.Head(kernel, bias, normalized=True))
            return x @ jnp.asarray(unit, x.dtype) + bias, unit, bounds.dense_upper_bound(unit)
        unit = kernel / jnp.linalg.norm(kernel, axis=0, keepdims=True)
        return x @ unit.astype(x.dtype) + bias, unit, bounds.dense_exact_norm(unit)


def lipschitz_head(h: Array, body_lipschitz: Any, num_classes: int, *, train: bool,
                   sound: bool, estimator: bounds.Estimator = bounds.ONE_VECTOR,
                   kernel_init: Any = nn.initializers.lecun_normal(),
                   normalize: bool = False) -> ModelOutput:
    """The dense ``'head'`` on the body's features ``h``, and the whole network's output.

    ``normalize=True``: a ``NormalizedHead`` (LLN), whose unit-norm columns are the head kernel
    the output carries. Call it last inside a model's ``@nn.compact __call__``.
    """
    if normalize:
        logits, unit, head_bound = NormalizedHead(num_classes, kernel_init, name='head')(
            h, sound=sound)
        return ModelOutput(logits, body_lipschitz * head_bound, body_lipschitz, unit)
    head = LipschitzDense(num_classes, kernel_init, estimator, name='head')
    with rounding.capture():  # the head's rounding is the network's last rule, not a Dense step
        logits, head_bound = head(h, train=train, sound=sound)
    params = head.variables['params']
    rounding.record(lambda: rounding.Head(params['kernel'], params['bias']))
    return ModelOutput(logits, body_lipschitz * head_bound, body_lipschitz, params['kernel'])
