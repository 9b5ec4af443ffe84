"""``--mode=compare``: what several finished runs reached, side by side.

:func:`compare_runs` reads and checks every file of every run first (``read_run``), so that a
malformed one is one error naming the file and the field and creates nothing; then it writes
``comparison.csv``/``.json``/``.md`` and the overlaid figures. What it writes is standard JSON
(``writers.standard_json``: a number that is not finite is null). Sweeps use it for their
members (``sweeps``).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from lclmt_jax import (
    assessment,
    console,
    losses,
    plots,
    run_files,
    validation,
    writers,
)

EVALUATION_FILE = os.path.join(assessment.EVALUATION_DIR, 'evaluation.json')
CURVES_FILE = os.path.join(assessment.EVALUATION_DIR, 'curves.csv')
READ_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OverflowError)


class ComparedRun(NamedTuple):
    """One run as ``--mode=compare`` reads it, every file it needs checked (``read_run``)."""

    workdir: str
    config: ml_collections.ConfigDict
    dataset: str  # the dataset's name in run.json (the config's data source in a run without)
    records: list[dict[str, float]]  # metrics.jsonl, a null read as NaN
    summary: dict[str, float]  # the numbers of evaluation.json; {} when not evaluated
    curves: dict[str, np.ndarray]  # the columns of curves.csv; {} when it has none


@contextlib.contextmanager
def _naming(path: str) -> Iterator[None]:
    """Turns any failure to read or check the file ``path`` into one ValueError line that
    starts with its path (the library's readers already name it; ml_collections' type errors
    name the field but not the file)."""
    try:
        yield
    except READ_ERRORS as error:
        message = console.one_line(error, with_type=isinstance(error, KeyError))
        raise ValueError(message if path in message else f'{path}: {message}') from None


def _compared_config(workdir: str) -> ml_collections.ConfigDict:
    """The run's config.json, with the fields a comparison reads checked as training checks
    them (method, ε, model, certificate, radii)."""
    with _naming(os.path.join(workdir, run_files.CONFIG_FILE)):
        config = run_files.load_config(workdir)
        validation.check_known_fields(config)
        validation.check_fields(config)
    return config


def _dataset_name(workdir: str, config: ml_collections.ConfigDict) -> str:
    """The dataset the run trained on, as its run.json names it."""
    path = os.path.join(workdir, run_files.RUN_INFO_FILE)
    if not os.path.exists(path):
        return config.data.name if config.data.source == 'tfds' else config.data.source
    name = run_files.read_json(path).get('dataset')
    if not isinstance(name, str) or not name:
        raise ValueError(f'{path}: "dataset" is {name!r}, not a dataset name')
    return name


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _compared_records(workdir: str) -> list[dict[str, float]]:
    """metrics.jsonl with every value a number (null read as NaN) and every epoch a whole
    number >= 1."""
    path = os.path.join(workdir, run_files.METRICS_FILE)
    records = run_files.read_metrics(workdir)  # an epoch of 1e400 reads as inf, named below
    checked = []
    for number, record in enumerate(records, 1):
        for key, value in record.items():
            if value is not None and not _number(value):
                raise ValueError(f'{path}: record {number} has "{key}": {value!r}, not a number')
        epoch = record['epoch']
        if epoch is None or not math.isfinite(epoch) or epoch != int(epoch) or epoch < 1:
            raise ValueError(f'{path}: record {number} has "epoch": {epoch!r}, not an epoch')
        checked.append({key: math.nan if value is None else value
                        for key, value in record.items()})
    return checked


def _compared_summary(workdir: str) -> dict[str, float]:
    """The numbers of evaluation.json ({} without one): its scalars; a value at a radius
    (``name@radius``) that is not a number is refused."""
    path = os.path.join(workdir, EVALUATION_FILE)
    if not os.path.exists(path):
        return {}
    summary = run_files.read_json(path)
    for key, value in summary.items():
        if '@' in key and value is not None and not _number(value):
            raise ValueError(f'{path}: "{key}" is {value!r}, not a number')
    return {key: value for key, value in summary.items()
            if isinstance(value, (int, float)) and key != 'epoch'}


def read_curves(workdir: str) -> dict[str, np.ndarray]:
    """The curves.csv of an evaluated run as columns ({} without one): a radius column, finite,
    and one accuracy column per curve; a cell that is not a number, a ragged or an empty file is
    refused with the line and the column."""
    path = os.path.join(workdir, CURVES_FILE)
    if not os.path.exists(path):
        return {}
    with open(path, newline='') as f:
        header, *rows = list(csv.reader(f)) or [[]]
    if 'radius' not in header or not rows:
        raise ValueError(f'{path}: needs a "radius" column and at least one row; rerun '
                         '--mode=evaluate on the run')
    values = np.empty((len(rows), len(header)))
    for line, row in enumerate(rows, 2):
        if len(row) != len(header):
            raise ValueError(f'{path}, line {line}: {len(row)} values for {len(header)} columns')
        for column, (name, cell) in enumerate(zip(header, row, strict=True)):
            try:
                values[line - 2, column] = float(cell)
            except ValueError:
                raise ValueError(f'{path}, line {line}: "{name}" is {cell!r}, not a '
                                 'number') from None
    columns = dict(zip(header, values.T, strict=True))
    if not np.isfinite(columns['radius']).all():
        raise ValueError(f'{path}: a "radius" is not finite')
    return columns


def read_run(workdir: str) -> ComparedRun:
    """Everything ``compare_runs`` needs of one run, each file checked: a missing or broken
    file, or a field of the wrong type, is one error naming the file and the field."""
    config = _compared_config(workdir)
    return ComparedRun(os.path.abspath(workdir), config, _dataset_name(workdir, config),
                       _compared_records(workdir), _compared_summary(workdir),
                       read_curves(workdir))


def _table_row(run: ComparedRun, label: str) -> dict[str, Any]:
    """One run's row of the comparison table: its training summary and every evaluation
    scalar."""
    margin = losses.trains_for_margin(losses.METHODS.get(run.config.method))
    records = run.records if margin else [  # plain training: no radius, no required margin
        {key: value for key, value in record.items() if 'required_margin' not in key}
        for record in run.records]
    last = records[-1] if records else {}
    return {'run': label, 'workdir': run.workdir, 'method': run.config.method,
            'epsilon': run.config.epsilon if margin else None, 'epochs': len(records),
            'train_accuracy': last.get('train_accuracy'),
            'test_accuracy': last.get('test_accuracy'),
            'train_accuracy_inflated': last.get('train_accuracy_inflated'),
            'first_epoch_meeting_bound': plots.first_epoch_meeting_bound(records),
            **{f'first_epoch_meeting_bound_{reading}': plots.first_epoch_meeting_bound(
                records, reading) for reading in plots.MARGIN_READINGS if reading != 'mean'},
            'train_seconds': sum(record.get('epoch_seconds', 0.0) for record in records),
            **run.summary}


def headline_columns(table: Sequence[Mapping], certificate: str,
                     epsilons: Sequence[float]) -> list[str]:
    """The few columns of the comparison that answer it: epochs, accuracies, certified accuracy
    with ``certificate`` at ``epsilons`` and the test points it covers, the attack at the same
    radii and the points it covers where some run was attacked, and the first epoch whose mean
    margin met the required one."""
    attacked = [f'attack@{eps:g}' for eps in epsilons
                if any(f'attack@{eps:g}' in row for row in table)]
    return ['run', 'epochs', 'train_accuracy', 'test_accuracy', 'num_examples',
            *(f'certified_{certificate}@{eps:g}' for eps in epsilons),
            *(['attack_examples', *attacked] if attacked else []), 'first_epoch_meeting_bound']


# Headers of comparison.md's headline; a figure at a radius is headed by its kind and radius.
HEADLINE_HEADERS = {'train_accuracy': 'train acc', 'test_accuracy': 'test acc',
                    'num_examples': 'test points', 'attack_examples': 'attacked points',
                    'first_epoch_meeting_bound': 'bound met at epoch'}


def _header(column: str) -> str:
    kind, at, radius = column.partition('@')
    if at:
        return f'{"CW-L2" if kind == "attack" else "certified"}@{radius}'
    return HEADLINE_HEADERS.get(column, column)


def _markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return f'{value:.4g}' if isinstance(value, float) else ('' if value is None else str(value))

    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(cell(value) for value in row) + ' |' for row in rows]
    return '\n'.join(lines) + '\n'


def comparison_markdown(table: Sequence[Mapping], certificate: str, epsilons: Sequence[float],
                        subject: str) -> str:
    """``comparison.md``: the headline (``headline_columns``, one row per run), then every other
    figure transposed, one row per figure and one column per run, so that it stays readable
    however many scalars the evaluators report. Floats to 4 significant digits; an empty cell
    is a figure the run does not have, or one that is not finite."""
    headline = headline_columns(table, certificate, epsilons)
    others = [key for key in dict.fromkeys(key for row in table for key in row)
              if key not in (*headline, 'workdir', 'method')]
    return '\n'.join([
        f'# {len(table)} runs compared: {subject}\n',
        f'`certified@r`: certified accuracy at radius r with the {certificate} certificate, a '
        'sound lower bound on robust accuracy, over the test points; `CW-L2@r`: accuracy under '
        'the CW-L2 attack, an empirical upper bound, over the attacked points; `bound met at '
        'epoch`: the first epoch whose mean training margin met the required one. An empty '
        'cell: not measured, or not finite.\n',
        _markdown(['workdir', *map(_header, headline)],
                  [[os.path.basename(row['workdir']), *(row.get(key) for key in headline)]
                   for row in table]),
        '## Every other figure\n',
        _markdown(['', *(row['run'] for row in table)],
                  [[key, *(row.get(key) for row in table)] for key in others]),
    ])


def _certified_in_time(row: Mapping[str, Any], certificate: str,
                       radii: Sequence[float]) -> tuple[str, tuple[float, dict]]:
    """A run's name, training seconds and certified accuracy at ``radii``: the float32-sound
    figures, or where the run has none (a network whose rounding is not analysed, e.g. SLL) the
    exact-arithmetic ones, its name then saying so."""
    name = os.path.basename(row['workdir'])
    sound = {eps: row.get(f'certified_{certificate}@{eps:g}') for eps in radii}
    if any(value is not None for value in sound.values()):
        return name, (row['train_seconds'], sound)
    exact = {eps: row.get(f'certified_exact_{certificate}@{eps:g}') for eps in radii}
    return f'{name} (exact arithmetic)', (row['train_seconds'], exact)


def compare_runs(workdirs: Sequence[str], outdir: str) -> list[dict]:
    """Overlays runs into Fig. 1a, 1b and one figure per curve, plus a results table.

    Every run's files are read and checked first: a missing or malformed one is one ValueError
    naming it and its field, and nothing is created. ``fig2_attack.png`` is the paper's Fig. 2
    (CW-L2 accuracy vs perturbation norm), ``certified_vs_time.png`` each run's certified
    accuracy at the first run's radii against its training time; the table
    (``comparison.csv``/``.json``/``.md``) has the training summary and every evaluator scalar,
    a number that is not finite as null (``writers.standard_json``; an empty cell in the CSV and
    Markdown). Returns the table.
    """
    run_files.check_workdir(outdir)
    runs = [read_run(workdir) for workdir in workdirs]
    histories, curves, table, untrained = {}, {}, [], []
    for run in runs:
        label = assessment.run_label(run.config)
        if label in histories:  # e.g. a sweep over seeds: keep both curves apart
            label = f'{label} [{os.path.basename(run.workdir)}]'
        histories[label] = run.records
        if not losses.trains_for_margin(losses.METHODS.get(run.config.method)):
            untrained.append(label)
        for name, values in run.curves.items():
            if name != 'radius':
                curves.setdefault(name, {})[label] = (run.curves['radius'], values)
        table.append(writers.standard_json(_table_row(run, label)))
    subject = plots.figure_subject([run.dataset for run in runs],
                                   [run.config.model for run in runs])
    os.makedirs(outdir, exist_ok=True)
    plots.plot_margins(histories, os.path.join(outdir, 'fig1a_margins.png'), untrained, subject)
    plots.plot_loss(histories, os.path.join(outdir, 'fig1b_loss.png'), subject)
    for name, overlaid in curves.items():
        plots.plot_curve_overlay(overlaid, name, os.path.join(outdir, f'fig2_{name}.png'),
                                 subject)
    first = runs[0].config
    timed = dict(_certified_in_time(row, first.certificate, first.evaluation.epsilons)
                 for row in table)
    plots.plot_certified_vs_time(timed, os.path.join(outdir, 'certified_vs_time.png'), subject)
    writers.write_json(os.path.join(outdir, 'comparison.json'), table)
    columns = list(dict.fromkeys(key for row in table for key in row))
    with open(os.path.join(outdir, 'comparison.csv'), 'w', newline='') as f:
        out = csv.DictWriter(f, fieldnames=columns)
        out.writeheader()
        out.writerows(table)
    with open(os.path.join(outdir, 'comparison.md'), 'w') as f:
        f.write(comparison_markdown(table, first.certificate, first.evaluation.epsilons, subject))
    return table
