"""The channel to the user: lines from process 0, errors as one line, aligned text columns.

Every message of the library goes through here, so a multi-process job prints each line once
and every failure reads the same way (``error: <one line>``). What each mode says at its end is
``lclmt_jax.outcomes``'.
"""

from __future__ import annotations

import sys

MAX_LINE = 300  # characters of an error message kept in a one-line report


def say(line: str, stderr: bool = False) -> None:
    """Prints ``line`` from process 0 only, flushed; ``stderr`` for notices about the user's files
    (resuming, a damaged checkpoint) and warnings, which must not mix with results."""
    import jax  # here: reporting a bad command line must not wait for JAX

    if jax.process_index() == 0:
        print(line, file=sys.stderr if stderr else sys.stdout, flush=True)


def one_line(error: BaseException, with_type: bool = False) -> str:
    """An error as one line: its message if that is one line, else the message's last line (the
    cause, in ml_collections', absl's and orbax's multi-line reports), at most ``MAX_LINE``
    characters; ``with_type`` prefixes the exception's class name (for errors raised by other
    libraries, whose message alone can be cryptic)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    message = (lines[-1] if lines else '').removeprefix('ValueError: ')[:MAX_LINE]
    if with_type or not message:
        return f'{type(error).__name__}: {message}' if message else type(error).__name__
    return message


def cell(value: object) -> str:
    """A table cell: floats to 4 decimals, None as '-'."""
    if value is None:
        return '-'
    return f'{value:.4f}' if isinstance(value, float) else str(value)


def aligned(headers: list[str], rows: list[list[object]]) -> str:
    """``rows`` under ``headers`` as left-aligned text columns."""
    lines = [headers, *([cell(value) for value in row] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return '\n'.join('  '.join(text.ljust(width) for text, width in zip(line, widths, strict=True))
                     .rstrip() for line in lines)
