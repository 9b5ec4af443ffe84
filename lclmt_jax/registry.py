"""Name -> factory lookups: the one list of what a config may name, for every extension kind.

Each extension kind (models, activations, training methods, data sources, optimizers,
evaluators) keeps one :class:`Registry`. A contributor adds an entry with a decorator in the file
that implements it; config validation, the trainer and the error messages all ask the registry,
so nothing else keeps a list of names.

A registry given a ``package`` imports every module of that package the first time it is asked,
so a new file dropped into ``lclmt_jax/models/`` (or ``data/``, ``evaluators/``) registers itself:
adding a model, a data source or an evaluator touches one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar('T')


class Registry(Generic[T]):
    """An ordered map from names to entries of one extension kind, e.g. ``'model'``."""

    def __init__(self, kind: str, package: str | None = None):
        self.kind = kind
        self._package = package
        self._discovered = package is None
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None):
        """Adds ``entry`` under ``name``; without ``entry``, a decorator that adds what it wraps."""
        def add(value: T) -> T:
            if self._entries.get(name, value) is not value:
                raise ValueError(f'{self.kind} {name!r} is registered twice')
            self._entries[name] = value
            return value

        return add if entry is None else add(entry)

    def _discover(self) -> None:
        """Imports every module of the package once, so their decorators run."""
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self._package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith('_'):
                importlib.import_module(f'{self._package}.{module.name}')

    def names(self) -> tuple[str, ...]:
        """Every registered name: in registration order, alphabetical for a package's plugins
        (whose import order is not theirs to choose)."""
        self._discover()
        return tuple(sorted(self._entries) if self._package else self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str, what: str | None = None) -> T:
        """The entry named ``name``; a one-line ValueError naming what is allowed otherwise.

        ``what`` names the config field in the message (default: the kind).
        """
        if name not in self:
            raise ValueError(f'unknown {what or self.kind} {name!r}; allowed: '
                             f'{", ".join(self.names())}')
        return self._entries[name]

