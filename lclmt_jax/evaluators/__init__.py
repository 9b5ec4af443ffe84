"""Evaluations of a trained run, by name (``config.evaluators``): each a one-file plugin.

An evaluator is a function ``(Context, settings) -> Result`` registered with
``@evaluator('<name>', **settings)`` in a module of this package, each setting a
``lclmt_jax.fields.Field`` (default and allowed values). Its settings are its own config section,
``config.evals.<name>`` (``config_schema.default_config`` collects every evaluator's, so
``--config.evals.<name>.<field>=...`` works on the command line and bad values are refused
before any work).
``--mode=evaluate``, ``--mode=compare`` and sweeps run the configured evaluators in order and
never need to know what they compute: every result is named scalars (``evaluation.json``, the
comparison tables), accuracy-vs-radius curves (``curves.csv`` and the figures), per-example
columns (``per_example.csv``), optional figures of its own, and the scalars that belong in the
printed table with their labels (``Result.table``): a new evaluator's headline figure reaches
the console from its own file.

The :class:`Context` shares what several evaluators need, computed once: the restored model,
the test points, float64 logits, the float32 rounding allowance and the sound certified radii
(of the float32 network as it runs, where the model's rounding is analysed). An evaluator that
attacks the certified points reports ``scalars['broken_certificates']``: a certified point the
attack broke inside its radius, which means a bound is wrong and makes the evaluation fail.

Reading a config collects the settings, so this package and its plugins import nothing heavy at
module level: the numerical modules (JAX) are imported inside the functions that use them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import ml_collections
import numpy as np

from lclmt_jax.fields import Field
from lclmt_jax.registry import Registry


class TrainedRun(Protocol):
    """What an evaluator reads of a trained run (``lclmt_jax.restored.RestoredModel``): named
    here, so that this package, which the config schema reads, depends on no restore code."""

    config: ml_collections.ConfigDict
    model: Any
    variables: dict
    sound_bounds: Any

    def logits(self, x: Any) -> Any: ...


class Curve(NamedTuple):
    """Accuracy as a function of the L2 radius: a sound lower bound or an empirical upper one."""

    accuracy_at: Callable[[np.ndarray], np.ndarray]
    bound: str  # 'lower' (a certificate) or 'upper' (an attack)
    label: str


class Column(NamedTuple):
    """A figure of a :class:`Result` that belongs in the printed table (``lclmt_jax.outcomes``).

    ``key`` names a scalar; with ``{eps}`` in it (``'certified_pairwise@{eps}'``) the column has
    one value per radius of ``config.evaluation.epsilons`` (formatted ``:g``), headed ``label``;
    without, it is one figure of the evaluation, printed as ``label value``.
    """

    label: str
    key: str


class Result(NamedTuple):
    """What one evaluator found.

    Attributes:
      scalars: name -> number, e.g. ``certified_pairwise@0.3``.
      curves: name -> :class:`Curve`, drawn on the evaluation's common radius grid.
      per_example: column name -> one value per test point.
      max_radius: the largest radius this evaluator wants drawn (0: no preference).
      figures: file name -> function drawing that figure into the given path.
      table: the scalars that belong in the printed table, in order (:class:`Column`).
    """

    scalars: dict[str, float]
    curves: dict[str, Curve] = {}
    per_example: dict[str, np.ndarray] = {}
    max_radius: float = 0.0
    figures: dict[str, Callable[[str], None]] = {}
    table: tuple[Column, ...] = ()


class Context:
    """The restored run and its test points, with the values several evaluators share."""

    def __init__(self, restored: TrainedRun, images: np.ndarray, labels: np.ndarray):
        self.restored = restored
        self.config = restored.config
        self.images = images
        self.labels = labels
        self._radii: dict[tuple, np.ndarray] = {}

    @functools.cached_property
    def logits64(self) -> np.ndarray:
        """Eval-mode logits in float64, as the certificates use them."""
        from lclmt_jax import certify, progress

        return certify.logits_float64(self.restored.model, self.restored.variables, self.images,
                                      progress=progress.Progress('float64 logits', 'points'))

    @functools.cached_property
    def correct(self) -> np.ndarray:
        """Correctly classified, with finite logits (a NaN row's argmax means nothing)."""
        from lclmt_jax import certify

        finite = certify.finite_rows(self.logits64) & certify.finite_rows(self.images)
        return (np.argmax(self.logits64, axis=1) == self.labels) & finite

    @functools.cached_property
    def rounding(self):
        """The float32 rounding allowance of the test points (``certify.rounding_allowance``), or
        None, said in one line, for a model without a rounding analysis."""
        from lclmt_jax import certify, console, progress, rounding

        try:
            return certify.rounding_allowance(
                self.restored.model, self.restored.variables, self.images,
                progress=progress.Progress('float32 rounding allowance', 'points'))
        except rounding.NotAnalysable as error:
            console.say(f'warning: {console.one_line(error)}; certificates are for exact '
                        'arithmetic only', stderr=True)
            return None

    @property
    def arithmetic(self) -> str:
        """'float32' (radii of the network as it runs) where the model's rounding is analysed,
        else 'exact'."""
        return 'exact' if self.rounding is None else 'float32'

    def radii(self, certificate: str, arithmetic: str | None = None,
              labels: np.ndarray | None = None) -> np.ndarray:
        """Sound certified radius per test point with ``certificate`` (``certify``), cached: in
        ``arithmetic`` (default ``self.arithmetic``), for ``labels`` (default the true ones;
        the predictions give the certified-only radii)."""
        from lclmt_jax import certify

        arithmetic = arithmetic or self.arithmetic
        key = (certificate, arithmetic, None if labels is None else labels.tobytes())
        if key not in self._radii:
            allowance = None if arithmetic == 'exact' else self.rounding
            if arithmetic != 'exact' and allowance is None:
                raise ValueError('no float32 rounding analysis for this model')
            self._radii[key] = certify.certified_radii(
                self.logits64, self.labels if labels is None else labels,
                self.restored.sound_bounds, certificate, allowance)
            self._radii[key] = np.where(certify.finite_rows(self.images), self._radii[key], 0.0)
        return self._radii[key]


SAMPLE_SEED = 0  # one sample for every run and evaluation: runs compare on the same points


def stratified_sample(labels: np.ndarray, count: int, seed: int = SAMPLE_SEED) -> np.ndarray:
    """``count`` indices of ``labels`` (ascending), each class taking its share of them (largest
    remainders first, ties to the smaller class index), drawn at random with ``seed``.

    For an evaluator that covers only some test points (the attack): a test split sorted by
    class (the embedded digits are) would otherwise give the first points, a few classes only,
    whose figures cannot stand beside the certificates' over every class.
    """
    if count >= len(labels):
        return np.arange(len(labels))
    classes, sizes = np.unique(labels, return_counts=True)
    quotas = sizes * count / len(labels)
    takes = np.floor(quotas).astype(int)
    order = np.lexsort((classes, -(quotas - takes)))  # largest remainder first
    takes[order[:count - takes.sum()]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == label))[:take]
              for label, take in zip(classes, takes, strict=True)]
    return np.sort(np.concatenate(chosen))


class Evaluator(NamedTuple):
    """A registered evaluation: the function and the fields of its ``config.evals`` section."""

    evaluate: Callable[[Context, ml_collections.ConfigDict], Result]
    settings: dict[str, Field]


EVALUATORS: Registry[Evaluator] = Registry('evaluator', package=__name__)


def evaluator(name: str, **settings: Field) -> Callable:
    """Registers the decorated ``(Context, settings) -> Result`` as evaluator ``name`` with the
    fields (``lclmt_jax.fields.Field``: default and allowed values) of its
    ``config.evals.<name>`` section."""
    def add(function: Callable) -> Callable:
        EVALUATORS.register(name, Evaluator(function, settings))
        return function

    return add


def settings_schema() -> dict[str, dict[str, Field]]:
    """``config.evals`` in the schema: every evaluator's section; how a run is evaluated never
    binds its training (``Field.binds_training``)."""
    return {name: {field: setting._replace(binds_training=False)
                   for field, setting in EVALUATORS.get(name).settings.items()}
            for name in EVALUATORS}


def run_evaluator(name: str, context: Context) -> Result:
    """Evaluator ``name`` on ``context`` with the settings of ``context.config.evals.<name>``."""
    return EVALUATORS.get(name).evaluate(context, context.config.evals[name])
