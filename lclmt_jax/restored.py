"""The public handle on a trained run: ``lclmt_jax.restore(workdir)``.

>>> model = lclmt_jax.restore('runs/quickstart')
>>> model.logits(x)                      # a pure JAX function of x: jit, grad, vmap all work
>>> jax.grad(lambda x: model.logits(x)[0].sum())(x)
>>> model.apply(model.variables, x)      # the full ModelOutput (logits and bound estimates)
>>> model.lipschitz_upper_bound()        # sound L of x -> logits (host, float64)
>>> model.certified_radius(x, y)         # sound per-example L2 radius (host, float64)

Everything comes from the checkpoint itself (its config and run info travel with it), so
restoring needs neither the trainer nor the optimizer.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lclmt_jax import certify, checkpoints, models, run_files

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class RestoredModel:
    """A trained network with its variables, config and sound certification methods.

    Compared and hashed by identity, so ``model.logits`` can be a static argument of ``jit``.
    """

    config: ml_collections.ConfigDict
    model: nn.Module
    variables: dict
    input_shape: tuple[int, ...]
    num_classes: int
    epoch: int

    @property
    def params(self) -> Any:
        return self.variables['params']

    @property
    def model_state(self) -> dict:
        return {name: value for name, value in self.variables.items() if name != 'params'}

    def apply(self, variables: Any, x: Array) -> models.ModelOutput:
        """The eval-mode network on NHWC images in [0, 1]: logits and training-time estimates.

        Pure in (variables, x), like ``flax.linen.Module.apply``.
        """
        return self.model.apply(variables, x)

    def logits(self, x: Array) -> Array:
        """Logits of NHWC images in [0, 1], or of one HWC image; a pure JAX function of ``x``.

        Works on numpy and jax arrays and on tracers, so ``jax.jit``, ``jax.grad`` and
        ``jax.vmap`` (over single images) apply to it.
        """
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.float32)
        single = x.ndim == len(self.input_shape)
        logits = self.apply(self.variables, x[None] if single else x).logits
        return logits[0] if single else logits

    @functools.cached_property
    def sound_bounds(self) -> certify.SoundBounds:
        """Guaranteed upper Lipschitz bounds of the network and of its body (host, float64)."""
        return certify.sound_bounds(self.model, self.variables, self.input_shape)

    def lipschitz_upper_bound(self) -> float:
        """A sound upper bound on the L2 Lipschitz constant of x -> logits."""
        return self.sound_bounds.lipschitz

    def certified_radius(self, x: np.ndarray, y: np.ndarray,
                         certificate: str | None = None) -> np.ndarray:
        """Per-example sound certified L2 radius (0 where misclassified), float64 on the host."""
        logits = certify.logits_float64(self.model, self.variables, np.asarray(x))
        return certify.certified_radii(logits, np.asarray(y), self.sound_bounds,
                                       certificate or self.config.certificate)


def restore(workdir: str, epoch: int | None = None) -> RestoredModel:
    """The newest good checkpoint of the run in ``workdir`` (or that of ``epoch``) as a model."""
    saved = checkpoints.restore_variables(workdir, epoch)
    config = run_files.config_from_dict(saved.config)
    num_classes = int(saved.run_info['num_classes'])
    return RestoredModel(config, models.create_model(config, num_classes),
                         {'params': saved.params, **saved.model_state},
                         tuple(saved.run_info['input_shape']), num_classes, saved.epoch)
