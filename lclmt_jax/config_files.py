"""Experiment files by path: ``experiments/mnist_lc.py:embedded`` read as ``config_flags`` reads
it, for the code that needs a file's module itself (its ``get_sweep``) or its config before the
flags are parsed (a one-line error for an unknown ``--config.FIELD``)."""

from __future__ import annotations

import importlib.util
import os
import types


def split_config_file(config_file: str) -> tuple[str, str]:
    """``'path.py:variant'`` -> ``('path.py', 'variant')``, as ``config_flags`` splits it."""
    path, _, variant = config_file.partition(':')
    return path, variant


def load_config_module(path: str) -> types.ModuleType:
    """Imports an experiment file (``get_config``, optionally ``get_sweep``) by its path."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'config file {path!r} not found')
    spec = importlib.util.spec_from_file_location(
        f'lclmt_config_{abs(hash(os.path.abspath(path)))}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
