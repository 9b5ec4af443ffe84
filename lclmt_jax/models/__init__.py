"""Networks built from Lipschitz-carrying layers, by name (``config.model``).

Every model maps NHWC images in [0, 1] to a :class:`ModelOutput`: the logits and the bounds the
trainer and the certificate need, computed in the same forward pass. A model ends in
:func:`lipschitz_head`, which is how it declares its head: the pairwise constants
K_tj = |w_t - w_j|·L_body (``lclmt_jax.margins``) read the head's kernel and the body's bound
from the output, whatever the network is.

Adding a model is one file in this package: a Flax module registered with ``@MODELS.register``,
whose fields are its settings. ``config.<name>`` (a ConfigDict of some of those fields, optional)
sets them; the number of classes comes from the dataset. Bounds compose by the rules of
``lclmt_jax.bounds`` (chain: product; residual: sum; BN folded into a conv).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lclmt_jax import bounds
from lclmt_jax.layers import LipschitzDense
from lclmt_jax.registry import Registry

Array = jax.Array

MODELS: Registry[type[nn.Module]] = Registry('model', package=__name__)

# Fields every model receives from the trainer rather than from ``config.<model>``.
_TRAINER_FIELDS = ('num_classes', 'estimator')

# Kernel initializers a model may name (``weight_init``): He/LeCun scaling, or orthogonal matrices,
# whose singular values all start at 1 (a Lipschitz bound of 1 per layer from the first step).
INITIALIZERS: Registry[nn.initializers.Initializer] = Registry('init')
INITIALIZERS.register('lecun_normal', nn.initializers.lecun_normal())
INITIALIZERS.register('he_normal', nn.initializers.he_normal())
INITIALIZERS.register('orthogonal', nn.initializers.orthogonal())


class ModelOutput(NamedTuple):
    """Logits, a bound L of x -> logits, the bound L_body of x -> head input, the head's kernel.

    L = L_body·|head_kernel|_2. With ``sound=True`` the bounds are guaranteed float64 upper
    bounds; otherwise training estimates.
    """

    logits: Array
    lipschitz: Array
    body_lipschitz: Array
    head_kernel: Array


def check_widths(widths: Any, name: str) -> None:
    """Raises ValueError unless ``widths`` (``name`` in the config) is a sequence of positive
    ints: the dense layer widths of a model."""
    if isinstance(widths, str) or not all(isinstance(width, int) and width > 0
                                          for width in widths):
        raise ValueError(f'{name} must be positive ints, got {widths!r}')


def dense_stack(h: Array, widths: Sequence[int], activation: Any, body_lipschitz: Any, *,
                train: bool, sound: bool, estimator: bounds.Estimator,
                kernel_init: Any) -> tuple[Array, Any]:
    """Dense layers of ``widths``, each followed by ``activation`` (an ``ACTIVATIONS`` entry),
    on the flat features ``h``; returns the features and ``body_lipschitz`` chained with every
    layer's and activation's bound. Call it inside a model's ``@nn.compact __call__``."""
    for width in widths:
        h, layer_bound = LipschitzDense(width, kernel_init, estimator)(h, train=train, sound=sound)
        h, activation_bound = activation(h)
        body_lipschitz = bounds.chain(body_lipschitz, layer_bound, activation_bound)
    return h, body_lipschitz


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
    logits, head_bound = head(h, train=train, sound=sound)
    return ModelOutput(logits, body_lipschitz * head_bound, body_lipschitz,
                       head.variables['params']['kernel'])


def model_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The fields ``config.<config.model>`` sets, checked against the model's own fields."""
    model_class = MODELS.get(config.model, 'config.model')
    section = config.get(config.model, None)
    settings = dict(section) if section is not None else {}
    allowed = [field.name for field in dataclasses.fields(model_class)
               if field.init and field.name not in ('parent', 'name', *_TRAINER_FIELDS)]
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(f'config.{config.model}.{unknown[0]} is not a setting of model '
                         f'{config.model!r}; allowed: {", ".join(allowed)}')
    return settings


def estimator(config: ml_collections.ConfigDict) -> bounds.Estimator:
    """The training estimator of ``config.bound``."""
    return bounds.Estimator(power_iterations=config.bound.power_iterations,
                            subspace_size=config.bound.subspace_size,
                            exact_below=config.bound.exact_below)


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The network named by ``config.model``, set up by ``config.<model>``, for ``num_classes``,
    with the training estimator of ``config.bound``."""
    model_class = MODELS.get(config.model, 'config.model')
    return model_class(**model_settings(config), num_classes=num_classes,
                       estimator=estimator(config))


def init_variables(model: nn.Module, rng: Array, input_shape: Sequence[int]) -> dict:
    """Initializes params, power-iteration vectors and BN statistics for (1, *input_shape) inputs.

    Runs in eval mode (``train=False``), jitted: one compilation instead of dispatching every
    initializer (orthogonal, QR of the power-iteration blocks) op by op.
    """
    return jax.jit(model.init)({'params': rng}, jnp.zeros((1, *input_shape), jnp.float32))


def keeps_blocks(variables: Any) -> bool:
    """Whether some layer of the network keeps a block of power-iteration vectors (2-D)."""
    return any(leaf.ndim == 2 for leaf in jax.tree.leaves(variables.get('lipschitz', {})))


def refresh_estimates(model: nn.Module, variables: Any, images: Array, steps: int) -> dict:
    """The ``'lipschitz'`` collection refreshed, as at the start of each epoch: every dense block
    re-orthonormalised by one Rayleigh-Ritz step (``bounds.dense_rayleigh_ritz``), every single
    vector (dense or conv) advanced ``max(steps, 1)`` power iterations.

    Runs the network in train mode on ``images`` (float, a fixed batch: the BN statistics of
    folded conv bounds are those of a training batch) without touching the BN running averages.
    It lets the training estimate catch up with weights that moved faster than the per-step
    iterations could follow, and keeps each block a basis of its layer's top singular subspace.
    """
    refresher = model.clone(estimator=model.estimator._replace(
        power_iterations=max(steps, 1), rayleigh_ritz=True))
    _, updated = refresher.apply(variables, images, train=True, mutable=['lipschitz'])
    return updated['lipschitz']
