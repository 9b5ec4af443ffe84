"""The paper's MNIST network: flatten, dense layers with an activation, dense head."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from lclmt_jax import bounds, layers, models
from lclmt_jax.activations import ACTIVATIONS
from lclmt_jax.layers.head import ModelOutput, lipschitz_head

Array = jax.Array


@models.MODELS.register('mlp')
class MLP(nn.Module):
    """Flatten, ``hidden_sizes`` dense layers each followed by ``activation``, dense head.

    L_body = prod_k |W_k|_2·L_act (flatten is an isometry), L = L_body·|W_head|_2.
    ``weight_init`` names the kernel initializer (``models.INITIALIZERS``).
    """

    hidden_sizes: Sequence[int] = (100, 100, 100)
    activation: str = 'relu'
    weight_init: str = 'lecun_normal'
    num_classes: int = 10
    estimator: bounds.Estimator = bounds.ONE_VECTOR

    def __post_init__(self):
        ACTIVATIONS.get(self.activation, 'activation')
        models.INITIALIZERS.get(self.weight_init, 'weight_init')
        models.check_widths(self.hidden_sizes, 'mlp.hidden_sizes')
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False) -> ModelOutput:
        activation = ACTIVATIONS.get(self.activation)
        init = models.INITIALIZERS.get(self.weight_init)
        h = layers.flatten(x)
        body_lipschitz = 1.0
        h, body_lipschitz = models.dense_stack(h, self.hidden_sizes, activation, body_lipschitz,
                                               train=train, sound=sound,
                                               estimator=self.estimator, kernel_init=init)
        return lipschitz_head(h, body_lipschitz, self.num_classes, train=train, sound=sound,
                              estimator=self.estimator, kernel_init=init)
