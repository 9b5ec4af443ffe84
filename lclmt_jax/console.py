"""What a run tells its user on the console: lines from process 0, errors as one line.

Every message of the library goes through here, so a multi-process job prints each line once
and every failure reads the same way (``error: <one line>``).
"""

from __future__ import annotations

import os
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


def evaluation_table(summary: dict, epsilons: list[float], certificates: list[str]) -> str:
    """An evaluation's answer, one row per radius: certified accuracy with each certificate (a
    sound lower bound on robust accuracy) and the accuracy under the attack (an empirical upper
    bound), with the clean accuracy, the sound L and the broken-certificate count. A name
    ``exact_<certificate>`` reads the exact-arithmetic figures (models without a float32
    rounding analysis)."""
    headers = ['radius'] + [f'certified ({name.removeprefix("exact_")}, exact arithmetic)'
                            if name.startswith('exact_') else f'certified ({name})'
                            for name in certificates]
    keys = [[f'certified_{name}@{eps:g}' for name in certificates] for eps in epsilons]
    if any(f'attack@{eps:g}' in summary for eps in epsilons):
        headers.append('CW-L2 attack')
        keys = [row + [f'attack@{eps:g}'] for row, eps in zip(keys, epsilons, strict=True)]
    rows = [[f'{eps:g}', *(summary.get(key) for key in row)]
            for eps, row in zip(epsilons, keys, strict=True)]
    lines = [f'clean accuracy {cell(summary.get("clean_accuracy"))} on '
             f'{summary.get("num_examples")} test points; sound L '
             f'{cell(summary.get("lipschitz_sound"))}', aligned(headers, rows)]
    if 'broken_certificates' in summary:
        lines.append(f'broken certificates: {summary["broken_certificates"]} (must be 0; the '
                     f'attack covered {summary.get("attack_examples")} points)')
    return '\n'.join(lines)


def training_summary(workdir: str, record: dict, epochs: int, seconds: float) -> str:
    """What a finished training run reached, where its files are, and what to run next."""
    return '\n'.join([
        f'trained {epochs} epochs in {seconds:.0f} s: test accuracy {cell(record["test_accuracy"])}'
        f' (train {cell(record["train_accuracy"])}), margin met by '
        f'{cell(record["test_bound_met"])} of the test points with the training L '
        f'{record["test_lipschitz"]:.4g} (sound L {cell(record.get("lipschitz_sound"))})',
        f'files: {workdir}/ metrics.jsonl, tensorboard/, checkpoints/, config.json',
    ])


def next_command(workdir: str, evaluated: bool) -> str:
    """The command that turns a run into its answer: certificates, or a comparison."""
    if evaluated:
        return ('next: python launch.py --mode=compare --workdir=OUT '
                f'--runs={workdir},OTHER_RUN   (figures and a table beside other runs)')
    return (f'next: python launch.py --mode=evaluate --workdir={workdir}   '
            '(sound certificates, CW-L2 attack, figures)')


def comparison_table(table: list[dict], certificate: str, epsilons: list[float]) -> str:
    """The headline columns of ``evaluate.compare_runs``'s table, one row per run: epochs,
    accuracies, certified accuracy with ``certificate`` at ``epsilons``, the attack at the same
    radii when attacked, and the first epoch whose mean margin met the required one."""
    certified = [f'certified_{certificate}@{eps:g}' for eps in epsilons]
    attacked = [f'attack@{eps:g}' for eps in epsilons
                if any(f'attack@{eps:g}' in row for row in table)]
    columns = ['run', 'epochs', 'train_accuracy', 'test_accuracy', *certified, *attacked,
               'first_epoch_meeting_bound']
    headers = ['workdir', 'run', 'epochs', 'train_acc', 'test_acc',
               *(f'cert@{key.split("@")[1]}' for key in certified),
               *(f'CW@{key.split("@")[1]}' for key in attacked), 'bound_met_at']
    rows = [[os.path.basename(os.path.normpath(row['workdir'])),
             *(row.get(column) for column in columns)] for row in table]
    return aligned(headers, rows)
