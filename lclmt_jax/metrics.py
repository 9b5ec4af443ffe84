"""What a training run measures each epoch, as clu metric collections with regular names.

Per-example values come from one place, :func:`margin_outputs` (the margin condition the run's
method trains for); :data:`TrainMetrics` and :data:`EvalMetrics` reduce them over an epoch on
the device, and :func:`epoch_scalars` names them ``train_<metric>`` and ``test_<metric>``: a new
metric is one line in a collection. What steers a run rather than describes it (the first
non-finite step) is ``lclmt_jax.divergence``'s; the sound bound's figures, computed on the host
in float64, ``lclmt_jax.sound_metrics``'. Names written by older versions are mapped to today's when
a run's records are read (``run_files.read_metrics``), so reports and plots read older runs.
"""

from __future__ import annotations

from typing import ClassVar

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

from lclmt_jax import losses, margins, models

Array = jax.Array


@flax.struct.dataclass
class MedianMargin(clu_metrics.Metric):
    """The median margin of an epoch's examples, from a histogram merged step by step.

    Bins are uniform in asinh(margin) over [-10, 10] (|margin| up to 1.1e4): 0.005 wide, so the
    median is exact to ~0.5% of its size (0.005 near 0), without keeping every margin.
    """

    counts: Array

    BINS: ClassVar[int] = 4000
    LIMIT: ClassVar[float] = 10.0

    @classmethod
    def empty(cls) -> MedianMargin:
        return cls(counts=jnp.zeros((cls.BINS,), jnp.int32))

    @classmethod
    def from_model_output(cls, *, margin: Array, **_) -> MedianMargin:
        position = (jnp.arcsinh(margin) + cls.LIMIT) / (2 * cls.LIMIT) * cls.BINS
        index = jnp.clip(position.astype(jnp.int32), 0, cls.BINS - 1)
        return cls(counts=jnp.bincount(index, length=cls.BINS).astype(jnp.int32))

    def merge(self, other: MedianMargin) -> MedianMargin:
        return type(self)(counts=self.counts + other.counts)

    def compute(self) -> np.ndarray:
        """The median, on the host in numpy: a few thousand numbers, once per epoch."""
        counts = np.asarray(jax.device_get(self.counts), np.int64)
        cumulative = np.cumsum(counts)
        half = cumulative[-1] / 2
        index = int(np.searchsorted(cumulative, half))
        before = cumulative[index - 1] if index > 0 else 0
        fraction = (half - before) / max(int(counts[index]), 1)
        position = (index + fraction) / self.BINS * 2 * self.LIMIT - self.LIMIT
        return np.sinh(position)


# Per-epoch training metrics: means over the epoch's examples (the loss: over its steps), the
# margin's mean over the correctly classified examples and its median (the definitions of
# "the mean margin meets the required one" that docs/REPRODUCTION.md compares).
TRAIN_METRICS = dict(
    loss=clu_metrics.Average.from_output('loss'),
    accuracy=clu_metrics.Average.from_output('correct'),
    accuracy_inflated=clu_metrics.Average.from_output('inflated_correct'),
    margin=clu_metrics.Average.from_output('margin'),
    margin_correct=clu_metrics.Average.from_fun(
        lambda margin, correct, **_: {'values': margin, 'mask': correct}),
    margin_median=MedianMargin,
    required_margin=clu_metrics.Average.from_output('required_margin'))
TrainMetrics = clu_metrics.Collection.create(**TRAIN_METRICS)

# Test-set metrics over the valid (unpadded) examples. ``lipschitz`` is the training estimate of
# L in eval mode (the same for every example), the L the test margins are held against.
EVAL_METRICS = dict(
    accuracy=clu_metrics.Average.from_output('correct'),
    margin=clu_metrics.Average.from_output('margin'),
    required_margin=clu_metrics.Average.from_output('required_margin'),
    bound_met=clu_metrics.Average.from_output('bound_met'),
    lipschitz=clu_metrics.Average.from_output('lipschitz'))
EvalMetrics = clu_metrics.Collection.create(**EVAL_METRICS)


def margin_outputs(method: losses.Method, output: models.ModelOutput, labels: Array,
                   epsilon: Array | float) -> dict[str, Array]:
    """Per-example margin, required margin, correctness and whether the margin meets it, for the
    condition ``method`` trains for (``margins.binding_margin``), at ``epsilon``."""
    gaps = losses.required_gaps(method, output, labels, epsilon)
    margin, required = margins.binding_margin(output.logits, labels, gaps)
    correct = margins.margin(output.logits, labels) > 0
    return {'margin': margin, 'required_margin': required, 'correct': correct,
            'bound_met': correct & (margin >= required),
            'lipschitz': jnp.broadcast_to(output.lipschitz, labels.shape)}


def epoch_scalars(train: clu_metrics.Collection, test: clu_metrics.Collection) -> dict[str, float]:
    """An epoch's metrics as ``train_<name>`` and ``test_<name>`` floats (host): those of
    ``TrainMetrics`` and ``EvalMetrics``, whatever else the collections carry (the train step's
    control signal, ``lclmt_jax.divergence``)."""
    scalars = {}
    for prefix, collection, names in (('train', train, TRAIN_METRICS),
                                      ('test', test, EVAL_METRICS)):
        scalars.update({f'{prefix}_{name}': float(value)
                        for name, value in collection.compute().items() if name in names})
    return scalars
