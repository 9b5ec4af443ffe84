"""``python launch.py ARGS`` inside the test process, for tests that check what a command
prints, exits with and leaves on disk but not the process boundary itself.

A subprocess pays for importing JAX and TensorFlow and for compiling every program again
(seconds each on a 2-core CPU); here the imports are done once per test worker and compiled
programs stay in memory. What runs is the same: launch.py's own flag parsing
(``parse_flags``, every failure as one ``error:`` line and exit status 1) and its ``main``.
Tests of the boundary (signals, a second process, what a fresh interpreter imports) keep
starting real processes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import traceback
from typing import NamedTuple

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_launch_module = None


class Launched(NamedTuple):
    """What ``subprocess.run(..., capture_output=True, text=True)`` would have returned."""

    returncode: int
    stdout: str
    stderr: str


def _module():
    """launch.py, imported once: its flags are defined in absl's global registry."""
    global _launch_module
    if _launch_module is None:
        spec = importlib.util.spec_from_file_location('lclmt_launch', os.path.join(REPO,
                                                                                    'launch.py'))
        _launch_module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_launch_module)
    return _launch_module


def _reset_flags() -> None:
    """Every flag back to unparsed, and the ``--config.FIELD`` override flags that
    ml_collections defined while parsing the previous command removed."""
    registry = flags.FLAGS
    for name in [name for name in registry if name.startswith('config.')]:
        delattr(registry, name)
    registry.unparse_flags()


def launch(*args: str) -> Launched:
    """Runs ``python launch.py *args`` in this process, from the repository root; returns its exit
    status and everything it printed (Python-level output: the C++ logs of XLA do not count)."""
    module = _module()
    argv = ['launch.py', *args]
    stdout, stderr = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    returncode = 0
    try:
        sys.argv = argv  # ml_collections reads the --config.FIELD overrides from here
        os.chdir(REPO)
        _reset_flags()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                module.main(module.parse_flags(argv))
            except SystemExit as exit_:
                code = exit_.code
                returncode = code if isinstance(code, int) else (0 if code is None else 1)
                if isinstance(code, str):
                    print(code, file=sys.stderr)
            except app.UsageError as error:
                print(f'FATAL Flags parsing error: {error}', file=sys.stderr)
                returncode = 1
            except Exception:  # noqa: BLE001 -- as the interpreter would: traceback, status 1
                traceback.print_exc()
                returncode = 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        _reset_flags()
    return Launched(returncode, stdout.getvalue(), stderr.getvalue())
