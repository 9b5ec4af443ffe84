"""What each ``launch.py`` mode prints when it has finished: its answer, its files, the next
command. Reads only what the run wrote (metrics.jsonl, evaluation.json), so the same lines can be
printed for any finished run; process 0 prints."""

from __future__ import annotations

import os
from collections.abc import Sequence

from lclmt_jax import console, margins, run_files


def after_training(workdir: str, seconds: float, summary: dict | None) -> None:
    """The final test accuracy and margin statistics, the certified answer when the run was
    evaluated in the same command, the files, and what to run next."""
    records = run_files.read_metrics(workdir)
    if not records:
        return
    workdir = os.path.abspath(workdir)
    lines = [console.training_summary(workdir, records[-1], len(records), seconds)]
    if summary is not None:
        config = run_files.load_config(workdir)
        lines.append(evaluation_lines(workdir, summary, config.evaluation.epsilons))
    lines.append(console.next_command(workdir, evaluated=summary is not None))
    console.say('\n'.join(lines))


def evaluation_lines(workdir: str, summary: dict, epsilons: Sequence[float]) -> str:
    """The evaluation table (certified accuracy per radius and certificate, the attack, broken
    certificates) and where its files are."""
    def reported(names):
        return [name for name in names
                if any(f'certified_{name}@{eps:g}' in summary for eps in epsilons)]

    # float32 certificates; a model without a rounding analysis has exact-arithmetic ones only
    names = margins.CERTIFICATES.names()
    certificates = reported(names) or reported([f'exact_{name}' for name in names])
    out = os.path.join(workdir, 'evaluation')
    files = ', '.join(sorted(os.listdir(out))) if os.path.isdir(out) else ''
    return '\n'.join([console.evaluation_table(summary, list(epsilons), certificates),
                      f'files: {out}/ {files}'])


def after_evaluation(workdir: str, summary: dict) -> None:
    """The evaluation's table and files, and the comparison command."""
    config = run_files.load_config(workdir)
    workdir = os.path.abspath(workdir)
    console.say('\n'.join([evaluation_lines(workdir, summary, config.evaluation.epsilons),
                           console.next_command(workdir, evaluated=True)]))


def after_comparison(outdir: str, runs: Sequence[str], table: list[dict]) -> None:
    """The comparison table it wrote, and its files."""
    config = run_files.load_config(runs[0])
    outdir = os.path.abspath(outdir)
    files = ', '.join(sorted(name for name in os.listdir(outdir)
                             if name.startswith(('comparison', 'fig'))))
    console.say('\n'.join([console.comparison_table(table, config.certificate,
                                                    config.evaluation.epsilons),
                           f'files: {outdir}/ {files}']))
