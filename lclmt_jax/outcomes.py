"""What each ``launch.py`` mode prints when it has finished: its answer, its files, the next
command. Reads only what the run wrote (metrics.jsonl, evaluation.json), so the same lines can be
printed for any finished run; process 0 prints.

An evaluation's table holds what its evaluators declared (``evaluators.Result.table``, saved as
``evaluation.json``'s ``table``): the figures of the evaluation on one line, then one row per
radius of the columns keyed ``...@{eps}``. Nothing here knows which evaluator computed what.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from lclmt_jax import console, paths, run_files
from lclmt_jax.console import aligned, cell

SUGGESTED_ATTACK_EXAMPLES = 200  # the next: hint's sample: minutes of CW-L2, not hours, on a CPU
PIXEL_LEVELS = 255  # radii that are whole pixel levels print as k/255


def radius_text(radius: float) -> str:
    """A radius as printed: ``0.3``, or ``36/255`` for a whole number of pixel levels that has
    no short decimal form (36/255 = 0.141176...)."""
    short = f'{radius:g}'
    levels = radius * PIXEL_LEVELS
    if len(short.replace('0.', '', 1)) > 4 and levels >= 1 and abs(levels - round(levels)) < 1e-6:
        return f'{round(levels)}/{PIXEL_LEVELS}'
    return short


def epochs_text(count: int) -> str:
    """``1 epoch``, ``3 epochs``."""
    return f'{count} epoch' if count == 1 else f'{count} epochs'


def _declared(summary: dict) -> list[tuple[str, str]]:
    """The (label, key) columns the evaluators declared, from an evaluation summary."""
    return [(label, key) for label, key in summary.get('table', [])]


def evaluation_table(summary: dict, epsilons: Sequence[float]) -> str:
    """An evaluation's answer: the number of test points and the evaluators' figures on one
    line, then one row per radius of their per-radius columns (certified accuracy, a sound
    lower bound on robust accuracy; the accuracy under an attack, an empirical upper bound)."""
    columns = _declared(summary)
    figures = [f'{label} {cell(summary.get(key))}' for label, key in columns
               if '{eps}' not in key and key in summary]
    per_radius = [(label, key) for label, key in columns if '{eps}' in key]
    rows = [[radius_text(eps), *(summary.get(key.format(eps=f'{eps:g}'))
                                 for _, key in per_radius)] for eps in sorted(epsilons)]
    points = f'{summary.get("num_examples")} test points'
    return '\n'.join([f'{points}: {"; ".join(figures)}' if figures else points,
                      aligned(['radius', *(label for label, _ in per_radius)], rows)])


def training_summary(workdir: str, record: dict, epochs: int, seconds: float) -> str:
    """What a finished training run reached and where its files are."""
    return '\n'.join([
        f'trained {epochs_text(epochs)} in {seconds:.0f} s: test accuracy '
        f'{cell(record["test_accuracy"])}'
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
    return (f'next: python launch.py --mode=evaluate --workdir={workdir} '
            f'--attack_examples={SUGGESTED_ATTACK_EXAMPLES}   (sound certificates of every test '
            f'point, CW-L2 on a stratified sample of {SUGGESTED_ATTACK_EXAMPLES}, figures)')


def comparison_table(table: list[dict], certificate: str, epsilons: list[float]) -> str:
    """The headline columns of ``assessment.compare_runs``'s table, one row per run: epochs,
    accuracies, certified accuracy with ``certificate`` at ``epsilons``, the attack at the same
    radii when attacked, and the first epoch whose mean margin met the required one."""
    epsilons = sorted(epsilons)
    certified = [f'certified_{certificate}@{eps:g}' for eps in epsilons]
    attacked = [f'attack@{eps:g}' for eps in epsilons
                if any(f'attack@{eps:g}' in row for row in table)]
    columns = ['run', 'epochs', 'train_accuracy', 'test_accuracy', *certified, *attacked,
               'first_epoch_meeting_bound']
    headers = ['workdir', 'run', 'epochs', 'train_acc', 'test_acc',
               *(f'cert@{radius_text(eps)}' for eps in epsilons),
               *(f'CW@{radius_text(float(key.split("@")[1]))}' for key in attacked),
               'bound_met_at']
    rows = [[os.path.basename(os.path.normpath(row['workdir'])),
             *(row.get(column) for column in columns)] for row in table]
    return aligned(headers, rows)


def after_training(workdir: str, evaluating: bool = False) -> None:
    """What the run reached (its epochs and their summed wall time, the final test accuracy and
    margin statistics) and its files; then the next command, unless an evaluation follows in the
    same command (its own lines end with one)."""
    records = run_files.read_metrics(workdir)
    if not records:
        return
    workdir = os.path.abspath(workdir)
    seconds = sum(record.get('epoch_seconds', 0.0) for record in records)
    lines = [training_summary(workdir, records[-1], len(records), seconds)]
    if not evaluating:
        lines.append(next_command(workdir, evaluated=False))
    console.say('\n'.join(lines))


def evaluation_lines(workdir: str, summary: dict, epsilons: Sequence[float]) -> str:
    """The evaluation table and where its files are."""
    out = paths.confined(workdir, 'evaluation')
    files = ', '.join(sorted(os.listdir(out))) if os.path.isdir(out) else ''
    return '\n'.join([evaluation_table(summary, epsilons), f'files: {out}/ {files}'])


def after_evaluation(workdir: str, summary: dict) -> None:
    """The evaluation's table and files, and the comparison command."""
    config = run_files.load_config(workdir)
    workdir = os.path.abspath(workdir)
    console.say('\n'.join([evaluation_lines(workdir, summary, config.evaluation.epsilons),
                           next_command(workdir, evaluated=True)]))


def after_comparison(outdir: str, runs: Sequence[str], table: list[dict]) -> None:
    """The comparison table it wrote, and its files."""
    config = run_files.load_config(runs[0])
    outdir = os.path.abspath(outdir)
    files = ', '.join(sorted(name for name in os.listdir(outdir)
                             if name.startswith(('comparison', 'fig'))))
    console.say('\n'.join([comparison_table(table, config.certificate,
                                            config.evaluation.epsilons),
                           f'files: {outdir}/ {files}']))
