"""A plain convolutional network: convs, then dense layers, then the head. Its default is 4C3F.

4C3F (Wong et al., 2018; the CNN of GloRo and CRM on MNIST): conv 32 3×3, conv 32 4×4 stride 2,
conv 64 3×3, conv 64 4×4 stride 2 ('SAME' padding), flatten, dense 512, dense 512, dense head.
On 28×28×1 inputs the feature maps are 28, 14, 14, 7; on 32×32×3 they are 32, 16, 16, 8.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from lclmt_jax import bounds, layers
from lclmt_jax.activations import ACTIVATIONS
from lclmt_jax.layers.conv import LipschitzConv
from lclmt_jax.layers.head import ModelOutput, lipschitz_head
from lclmt_jax.models import INITIALIZERS, MODELS, check_widths, dense_stack

Array = jax.Array


@MODELS.register('cnn')
class CNN(nn.Module):
    """``convs`` (features, kernel size, stride) each followed by ``activation``, flatten,
    ``dense`` layers each followed by ``activation``, dense head.

    L_body = prod_k L_conv_k · prod_k |W_k|_2 · L_act^layers: a chain (``bounds.chain``), flatten
    an isometry; each conv's bound is its operator norm on its actual input shape (stride and
    zero padding included; ``bounds.conv_upper_bound`` when certifying).
    """

    convs: Sequence[tuple[int, int, int]] = ((32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 4, 2))
    dense: Sequence[int] = (512, 512)
    activation: str = 'minmax'
    weight_init: str = 'orthogonal'
    num_classes: int = 10
    estimator: bounds.Estimator = bounds.ONE_VECTOR

    def __post_init__(self):
        ACTIVATIONS.get(self.activation, 'activation')
        INITIALIZERS.get(self.weight_init, 'weight_init')
        if not all(len(conv) == 3 and all(isinstance(n, int) and n > 0 for n in conv)
                   for conv in self.convs):
            raise ValueError('cnn.convs must be (features, kernel size, stride) triples of '
                             f'positive ints, got {self.convs!r}')
        check_widths(self.dense, 'cnn.dense')
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False) -> ModelOutput:
        activation, init = ACTIVATIONS.get(self.activation), INITIALIZERS.get(self.weight_init)
        kw = {'train': train, 'sound': sound}
        h, body_lipschitz = x, 1.0
        for features, size, stride in self.convs:
            h, layer_bound = LipschitzConv(features, size, stride, 'SAME', kernel_init=init,
                                           estimator=self.estimator)(h, **kw)
            h, activation_bound = activation(h)
            body_lipschitz = bounds.chain(body_lipschitz, layer_bound, activation_bound)
        h = layers.flatten(h)
        h, body_lipschitz = dense_stack(h, self.dense, activation, body_lipschitz,
                                        estimator=self.estimator, kernel_init=init, **kw)
        return lipschitz_head(h, body_lipschitz, self.num_classes, estimator=self.estimator,
                              kernel_init=init, **kw)
