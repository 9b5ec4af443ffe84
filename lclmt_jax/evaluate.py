"""``--mode=evaluate``: certify, attack and draw one trained run; ``--mode=compare``: overlay runs.

An evaluation writes into ``workdir/evaluation/``:
``evaluation.json`` (headline numbers), ``curves.csv`` (certified and CW accuracy per radius),
``per_example.csv`` (radii and attack norms) and the figures. Its soundness self-check counts
certified points for which the attack found an adversarial example inside the certified radius;
a non-zero count raises ``BrokenCertificateError``, which means a bound is wrong.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lclmt_jax import attacks, certify, data, plots, writers
from lclmt_jax.restore import RestoredModel, restore

EVALUATION_DIR = 'evaluation'
RADIUS_GRID_POINTS = 201
METHOD_NAMES = {'plain': 'plain', 'lmt': 'LMT', 'lc_lmt': 'LC-LMT'}


class BrokenCertificateError(RuntimeError):
    """An attack beat a certificate: some Lipschitz bound is not an upper bound."""


def run_label(config) -> str:
    """Short legend label of a run, e.g. ``LC-LMT(1.0)`` or ``plain``."""
    name = METHOD_NAMES.get(config.method, config.method)
    return name if config.method == 'plain' else f'{name}({config.epsilon})'


def attack_config(config) -> attacks.CWConfig:
    """The CW-L2 settings of ``config.attack``."""
    return attacks.CWConfig(**dict(config.attack))


def _write_csv(path: str, columns: dict[str, np.ndarray]) -> None:
    with open(path, 'w', newline='') as f:
        out = csv.writer(f)
        out.writerow(columns)
        out.writerows(zip(*[np.asarray(c).tolist() for c in columns.values()], strict=True))


def evaluate_run(workdir: str, max_examples: int | None = None) -> dict:
    """Certifies and attacks the test set of the run in ``workdir``; writes files and figures."""
    started = time.perf_counter()
    restored = restore(workdir)
    config = restored.config
    dataset = data.load_dataset(config.data)
    count = len(dataset.test_labels) if max_examples is None else max_examples
    images = np.asarray(data.to_float(jnp.asarray(dataset.test_images[:count])))
    labels = dataset.test_labels[:count].astype(np.int32)
    results = certify_and_attack(restored, images, labels)
    results.update(workdir=os.path.abspath(workdir), epoch=restored.epoch, label=run_label(config),
                   evaluation_seconds=time.perf_counter() - started)
    save_evaluation(workdir, results)
    broken = results['broken_certificates']
    if broken:
        raise BrokenCertificateError(
            f'{broken} certified points were broken by the attack inside their certified radius '
            f'in {workdir}: a Lipschitz bound is not an upper bound')
    return results


def certify_and_attack(restored: RestoredModel, images: np.ndarray, labels: np.ndarray) -> dict:
    """Sound radii (both certificates), CW-L2 minimal norms, curves and the soundness self-check."""
    config = restored.config
    bounds = restored.sound_bounds
    logits = certify.logits_float64(restored.model, restored.variables, images)
    correct = np.argmax(logits, axis=1) == labels
    radii = {name: certify.certified_radii(logits, labels, bounds, name)
             for name in certify.CERTIFICATES}
    logits_fn = lambda x: restored.model.apply(restored.variables, x).logits
    norms = attacks.cw_l2_min_norms(logits_fn, images, labels, attack_config(config))
    finite = norms[np.isfinite(norms)]
    top = max(2.0, 1.1 * float(finite.max()) if finite.size else 0.0,
              max(config.evaluation.epsilons))
    grid = np.linspace(0.0, top, RADIUS_GRID_POINTS)
    broken = {name: len(certify.broken_certificates(r, correct, norms))
              for name, r in radii.items()}
    return {
        'num_examples': int(len(labels)),
        'clean_accuracy': float(correct.mean()),
        'lipschitz_sound': bounds.lipschitz,
        'body_lipschitz_sound': bounds.body_lipschitz,
        'certificate': config.certificate,
        'certified_accuracy': {
            name: {f'{eps:g}': float(acc) for eps, acc in zip(
                config.evaluation.epsilons,
                certify.certified_accuracy(r, correct, config.evaluation.epsilons), strict=True)}
            for name, r in radii.items()},
        'attack': dict(config.attack),
        'attack_accuracy': {f'{eps:g}': float(acc) for eps, acc in zip(
            config.evaluation.epsilons,
            attacks.accuracy_under_attack(norms, config.evaluation.epsilons), strict=True)},
        'attack_success_rate': float(np.isfinite(norms[correct]).mean()) if correct.any() else 0.,
        'median_attack_norm': float(np.median(norms[correct])) if correct.any() else 0.,
        'broken_certificates': broken[config.certificate],
        'broken_certificates_both': sum(broken.values()),
        'curves': {
            'radius': grid,
            'attack_accuracy': attacks.accuracy_under_attack(norms, grid),
            **{f'certified_{name}': certify.certified_accuracy(r, correct, grid)
               for name, r in radii.items()}},
        'per_example': {'label': labels, 'correct': correct.astype(int),
                        **{f'radius_{n}': r for n, r in radii.items()}, 'attack_norm': norms},
    }


def save_evaluation(workdir: str, results: dict) -> None:
    """Writes evaluation.json, curves.csv, per_example.csv and the per-model figure (process 0)."""
    if jax.process_index() != 0:
        return
    out = os.path.join(workdir, EVALUATION_DIR)
    os.makedirs(out, exist_ok=True)
    curves, per_example = results['curves'], results['per_example']
    _write_csv(os.path.join(out, 'curves.csv'), curves)
    _write_csv(os.path.join(out, 'per_example.csv'), per_example)
    summary = {k: v for k, v in results.items() if k not in ('curves', 'per_example')}
    with open(os.path.join(out, 'evaluation.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    plots.plot_certified_under_attack(
        curves['radius'], curves['attack_accuracy'],
        {name: curves[f'certified_{name}'] for name in certify.CERTIFICATES},
        f'{results["label"]}: certified vs attacked accuracy',
        os.path.join(out, 'certified_vs_attack.png'))
    logging.info('evaluation of %s: %s', workdir, json.dumps(summary))


def read_curves(workdir: str) -> dict[str, np.ndarray]:
    """The curves.csv of an evaluated run as columns."""
    with open(os.path.join(workdir, EVALUATION_DIR, 'curves.csv')) as f:
        rows = list(csv.DictReader(f))
    return {key: np.array([float(r[key]) for r in rows]) for key in rows[0]}


def compare_runs(workdirs: Sequence[str], outdir: str) -> list[dict]:
    """Overlays runs into Fig. 1a, 1b and 2 and a results table (CSV + JSON) in ``outdir``."""
    os.makedirs(outdir, exist_ok=True)
    histories, attack_curves, table = {}, {}, []
    for workdir in workdirs:
        config = writers.load_config(workdir)
        label = run_label(config)
        if label in histories:  # e.g. a sweep over seeds: keep both curves apart
            label = f'{label} [{os.path.basename(os.path.normpath(workdir))}]'
        records = writers.read_metrics(workdir)
        histories[label] = records
        row = {'run': label, 'workdir': os.path.abspath(workdir), 'method': config.method,
               'epsilon': config.epsilon, 'epochs': len(records),
               'train_accuracy': records[-1]['train_accuracy'] if records else None,
               'test_accuracy': records[-1]['test_accuracy'] if records else None,
               'first_epoch_meeting_bound': plots.first_epoch_meeting_bound(records),
               'train_seconds': sum(r.get('epoch_seconds', 0.0) for r in records)}
        summary_path = os.path.join(workdir, EVALUATION_DIR, 'evaluation.json')
        if os.path.exists(summary_path):
            with open(summary_path) as f:
                summary = json.load(f)
            curves = read_curves(workdir)
            attack_curves[label] = (curves['radius'], curves['attack_accuracy'])
            row['clean_accuracy'] = summary['clean_accuracy']
            row['lipschitz_sound'] = summary['lipschitz_sound']
            for name, accuracies in summary['certified_accuracy'].items():
                row.update({f'certified_{name}@{eps}': acc for eps, acc in accuracies.items()})
            row.update({f'attack@{eps}': acc for eps, acc in summary['attack_accuracy'].items()})
            row['broken_certificates'] = summary['broken_certificates']
            row['evaluation_seconds'] = summary.get('evaluation_seconds')
        table.append(row)
    plots.plot_margins(histories, os.path.join(outdir, 'fig1a_margins.png'))
    plots.plot_loss(histories, os.path.join(outdir, 'fig1b_loss.png'))
    if attack_curves:
        plots.plot_attack_curves(attack_curves, os.path.join(outdir, 'fig2_attack.png'))
    with open(os.path.join(outdir, 'comparison.json'), 'w') as f:
        json.dump(table, f, indent=2)
    columns = list(dict.fromkeys(key for row in table for key in row))
    with open(os.path.join(outdir, 'comparison.csv'), 'w', newline='') as f:
        out = csv.DictWriter(f, fieldnames=columns)
        out.writeheader()
        out.writerows(table)
    with open(os.path.join(outdir, 'comparison.md'), 'w') as f:
        f.write(markdown_table(table, [c for c in columns if c not in ('workdir', 'method')]))
    return table


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A Markdown table of ``rows`` (floats to 4 significant digits), for reports."""
    def cell(value):
        return f'{value:.4g}' if isinstance(value, float) else ('' if value is None else str(value))
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(cell(row.get(c)) for c in columns) + ' |' for row in rows]
    return '\n'.join(lines) + '\n'

