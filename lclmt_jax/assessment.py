"""``--mode=evaluate``: run the configured evaluators on one trained run (``--mode=compare``,
which overlays several: ``lclmt_jax.comparison.compare_runs``).

An evaluation writes into ``workdir/evaluation/``: ``evaluation.json`` (every evaluator's
scalars), ``curves.csv`` (every accuracy-vs-radius curve on one radius grid), ``per_example.csv``
and the figures (``certified_vs_attack.png``: all curves, certificates as lower bounds under
attacks as upper bounds). A non-zero ``broken_certificates`` from any evaluator raises
``BrokenCertificateError``, which means a bound is wrong.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lclmt_jax import (
    config_schema,
    data,
    fields,
    losses,
    paths,
    plots,
    validation,
    writers,
)
from lclmt_jax.evaluators import EVALUATORS, Context, Result, run_evaluator
from lclmt_jax.restored import restore

EVALUATION_DIR = 'evaluation'
RADIUS_GRID_POINTS = 201


class BrokenCertificateError(RuntimeError):
    """An attack beat a certificate: some Lipschitz bound is not an upper bound."""


def run_label(config) -> str:
    """Short legend label of a run, e.g. ``LC-LMT(1.0)``, ``LC-LMT-pw(1.0)`` or ``plain``."""
    name = losses.METHODS.get(config.method).label or config.method
    epsilon = str(config.epsilon)
    if len(epsilon) > 6:  # 36/255 * 1.5 as 0.2118, not 0.21176470588235294
        epsilon = f'{config.epsilon:.4g}'
    return name if config.method == 'plain' else f'{name}({epsilon})'


def _write_csv(path: str, columns: dict[str, np.ndarray]) -> None:
    with open(path, 'w', newline='') as f:
        out = csv.writer(f)
        out.writerow(columns)
        out.writerows(zip(*[np.asarray(c).tolist() for c in columns.values()], strict=True))


def with_evaluator_settings(config: ml_collections.ConfigDict,
                            settings: Sequence[str]) -> ml_collections.ConfigDict:
    """A copy of ``config`` with each ``NAME.FIELD=VALUE`` of ``settings`` set in
    ``config.evals`` (``cw_l2.steps=200``): evaluator settings for one evaluation of a finished
    run, whose saved config.json stays as trained. VALUE is a Python literal or a bare string;
    an unknown evaluator or field, or a value of the wrong type, is one ValueError line."""
    overrides = {}
    for item in settings:
        key, separator, text = item.partition('=')
        if not separator or '.' not in key:
            raise ValueError(f'--eval_setting {item!r} is not NAME.FIELD=VALUE '
                             '(e.g. cw_l2.steps=200)')
        try:
            overrides[f'evals.{key}'] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[f'evals.{key}'] = text
    return config_schema.apply_overrides(config, overrides, '--eval_setting')


def evaluation_config(config: ml_collections.ConfigDict, names: Sequence[str],
                      settings: Sequence[str] = (),
                      max_examples: int | None = None) -> ml_collections.ConfigDict:
    """``config`` with the ``NAME.FIELD=VALUE`` evaluator ``settings`` of one evaluation by the
    evaluators ``names`` on ``max_examples`` test points (None: all), after refusing, in one
    line and before any work, an unknown evaluator, a setting its field does not allow
    (``--attack_examples=0``) or a count that is not a positive integer."""
    if max_examples is not None:
        fields.Integer().check(max_examples, '--max_examples')
    for name in names:
        EVALUATORS.get(name)
    config = with_evaluator_settings(config, settings) if settings else config
    validation.check_fields(config, under='evals')
    return config


def evaluate_run(workdir: str, max_examples: int | None = None,
                 evaluators: Sequence[str] | None = None, epoch: int | None = None,
                 evaluator_settings: Sequence[str] = ()) -> dict:
    """Runs the evaluators (default: the run's ``config.evaluators``) on its test set.

    Uses the newest checkpoint that restores (or that of ``epoch``); writes the files and
    figures and returns the summary (``evaluation.json``). ``max_examples``: only the first test
    points, for every evaluator; ``evaluator_settings``: ``NAME.FIELD=VALUE`` overrides of
    ``config.evals`` for this evaluation only (``with_evaluator_settings``; how many points the
    attack covers is ``cw_l2.max_examples``).
    """
    started = time.perf_counter()
    paths.confined(workdir, EVALUATION_DIR)  # where the files go, before any work
    restored = restore(workdir, epoch)
    config = restored.config
    names = tuple(evaluators or config.evaluators)
    evaluated = evaluation_config(config, names, evaluator_settings, max_examples)
    if jax.process_index() == 0:
        print(f'evaluating the checkpoint of epoch {restored.epoch} in {workdir}: '
              f'{", ".join(names)}', flush=True)
    dataset = data.load_dataset(config.data)
    count = len(dataset.test_labels) if max_examples is None else max_examples
    images = np.asarray(data.to_float(jnp.asarray(dataset.test_images[:count])))
    images = restored.check_images(images, f'{config.data.source} test images')
    labels = restored.check_labels(dataset.test_labels[:count].astype(np.int32), len(images),
                                   f'{config.data.source} test labels')
    context = Context(restored, images, labels)
    context.config = evaluated
    results = {name: run_evaluator(name, context) for name in names}
    summary = {'workdir': os.path.abspath(workdir), 'epoch': restored.epoch,
               'label': run_label(config), 'evaluators': list(names),
               'certificate': config.certificate, 'num_examples': int(len(labels))}
    for result in results.values():
        summary.update(result.scalars)
    summary['table'] = [list(column) for result in results.values() for column in result.table]
    summary['evaluation_seconds'] = time.perf_counter() - started
    method = losses.METHODS.get(config.method)
    subject = plots.figure_subject([dataset.name], [config.model], method.label,
                                   config.epsilon if losses.trains_for_margin(method) else None)
    save_evaluation(workdir, summary, results, config.evaluation.epsilons, subject)
    broken = sum(int(result.scalars.get('broken_certificates', 0)) for result in results.values())
    if broken:
        raise BrokenCertificateError(
            f'{broken} certified points were broken by the attack inside their certified radius '
            f'in {workdir}: a Lipschitz bound is not an upper bound')
    return summary


def radius_grid(results: dict[str, Result], epsilons: Sequence[float]) -> np.ndarray:
    """The common radii of all curves: 0 to the largest radius any evaluator or epsilon needs."""
    top = max(2.0, max(epsilons), *(result.max_radius for result in results.values()))
    return np.linspace(0.0, top, RADIUS_GRID_POINTS)


def save_evaluation(workdir: str, summary: dict, results: dict[str, Result],
                    epsilons: Sequence[float], subject: str = '') -> None:
    """Writes evaluation.json, curves.csv, per_example.csv and the figures (process 0);
    ``subject`` (``plots.figure_subject``) says under the figures' titles what was evaluated."""
    if jax.process_index() != 0:
        return
    out = paths.confined(workdir, EVALUATION_DIR)
    os.makedirs(out, exist_ok=True)
    writers.write_json(os.path.join(out, 'evaluation.json'), summary)  # standard JSON: no NaN
    per_example = {name: values for result in results.values()
                   for name, values in result.per_example.items()}
    if per_example:
        _write_csv(os.path.join(out, 'per_example.csv'), per_example)
    curves = {name: curve for result in results.values() for name, curve in result.curves.items()}
    if curves:
        grid = radius_grid(results, epsilons)
        values = {name: curve.accuracy_at(grid) for name, curve in curves.items()}
        _write_csv(os.path.join(out, 'curves.csv'), {'radius': grid, **values})
        plots.plot_accuracy_curves(
            grid, {curve.label: (values[name], curve.bound) for name, curve in curves.items()},
            subject, os.path.join(out, 'certified_vs_attack.png'))
    for result in results.values():
        for name, draw in result.figures.items():
            draw(os.path.join(out, name))
    logging.info('evaluation of %s: %s', workdir, json.dumps(summary))
