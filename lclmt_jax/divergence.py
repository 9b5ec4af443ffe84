"""What a train step reports: the epoch's metrics and a control signal, the first step whose loss
was not finite.

The signal is reduced on the device beside the metrics (one merge per step, in the epoch's
``lax.scan``), so the host learns at the epoch's end whether and where the loss diverged without
a round trip per step. It steers the run (``lclmt_jax.recovery``'s non-finite policy) and
describes nothing: ``metrics.epoch_scalars`` never writes it.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
from clu import metrics as clu_metrics

from lclmt_jax import metrics

Array = jax.Array


@flax.struct.dataclass
class FirstNonFiniteStep(clu_metrics.Metric):
    """The first step (0-based, in merge order) whose loss was not finite; -1 if none was."""

    steps: Array
    first: Array

    @classmethod
    def empty(cls) -> FirstNonFiniteStep:
        return cls(steps=jnp.zeros((), jnp.int32), first=-jnp.ones((), jnp.int32))

    @classmethod
    def from_model_output(cls, *, loss: Array, **_) -> FirstNonFiniteStep:
        return cls(steps=jnp.ones((), jnp.int32),
                   first=jnp.where(jnp.isfinite(loss), -1, 0).astype(jnp.int32))

    def merge(self, other: FirstNonFiniteStep) -> FirstNonFiniteStep:
        later = jnp.where(other.first >= 0, self.steps + other.first, -1)
        return type(self)(steps=self.steps + other.steps,
                          first=jnp.where(self.first >= 0, self.first, later))

    def compute(self) -> Array:
        return self.first


# A train step's report: ``metrics.TrainMetrics`` and the signal.
TrainReport = clu_metrics.Collection.create(**metrics.TRAIN_METRICS,
                                            first_non_finite_step=FirstNonFiniteStep)
