"""Config fields that describe themselves: a default, the values allowed and whether the field
binds a workdir's training.

The schema (``lclmt_jax.config_schema``) and every evaluator's settings
(``lclmt_jax.evaluators``) are written as :class:`Field` values, so one declaration gives the
default of ``default_config()``, the check ``lclmt_jax.validation`` runs and the resume policy's
answer to "may this change between two invocations on one workdir?" (``lclmt_jax.resume``).
Needs the standard library and ml_collections only: a config is read without JAX. A field that
names a registry entry imports that registry only when it is checked.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any, NamedTuple

import ml_collections


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


@dataclasses.dataclass(frozen=True)
class Number:
    """A finite int or float (not a bool) >= ``minimum`` (> when ``strict``), <= ``maximum``
    and < ``below`` when given; None too when ``optional``."""

    minimum: float = 0.0
    strict: bool = False
    optional: bool = False
    maximum: float = math.inf
    below: float | None = None
    placeholder = float

    def check(self, value: Any, name: str) -> None:
        if value is None and self.optional:
            return
        if not _is_number(value) or not math.isfinite(value) or value < self.minimum or (
                self.strict and value == self.minimum) or value > self.maximum or (
                self.below is not None and value >= self.below):
            relation = '>' if self.strict else '>='
            most = f' and <= {self.maximum:g}' if math.isfinite(self.maximum) else ''
            upper = '' if self.below is None else f' and < {self.below:g}'
            raise ValueError(f'{name} must be a finite number {relation} {self.minimum:g}'
                             f'{most}{upper}, got {value!r}')


@dataclasses.dataclass(frozen=True)
class Integer:
    """An int (not a bool) >= ``minimum``; None too when ``optional``."""

    minimum: int = 1
    optional: bool = False
    placeholder = int

    def check(self, value: Any, name: str) -> None:
        if value is None and self.optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < self.minimum:
            kind = 'a positive integer' if self.minimum == 1 else f'an integer >= {self.minimum}'
            none = ' or None' if self.optional else ''
            raise ValueError(f'{name} must be {kind}{none}, got {value!r}')


@dataclasses.dataclass(frozen=True)
class Flag:
    """True or False."""

    def check(self, value: Any, name: str) -> None:
        if not isinstance(value, bool):
            raise ValueError(f'{name} must be True or False, got {value!r}')


@dataclasses.dataclass(frozen=True)
class Text:
    """Any string (a path, a dataset name): its user checks what it means."""

    def check(self, value: Any, name: str) -> None:
        if not isinstance(value, str):
            raise ValueError(f'{name} must be a string, got {value!r}')


def _registry(path: str) -> Any:
    module, _, attribute = path.partition(':')
    return getattr(importlib.import_module(module), attribute)


@dataclasses.dataclass(frozen=True)
class Name:
    """A name of the registry at ``registry`` (``'lclmt_jax.losses:METHODS'``, imported when
    checked; a registry or a tuple of names), so the allowed values in an error are always those
    that exist; ``many``: a tuple of such names, each reported as ``what``; ``empty_ok``: ``''``
    too, meaning none (an optional section's switch, e.g. ``data.extra.source``)."""

    registry: str
    many: bool = False
    what: str = ''
    empty_ok: bool = False

    def check(self, value: Any, name: str) -> None:
        if self.empty_ok and value == '':
            return
        registry = _registry(self.registry)
        if not self.many:
            _look_up(registry, value, f'config.{name}')
            return
        if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f'{name} must be a tuple of names, got {value!r}')
        for item in value:
            _look_up(registry, item, self.what or name)


def _look_up(registry: Any, value: Any, what: str) -> None:
    """``registry.get(value, what)``; for a tuple of names the same one line."""
    if not isinstance(registry, tuple):
        registry.get(value, what)
    elif value not in registry:
        raise ValueError(f'unknown {what} {value!r}; allowed: {", ".join(registry)}')


@dataclasses.dataclass(frozen=True)
class Radii:
    """A non-empty tuple of finite radii >= 0."""

    def check(self, value: Any, name: str) -> None:
        if not isinstance(value, (tuple, list)) or not value:
            raise ValueError(f'{name} must be a non-empty tuple of radii, got {value!r}')
        for radius in value:
            Number().check(radius, name)


@dataclasses.dataclass(frozen=True)
class CheckedByUser:
    """Free-form (keyword arguments passed on, a model's settings): the code that uses it
    checks it, and names its problems in one line (``lclmt_jax.validation``)."""

    def check(self, value: Any, name: str) -> None:
        del value, name


class Field(NamedTuple):
    """One config field: its default, the values it may take (``kind.check(value, name)``
    raises one ValueError line) and whether it binds a workdir's training.

    ``binds_training=False`` marks what may change between two invocations on one workdir
    without invalidating what was trained there: how long it trains (it resumes), how often it
    checkpoints, where the data files are, how it is evaluated.
    """

    default: Any
    kind: Any
    binds_training: bool = True

    def value(self) -> Any:
        """The default as a ConfigDict entry: None becomes a typed placeholder, so that
        ``--config.<field>=N`` parses; a dict becomes a ConfigDict."""
        if self.default is None:
            return ml_collections.config_dict.placeholder(getattr(self.kind, 'placeholder', int))
        if isinstance(self.default, dict):
            return ml_collections.ConfigDict(self.default)
        return self.default


Schema = dict  # name -> Field or Schema (a section)


def build(schema: Schema) -> ml_collections.ConfigDict:
    """The ConfigDict of every field's default, sections nested."""
    config = ml_collections.ConfigDict()
    for name, entry in schema.items():
        config[name] = build(entry) if isinstance(entry, dict) else entry.value()
    return config


def flat(schema: Schema, prefix: str = '') -> dict[str, Field]:
    """``{'bound.power_iterations': Field, ...}``: every field by its dotted name."""
    fields = {}
    for name, entry in schema.items():
        if isinstance(entry, dict):
            fields.update(flat(entry, f'{prefix}{name}.'))
        else:
            fields[f'{prefix}{name}'] = entry
    return fields


def field_of(schema: Schema, key: str) -> Field | None:
    """The field a dotted ``key`` is, or lies below (a free-form field's entry), or None."""
    entry: Any = schema
    for part in key.split('.'):
        if not isinstance(entry, dict) or part not in entry:
            return None
        entry = entry[part]
        if isinstance(entry, Field):
            return entry
    return None
