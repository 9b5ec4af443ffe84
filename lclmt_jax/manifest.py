"""A checkpoint's manifest: every file's size and SHA-256, written once its save has finished and
checked before anything reads the checkpoint. Files only: no orbax, no JAX.

``lclmt_manifest.json`` in the checkpoint folder maps each file's relative path to ``[size,
sha256]``. :func:`verify` checks the manifest's entries to name files inside the folder before
opening any of them, then each entry, then that no file (or link) is missing from it or leads
outside the folder: a truncated or altered file (a full disk, an interrupted copy) or a file
swapped for a link is found before the storage layer sees it. A checkpoint without a manifest
is still refused when anything of it leads out of it.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from lclmt_jax import console
from lclmt_jax.paths import inside

MANIFEST = 'lclmt_manifest.json'


class DamagedCheckpointError(ValueError):
    """A checkpoint's files do not match its manifest."""


def _digest(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            sha.update(block)
    return sha.hexdigest()


def _files(directory: str) -> list[str]:
    """Every file below ``directory`` (relative paths), the manifest excepted."""
    return sorted(os.path.relpath(os.path.join(root, name), directory)
                  for root, _, names in os.walk(directory) for name in names
                  if name != MANIFEST or root != directory)


def write_manifest(directory: str) -> None:
    """Records every file's size and SHA-256 in ``directory/lclmt_manifest.json``."""
    manifest = {name: [os.path.getsize(os.path.join(directory, name)),
                       _digest(os.path.join(directory, name))] for name in _files(directory)}
    temporary = os.path.join(directory, MANIFEST + '.tmp')
    with open(temporary, 'w') as f:
        json.dump(manifest, f)
    os.replace(temporary, os.path.join(directory, MANIFEST))


def _entry(directory: str, name: Any) -> str:
    """The path of the manifest entry ``name``: a relative path to a file inside ``directory``,
    checked before anything reads it (no ``..``, no absolute path, no link leading out)."""
    parts = name.split('/') if isinstance(name, str) else []
    if not parts or name.startswith('/') or any(part in ('', '.', '..') for part in parts):
        raise DamagedCheckpointError(f'the manifest names {name!r}: not a file of the checkpoint')
    path = os.path.join(directory, *parts)
    if not inside(directory, path):
        raise DamagedCheckpointError(f'{name} leads outside the checkpoint')
    return path


def _is_record(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int)
            and isinstance(value[1], str))


def check_confined(directory: str) -> None:
    """Raises DamagedCheckpointError when the checkpoint folder, or anything below it, is a link
    leading out of it (or, for the folder, out of the folder holding it); opens nothing."""
    if not inside(os.path.dirname(os.path.abspath(directory)), directory):
        raise DamagedCheckpointError('the checkpoint folder is a link leading outside the '
                                     'checkpoints folder')
    for root, folders, names in os.walk(directory):
        for name in (*folders, *names):
            path = os.path.join(root, name)
            if not inside(directory, path):
                raise DamagedCheckpointError(
                    f'{os.path.relpath(path, directory)} leads outside the checkpoint')


def verify(directory: str) -> bool:
    """True when the files match the manifest, False when there is none to check against.

    First, with or without a manifest, nothing of the checkpoint may lead out of it
    (``check_confined``). The manifest's entries are checked to name files inside ``directory``
    before any of them is opened; then each entry's size and SHA-256, in the manifest's order;
    then that no file is missing from the manifest. Raises DamagedCheckpointError naming the
    first failure.
    """
    check_confined(directory)
    path = os.path.join(directory, MANIFEST)
    if not os.path.lexists(path):
        return False
    try:
        if not inside(directory, path):
            raise ValueError('the manifest is a link leading outside the checkpoint')
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as error:
        raise DamagedCheckpointError(
            f'unreadable manifest ({console.one_line(error, with_type=True)})') from None
    if not isinstance(manifest, dict) or not all(map(_is_record, manifest.values())):
        raise DamagedCheckpointError('malformed manifest: expected {file: [size, sha256]}')
    paths = {name: _entry(directory, name) for name in manifest}
    for name, (size, digest) in manifest.items():
        file = paths[name]
        if not os.path.isfile(file):
            raise DamagedCheckpointError(f'{name} is missing')
        if os.path.getsize(file) != size:
            raise DamagedCheckpointError(f'{name} has {os.path.getsize(file)} of its {size} bytes')
        if _digest(file) != digest:
            raise DamagedCheckpointError(f'{name} does not match its checksum')
    unlisted = sorted(set(_files(directory)) - set(manifest))
    if unlisted:
        raise DamagedCheckpointError(f'{unlisted[0]} is not in the manifest')
    return True
