"""JAX's persistent compilation cache for command-line runs: a second run of the same training
(a resume, a sweep member, the next seed) loads its compiled programs instead of compiling them.

The cache lives in ``$LCLMT_JAX_CACHE`` (default ``~/.cache/lclmt_jax/xla``; empty: off). JAX
keys every entry by the program, the backend and the JAX version, so a stale entry is never used;
deleting the folder only costs the next run its compilation again.
"""

from __future__ import annotations

import os

import jax

DEFAULT_DIR = os.path.join(os.path.expanduser('~'), '.cache', 'lclmt_jax', 'xla')


def enable(directory: str | None = None) -> str | None:
    """Turns the cache on in ``directory`` (default: ``$LCLMT_JAX_CACHE`` or ``DEFAULT_DIR``) for
    every program that takes at least 0.1 s to compile; returns the folder, or None when off
    (``LCLMT_JAX_CACHE=''``) or when the folder cannot be created (a read-only home)."""
    if directory is None:
        directory = os.environ.get('LCLMT_JAX_CACHE', DEFAULT_DIR)
    if not directory:
        return None
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return None
    jax.config.update('jax_compilation_cache_dir', directory)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.1)
    return directory
