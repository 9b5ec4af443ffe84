"""The public handle on a trained run: ``lclmt_jax.restore(workdir)``.

>>> model = lclmt_jax.restore('runs/quickstart')
>>> model.logits(x)                      # a pure JAX function of x: jit, grad, vmap all work
>>> jax.grad(lambda x: model.logits(x)[0].sum())(x)
>>> model.apply(model.variables, x)      # the full ModelOutput (logits and bound estimates)
>>> model.lipschitz_upper_bound()        # sound L of x -> logits (host, float64)
>>> model.certified_radius(x, y)         # sound L2 radius of the float32 network, per example

Everything comes from the checkpoint itself (its config and run info travel with it), so
restoring needs neither the trainer nor the optimizer.

Inputs are float images in [0, 1] (the scale training used and ε is measured in). Integer
arrays (uint8 pixels in 0..255 would be read as [0, 255] floats and certify radii 255 times too
large) are refused by ``logits`` and ``certified_radius``; ``certified_radius`` also refuses
finite pixels outside [0, 1], labels that are not integers in [0, classes) and shapes that do
not fit, each with one ValueError. NaN or infinite pixels are accepted and certified radius 0,
as is any point whose logits are not finite (``lclmt_jax.certify``): a certificate only where
it means something.
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
        ``jax.vmap`` (over single images) apply to it. Only the dtype is checked (a tracer has
        no values to check): integer pixels raise ValueError.
        """
        x = jnp.asarray(x)
        _check_float(x.dtype, 'logits')
        single = x.ndim == len(self.input_shape)
        batch = x[None] if single else x
        # precision=HIGHEST on every dot and conv: no TF32/bfloat16 passes, which the float32
        # certificate's rounding bound (lclmt_jax.rounding, A2) assumes.
        with jax.default_matmul_precision('highest'):
            if batch.shape[0] == 0:  # no images, no logits: the network's, of one zero image, cut
                return self.apply(self.variables, jnp.zeros((1, *batch.shape[1:]),
                                                            batch.dtype)).logits[:0]
            logits = self.apply(self.variables, batch).logits
        return logits[0] if single else logits

    @functools.cached_property
    def sound_bounds(self) -> certify.SoundBounds:
        """Guaranteed upper Lipschitz bounds of the network and of its body (host, float64)."""
        return certify.sound_bounds(self.model, self.variables, self.input_shape)

    def lipschitz_upper_bound(self) -> float:
        """A sound upper bound on the L2 Lipschitz constant of x -> logits."""
        return self.sound_bounds.lipschitz

    def certified_radius(self, x: np.ndarray, y: np.ndarray, certificate: str | None = None,
                         arithmetic: str = 'float32') -> np.ndarray:
        """Per-example sound certified L2 radius (0 where misclassified), float64 on the host.

        ``x``: float NHWC images of the run's input shape, pixels in [0, 1]; ``y``: one integer
        label in [0, classes) per image. Anything else raises ValueError before any work. An
        image with a NaN or infinite pixel, or whose logits are not finite, gets radius 0 (not
        certified): no bound speaks about it.

        ``arithmetic='float32'`` (default): the radius within which ``logits`` -- the float32
        network as it runs -- cannot change its prediction, rounding included
        (``lclmt_jax.rounding``; ``rounding.NotAnalysable`` for a model without a rounding
        analysis). ``'exact'``: that of the network in exact arithmetic, never smaller.
        """
        if arithmetic not in ('float32', 'exact'):
            raise ValueError(f"arithmetic must be 'float32' or 'exact', got {arithmetic!r}")
        x = self.check_images(x, 'certified_radius')
        y = self.check_labels(y, len(x), 'certified_radius')
        if not len(x):
            return np.zeros(0)
        logits = certify.logits_float64(self.model, self.variables, x)
        allowance = None if arithmetic == 'exact' else certify.rounding_allowance(
            self.model, self.variables, x)
        radii = certify.certified_radii(logits, y, self.sound_bounds,
                                        certificate or self.config.certificate, allowance)
        return np.where(certify.finite_rows(x), radii, 0.0)

    def check_images(self, x: Any, what: str = 'images') -> np.ndarray:
        """``x`` as a float NHWC array of this run's input shape with every finite pixel in
        [0, 1]; ValueError otherwise. NaN and infinities pass (certified radius 0)."""
        x = np.asarray(x)
        _check_float(x.dtype, what)
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f'{what}: images must be (N, {", ".join(map(str, self.input_shape))})'
                             f' for this run, got shape {x.shape}')
        finite = x[np.isfinite(x)]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            raise ValueError(f'{what}: pixels must lie in [0, 1], got values in '
                             f'[{finite.min():.4g}, {finite.max():.4g}]')
        return x

    def check_labels(self, y: Any, count: int, what: str = 'labels') -> np.ndarray:
        """``y`` as ``count`` integer labels in [0, num_classes); ValueError otherwise."""
        y = np.asarray(y)
        if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f'{what}: labels must be integers, got dtype {y.dtype}')
        if y.shape != (count,):
            raise ValueError(f'{what}: expected {count} labels (one per image), got shape '
                             f'{y.shape}')
        if count and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(f'{what}: labels must lie in [0, {self.num_classes}), got values in '
                             f'[{y.min()}, {y.max()}]')
        return y


def _check_float(dtype: Any, what: str) -> None:
    """Integer or boolean pixels are refused: the model reads [0, 1] floats, and uint8 pixels
    taken as floats would be 255 times too large."""
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f'{what}: images must be floats in [0, 1], got dtype {dtype} (uint8 '
                         'pixels: divide by 255, or use lclmt_jax.data.to_float)')


def restore(workdir: str, epoch: int | None = None) -> RestoredModel:
    """The newest good checkpoint of the run in ``workdir`` (or that of ``epoch``) as a model.

    Creates nothing. Damaged newer checkpoints are moved aside on the way, or skipped with a
    warning where the workdir is read-only; ``checkpoints.NoCheckpointError`` when none reads.
    """
    saved = checkpoints.restore_variables(workdir, epoch)
    config = run_files.config_from_dict(saved.config)
    num_classes = int(saved.run_info['num_classes'])
    return RestoredModel(config, models.create_model(config, num_classes),
                         {'params': saved.params, **saved.model_state},
                         tuple(saved.run_info['input_shape']), num_classes, saved.epoch)
