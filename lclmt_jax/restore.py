"""The public handle on a trained run: ``lclmt_jax.restore(workdir)``.

>>> model = lclmt_jax.restore('runs/quickstart')
>>> model.logits(x)                  # x: float NHWC images in [0, 1]
>>> model.lipschitz_upper_bound()    # sound L of x -> logits
>>> model.certified_radius(x, y)     # sound per-example L2 radius
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lclmt_jax import certify, checkpoints, models, train, writers


@dataclasses.dataclass
class RestoredModel:
    """A trained network with its parameters, config and sound certification methods."""

    config: ml_collections.ConfigDict
    model: nn.Module
    params: Any
    model_state: Any
    input_shape: tuple[int, ...]
    num_classes: int
    epoch: int

    @property
    def variables(self) -> dict:
        return {'params': self.params, **self.model_state}

    @functools.cached_property
    def _apply(self):
        return jax.jit(lambda variables, x: self.model.apply(variables, x).logits)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits (float32, eval mode) of float NHWC images in [0, 1]."""
        return np.asarray(self._apply(self.variables, jnp.asarray(x, jnp.float32)))

    @functools.cached_property
    def sound_bounds(self) -> certify.SoundBounds:
        """Guaranteed upper Lipschitz bounds of the network and of its body."""
        return certify.sound_bounds(self.model, self.variables, self.input_shape)

    def lipschitz_upper_bound(self) -> float:
        """A sound upper bound on the L2 Lipschitz constant of x -> logits."""
        return self.sound_bounds.lipschitz

    def certified_radius(self, x: np.ndarray, y: np.ndarray,
                         certificate: str | None = None) -> np.ndarray:
        """Per-example sound certified L2 radius (0 where misclassified)."""
        logits = certify.logits_float64(self.model, self.variables, np.asarray(x))
        return certify.certified_radii(logits, np.asarray(y), self.sound_bounds,
                                       certificate or self.config.certificate)


def restore(workdir: str) -> RestoredModel:
    """Loads the newest checkpoint of the run in ``workdir`` with the config it was trained with."""
    config = writers.load_config(workdir)
    with open(os.path.join(workdir, writers.RUN_INFO_FILE)) as f:
        info = json.load(f)
    input_shape, num_classes = tuple(info['input_shape']), int(info['num_classes'])
    model = models.create_model(config, num_classes)
    tx = train.create_optimizer(config, steps_per_epoch=1)
    like = train.create_train_state(model, tx, jax.random.key(config.seed), input_shape)
    manager = checkpoints.checkpoint_manager(workdir)
    state, epoch = checkpoints.restore_latest(manager, like)
    manager.close()
    if epoch == 0:
        raise FileNotFoundError(f'no checkpoint in {workdir}; train it first')
    return RestoredModel(config, model, state.params, state.model_state, input_shape,
                         num_classes, epoch)
