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
checkpoint), then overlays them with ``comparison.compare_runs`` (``comparison.csv``/``.json``/
``.md`` and the figures in ``<workdir>``). ``launch.py --sweep=print`` prints one shell command
per member instead, for a scheduler.

"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import sys
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
from absl import logging

from lclmt_jax import (
    assessment,
    checkpoints,
    comparison,
    config_files,
    config_schema,
    console,
    outcomes,
    resume,
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
        path, variant = config_files.split_config_file(config_file)
        module = config_files.load_config_module(path)
        if not callable(getattr(module, 'get_sweep', None)):
            raise ValueError(f'{path} declares no sweep: it needs a get_sweep(variant) returning '
                             'a list of override dicts')
        overrides = dict(overrides or {})
        if base is None:
            base = config_schema.apply_overrides(module.get_config(variant), overrides,
                                                 'command line')
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
        return config_schema.apply_overrides(self.base, self.members[name],
                                             f'sweep member {name!r}')

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
            except (train.NonFiniteLossError, assessment.BrokenCertificateError) as error:
                logging.error('sweep member %s failed: %s', name, error)
                failures[name] = str(error)
        done = [os.path.join(workdir, name) for name in self.members
                if os.path.exists(os.path.join(workdir, name, run_files.METRICS_FILE))]
        table = []
        if done and jax.process_index() == 0:
            table = comparison.compare_runs(done, workdir)
            console.say(outcomes.comparison_table(
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
        resume.check_same_training(member_dir, config)
        if checkpoints.latest_epoch(member_dir) < config.num_epochs:
            train.train_and_evaluate(config, member_dir)
        assessment.evaluate_run(member_dir, max_examples)
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
