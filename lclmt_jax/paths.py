"""Paths inside a workdir: nothing under it is read, followed or written outside it.

A workdir received from someone else may hold links (``checkpoints -> /elsewhere``, an
``evaluation`` link, a checkpoint file linked to a file of another user). The workdir itself is
the path the user named, links included; every path the library derives from it goes through
:func:`confined`, which refuses one that leads out of it, with one line, before anything reads or
writes through it.
"""

from __future__ import annotations

import os


def inside(directory: str, path: str) -> bool:
    """Whether ``path``, links resolved, lies inside ``directory`` (links resolved too)."""
    root = os.path.realpath(directory)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def confined(workdir: str, *parts: str) -> str:
    """``workdir/<parts>`` (absolute), or a ValueError line when it exists and leads outside
    ``workdir``: a link the user did not name is never followed out."""
    path = os.path.join(os.path.abspath(workdir), *parts)
    if os.path.lexists(path) and not inside(workdir, path):
        raise ValueError(f'{path} is a link leading outside {workdir}: lclmt_jax reads and writes '
                         'only inside the workdir; replace the link by a folder or file of its own')
    return path
