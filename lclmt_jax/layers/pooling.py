"""Global average pooling: its exact Lipschitz constant and its float32 rounding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lclmt_jax import bounds, rounding

Array = jax.Array


def average_pool_bound(height: int, width: int, sound: bool = False) -> float:
    """Lipschitz constant 1/sqrt(H·W) of the mean over an H×W grid (per channel).

    Per channel, |mean_i x_i|^2 <= (1/(HW))·sum_i x_i^2 by Cauchy-Schwarz; summed over channels
    |pool(x)| <= |x|/sqrt(HW), with equality for spatially constant x: the bound is exact. The
    sound value is rounded up by SOUND_SLACK.
    """
    bound = 1.0 / float(np.sqrt(height * width))
    return bound * (1.0 + bounds.SOUND_SLACK) if sound else bound


class AveragePool(rounding.Primitive):
    """The rounding step of global average pooling over (H, W) of NHWC inputs; Lipschitz
    1/sqrt(H·W) (``average_pool_bound``)."""

    def __init__(self, height: int, width: int):
        self.positions = height * width
        self.lipschitz = average_pool_bound(height, width, sound=True)

    def forward(self, a: np.ndarray) -> np.ndarray:
        return a.mean(axis=(1, 2))

    def rounding(self, a: np.ndarray, spread: rounding.Affine,
                 arithmetic: rounding.Arithmetic) -> rounding.Bound:
        g = rounding.gamma(self.positions + 1, arithmetic)
        sums = rounding.norms(np.abs(a).sum(axis=(1, 2))) + np.sqrt(self.positions) * spread
        underflow = 6 * arithmetic.tiny * np.sqrt(a.shape[-1])
        return rounding.Bound((g / self.positions) * sums + underflow, (1 + g) * sums + underflow)


def global_average_pool(x: Array, *, sound: bool = False) -> tuple[Array, float]:
    """Mean over the spatial axes of NHWC ``x`` and its Lipschitz constant
    (``average_pool_bound``); records its rounding step (``AveragePool``)."""
    rounding.record(lambda: AveragePool(x.shape[1], x.shape[2]))
    return jnp.mean(x, axis=(1, 2)), average_pool_bound(x.shape[1], x.shape[2], sound)
