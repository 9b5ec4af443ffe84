"""Networks built from Lipschitz-carrying layers, by name (``config.model``).

Every model maps NHWC images in [0, 1] to a ``layers.head.ModelOutput``: the logits and the
bounds the trainer and the certificate need, computed in the same forward pass. A model is a
composition of the layer families of ``lclmt_jax.layers`` (each with its estimate, sound bound
and float32 rounding step) and ends in ``layers.head.lipschitz_head``, which is how it declares
its head: the pairwise constants K_tj = |w_t - w_j|·L_body (``lclmt_jax.margins``) read the
head's kernel and the body's bound from the output, whatever the network is. Nothing else
describes a model: its float32 rounding analysis is recorded from its own sound pass
(``lclmt_jax.rounding``).

Adding a model is one file in this package: a Flax module registered with ``@MODELS.register``,
whose fields are its settings. ``config.<name>`` (a ConfigDict of some of those fields, optional)
sets them; the number of classes comes from the dataset. Bounds compose by the rules of
``lclmt_jax.bounds`` (chain: product; residual: sum; BN folded into a conv). Parameter-free maps
between layers go through ``layers.flatten``, ``layers.shift`` or ``layers.exact_map``, so that
the analysis sees them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lclmt_jax import bounds
from lclmt_jax.layers.dense import LipschitzDense
from lclmt_jax.layers.head import ModelOutput as ModelOutput  # what every model returns
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
