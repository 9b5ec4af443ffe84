"""Sweeps: one experiment file, several runs that differ in a few config fields.

An experiment file declares a sweep with a module-level ``get_sweep(variant)`` beside its
``get_config(variant)``: a list of override dicts with dotted keys, one per member, applied on
top of the file's config (and of the command line's ``--config.*`` overrides, which apply to
every member)::

    def get_sweep(variant=''):
        return [{'method': 'lmt', 'epsilon': 0.2}, {'method': 'plain'}]

Each member is named from its overrides (``lmt_eps0.2``, ``plain``), or by its ``'member'`` key when
it has one (``{'member': 'paper_lmt', 'method': 'lmt'}``), and runs in ``<workdir>/<member>``. A
name is one folder name of letters, digits and ``._+-``, not starting with a dot (``MEMBER_NAME``),
so every member stays inside the sweep's workdir. ``launch.py --sweep=run`` trains and evaluates the
members one after another, skipping what is already done (an interrupted member resumes from its
checkpoint), then overlays them with :func:`compare_runs` (``comparison.csv``/``.json``/``.md``
and the figures in ``<workdir>``). ``launch.py --sweep=print`` prints one shell command per member
instead, for a scheduler.

:func:`compare_runs` is also ``launch.py --mode=compare``, for any finished runs: it reads and
checks every file of every run first (``read_run``), so that a malformed one is one error naming
the file and the field and creates nothing; what it writes is standard JSON
(``writers.standard_json``: a number that is not finite is null).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import re
import shlex
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from lclmt_jax import (
    checkpoints,
    configs,
    console,
    evaluate,
    losses,
    plots,
    run_files,
    train,
    validation,
    writers,
)

# How a swept field shows up in a member's name; other fields use their last dotted component.
SHORT_NAMES = {'epsilon': 'eps', 'learning_rate': 'lr', 'batch_size': 'bs', 'num_epochs': 'epochs',
               'weight_decay': 'wd', 'hidden_sizes': 'h', 'epsilon_warmup_epochs': 'warmup'}
MEMBER_FILE = 'sweep_member.json'  # in a member's workdir once it is trained and evaluated
NAME_KEY = 'member'  # a member dict may name itself: {'member': 'paper_lmt', 'method': 'lmt'}
# A member's folder name: no separator, no leading dot ('..', hidden files), at most 100 long.
MEMBER_NAME = re.compile(r'[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,99}')


class SweepError(RuntimeError):
    """A sweep is malformed, or some of its members failed (the others still ran)."""


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f'{value:g}'
    if isinstance(value, (tuple, list)):
        return '-'.join(_format_value(item) for item in value)
    return str(value)


def member_name(overrides: Mapping[str, Any]) -> str:
    """A short directory name from a member's overrides, in their order.

    A string value names itself (``{'method': 'lmt'}`` -> ``lmt``); other values follow the field's
    short name (``{'epsilon': 0.2}`` -> ``eps0.2``, ``{'mlp.hidden_sizes': (200, 200)}`` ->
    ``h200-200``); booleans give ``field`` or ``nofield``. Parts are joined by ``_``.
    """
    parts = []
    for key, value in overrides.items():
        short = SHORT_NAMES.get(key.rsplit('.', 1)[-1], key.rsplit('.', 1)[-1])
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, bool):
            parts.append(short if value else f'no{short}')
        else:
            parts.append(f'{short}{_format_value(value)}')
    name = re.sub(r'[^A-Za-z0-9._+-]', '-', '_'.join(parts)).lstrip('.')
    return name or 'base'


def check_member_name(name: Any, path: str) -> str:
    """``name`` if it is a safe folder name for a member (``MEMBER_NAME``), else one ValueError:
    a name like ``../x`` or ``/tmp/x`` would train outside the sweep's workdir."""
    if not isinstance(name, str) or not MEMBER_NAME.fullmatch(name):
        raise ValueError(f'{path}: sweep member name {name!r} is not allowed: use 1-100 letters, '
                         'digits and ._+- , not starting with a dot (it names a folder inside '
                         'the workdir)')
    return name


def flag_value(value: Any) -> str:
    """``value`` as ``--config.field=...`` text that ``ml_collections.config_flags`` parses back."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, (tuple, list)):
        return '(' + ', '.join(flag_value(item) for item in value) + (',)' if len(value) == 1
                                                                     else ')')
    return str(value)


def override_flags(overrides: Mapping[str, Any]) -> list[str]:
    """Command-line flags that apply ``overrides`` (dotted keys) to ``--config``."""
    return [f'--config.{key}={flag_value(value)}' for key, value in overrides.items()]


@dataclasses.dataclass
class Sweep:
    """The members of a sweep: their names, overrides and configs.

    Attributes:
      config_file: ``path.py[:variant]`` as given to ``--config``.
      base: the file's ``get_config(variant)`` with the command line's overrides applied.
      base_overrides: those command-line overrides (dotted key -> value), for printed commands.
      members: member name -> that member's overrides, in the file's order.
    """

    config_file: str
    base: ml_collections.ConfigDict
    base_overrides: dict[str, Any]
    members: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, config_file: str, overrides: Mapping[str, Any] | None = None,
             base: ml_collections.ConfigDict | None = None) -> Sweep:
        """Reads ``get_sweep`` (and ``get_config``, unless ``base`` is given) from the file.

        ``overrides`` apply to every member; ``base``, when given, already includes them.
        """
        path, variant = configs.split_config_file(config_file)
        module = configs.load_config_module(path)
        if not callable(getattr(module, 'get_sweep', None)):
            raise ValueError(f'{path} declares no sweep: it needs a get_sweep(variant) returning '
                             'a list of override dicts')
        overrides = dict(overrides or {})
        if base is None:
            base = configs.apply_overrides(module.get_config(variant), overrides, 'command line')
        members: dict[str, dict[str, Any]] = {}
        for member in module.get_sweep(variant):
            if not isinstance(member, Mapping):
                raise ValueError(f'{path}: get_sweep must return dicts, got {member!r}')
            member = dict(member)
            given_name = member.pop(NAME_KEY, None)
            clash = sorted(set(member) & set(overrides))
            if clash:
                raise ValueError(f'--config.{clash[0]} is set by the sweep members of {path}; '
                                 'drop it from the command line (or from get_sweep)')
            name = check_member_name(given_name or member_name(member), path)
            if name in members:
                raise ValueError(f'{path}: two sweep members are both named {name!r} '
                                 f'({members[name]} and {member})')
            members[name] = member
        if not members:
            raise ValueError(f'{path}: get_sweep({variant!r}) returned no members')
        sweep = cls(config_file, base, overrides, members)
        for name in members:  # every member is checked before anything runs
            validation.validate_config(sweep.config(name), num_devices=1)
        return sweep

    @classmethod
    def from_config_flag(cls, flag) -> Sweep:
        """The sweep of ``launch.py``'s ``--config`` flag (file, variant and ``--config.*``)."""
        from ml_collections import config_flags

        return cls.load(config_flags.get_config_filename(flag),
                        config_flags.get_override_values(flag), base=flag.value)

    def config(self, name: str) -> ml_collections.ConfigDict:
        """The full config of member ``name``."""
        return configs.apply_overrides(self.base, self.members[name], f'sweep member {name!r}')

    def commands(self, workdir: str, max_examples: int | None = None,
                 program: str = 'launch.py') -> str:
        """One shell line per member that trains and then evaluates it, as ``--sweep=run`` would.

        Every process of a multi-host job runs the same line (``launch.py`` joins them).
        """
        lines = []
        for name, overrides in self.members.items():
            member_dir = os.path.join(workdir, name)
            train_args = ['python', program, f'--config={self.config_file}',
                          f'--workdir={member_dir}',
                          *override_flags(self.base_overrides), *override_flags(overrides)]
            evaluate_args = ['python', program, '--mode=evaluate', f'--workdir={member_dir}']
            if max_examples is not None:
                evaluate_args.append(f'--max_examples={max_examples}')
            lines.append(f'{shlex.join(train_args)} && {shlex.join(evaluate_args)}')
        return '\n'.join(lines)

    def compare_command(self, workdir: str, program: str = 'launch.py') -> str:
        """The command that builds the results table once every member has finished."""
        runs = ','.join(os.path.join(workdir, name) for name in self.members)
        return shlex.join(['python', program, '--mode=compare', f'--workdir={workdir}',
                           f'--runs={runs}'])

    def run(self, workdir: str, max_examples: int | None = None) -> list[dict]:
        """Trains and evaluates every member not yet done, then writes and prints the table.

        A member that fails (non-finite loss, broken certificate) does not stop the others; the
        table covers every member with metrics, and a ``SweepError`` names the failures at the end.
        """
        failures = {}
        for index, name in enumerate(self.members, 1):
            console.say(f'sweep member {index}/{len(self.members)}: {name}')
            try:
                self.run_member(name, workdir, max_examples)
            except (train.NonFiniteLossError, evaluate.BrokenCertificateError) as error:
                logging.error('sweep member %s failed: %s', name, error)
                failures[name] = str(error)
        done = [os.path.join(workdir, name) for name in self.members
                if os.path.exists(os.path.join(workdir, name, run_files.METRICS_FILE))]
        table = []
        if done and jax.process_index() == 0:
            table = compare_runs(done, workdir)
            console.say(console.comparison_table(
                table, self.base.certificate, self.base.evaluation.epsilons))
            console.say(f'table and figures: {os.path.abspath(workdir)}/comparison.csv, *.png')
        if failures:
            raise SweepError(f'{len(failures)} of {len(self.members)} sweep members failed: '
                             + '; '.join(f'{name}: {error}' for name, error in failures.items()))
        return table

    def run_member(self, name: str, workdir: str, max_examples: int | None = None) -> str:
        """Trains (or resumes) and evaluates one member unless that is done; returns its workdir."""
        config = self.config(name)
        member_dir = os.path.join(workdir, name)
        record = {'member': name, 'max_examples': max_examples,
                  'config': run_files.config_as_dict(config)}
        if _read_json(os.path.join(member_dir, MEMBER_FILE)) == record:
            console.say(f'  {member_dir}: trained and evaluated, skipped')
            return member_dir
        run_files.check_same_training(member_dir, config)
        if checkpoints.latest_epoch(member_dir) < config.num_epochs:
            train.train_and_evaluate(config, member_dir)
        evaluate.evaluate_run(member_dir, max_examples)
        if jax.process_index() == 0:
            writers.write_json(os.path.join(member_dir, MEMBER_FILE), record)
        return member_dir


def launch(config_flag, action: str, workdir: str, max_examples: int | None = None,
           program: str = 'launch.py') -> None:
    """``launch.py --sweep=run|print``: the sweep of ``--config`` (with its ``--config.*``)."""
    run_files.check_workdir(workdir)
    sweep = Sweep.from_config_flag(config_flag)
    if action == 'print':
        print(sweep.commands(workdir, max_examples, program))
        print(f'# when all have finished, the table: {sweep.compare_command(workdir, program)}',
              file=sys.stderr)
    elif action == 'run':
        sweep.run(workdir, max_examples)
    else:
        raise ValueError(f'unknown sweep action {action!r}; allowed: run, print')


def _read_json(path: str) -> dict | None:
    return run_files.read_json(path) if os.path.exists(path) else None


# --mode=compare: what several finished runs reached, side by side.

EVALUATION_FILE = os.path.join(evaluate.EVALUATION_DIR, 'evaluation.json')
CURVES_FILE = os.path.join(evaluate.EVALUATION_DIR, 'curves.csv')
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
        validation.check_training(config)
        validation.check_evaluation(config)
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
    try:
        records = run_files.read_metrics(workdir)
    except OverflowError:  # int() of an epoch of 1e400
        raise ValueError(f'{path}: a record\'s "epoch" is infinite, not an epoch') from None
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


def compare_runs(workdirs: Sequence[str], outdir: str) -> list[dict]:
    """Overlays runs into Fig. 1a, 1b and one figure per curve, plus a results table.

    Every run's files are read and checked first: a missing or malformed one is one ValueError
    naming it and its field, and nothing is created. ``fig2_attack.png`` is the paper's Fig. 2
    (CW-L2 accuracy vs perturbation norm); the table (``comparison.csv``/``.json``/``.md``) has
    the training summary and every evaluator scalar, a number that is not finite as null
    (``writers.standard_json``; an empty cell in the CSV and Markdown). Returns the table.
    """
    run_files.check_workdir(outdir)
    runs = [read_run(workdir) for workdir in workdirs]
    histories, curves, table, untrained = {}, {}, [], []
    for run in runs:
        label = evaluate.run_label(run.config)
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
    writers.write_json(os.path.join(outdir, 'comparison.json'), table)
    columns = list(dict.fromkeys(key for row in table for key in row))
    with open(os.path.join(outdir, 'comparison.csv'), 'w', newline='') as f:
        out = csv.DictWriter(f, fieldnames=columns)
        out.writeheader()
        out.writerows(table)
    first = runs[0].config
    with open(os.path.join(outdir, 'comparison.md'), 'w') as f:
        f.write(comparison_markdown(table, first.certificate, first.evaluation.epsilons, subject))
    return table
