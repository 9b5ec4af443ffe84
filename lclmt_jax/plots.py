"""The paper's figures, drawn from the files runs leave in their workdirs (PNG + data beside).

Each function takes plain data and a path, so figures can be redrawn from the CSV/JSON alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

Records = Sequence[Mapping[str, float]]


# Readings of "the margin meets the required margin" (Fig. 1a): the training margin statistic
# and the required margin each compares. ``mean``: both averaged over the epoch's examples, as
# the loss is; ``mean_correct``: the margin averaged over correctly classified examples only;
# ``median``: the epoch's median margin; ``sound``: the mean margin against sqrt(2)·L·eps with
# the sound L at the epoch's end instead of the training estimate.
MARGIN_READINGS = {'mean': ('train_margin', 'train_required_margin'),
                   'mean_correct': ('train_margin_correct', 'train_required_margin'),
                   'median': ('train_margin_median', 'train_required_margin'),
                   'sound': ('train_margin', 'required_margin_sound')}


def first_epoch_meeting_bound(records: Records, reading: str = 'mean') -> int | None:
    """First epoch whose training margin meets the required margin under ``reading``
    (``MARGIN_READINGS``); None if none does or the records lack the statistics."""
    margin, required = MARGIN_READINGS[reading]
    for record in records:
        if margin in record and required in record and record[margin] >= record[required]:
            return int(record['epoch'])
    return None


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches='tight')
    plt.close(fig)
    return path


def _legend_outside(ax, count: int) -> None:
    """A legend to the right of the axes, in as many columns as keep it readable, so that no
    curve is hidden under it however many runs are overlaid."""
    ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              ncol=1 + count // 12)


def _scale_for(ax, values: Sequence[float]) -> None:
    """A log y-axis when the positive values span more than two orders of magnitude."""
    values = np.asarray([v for v in values if np.isfinite(v)], np.float64)
    if values.size and values.min() > 0 and values.max() / values.min() > 100:
        ax.set_yscale('log')


def plot_margins(runs: Mapping[str, Records], path: str,
                 untrained_margin: Sequence[str] = ()) -> str:
    """Fig. 1a as small multiples: per run, the mean margin (solid) and the mean required margin
    (dashed) per epoch, each run on its own axes so that no run's scale squashes another's.

    Training-set means over each epoch's steps, with L the training-time estimate; the required
    margin is the run's method's: sqrt(2)·L·eps (global) or eps·K_tv (pairwise). Runs named in
    ``untrained_margin`` (plain training) show only their margin: they train for none.
    """
    columns = min(4, max(1, len(runs)))
    rows = -(-len(runs) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.5 * rows), sharex=True,
                             squeeze=False)
    for ax, (label, records) in zip(axes.flat, runs.items(), strict=False):
        epochs = [r['epoch'] for r in records]
        margin = [r['train_margin'] for r in records]
        ax.plot(epochs, margin, color='C0', label='margin')
        shown = list(margin)
        if label not in untrained_margin:
            required = [r['train_required_margin'] for r in records]
            ax.plot(epochs, required, color='C3', linestyle='--', label='required margin')
            shown += required
        _scale_for(ax, shown)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(runs):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel('epoch')
    for ax in axes[:, 0]:
        ax.set_ylabel('mean over training batches', fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='lower center', ncol=2, fontsize=8,
               bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    return _save(fig, path)


def plot_loss(runs: Mapping[str, Records], path: str) -> str:
    """Fig. 1b: training loss (on inflated logits) per epoch, runs overlaid, legend outside."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, records in runs.items():
        ax.plot([r['epoch'] for r in records], [r['train_loss'] for r in records], label=label)
    ax.set_xlabel('epoch')
    ax.set_ylabel('training loss')
    ax.set_yscale('log')
    ax.set_title('Training loss')
    ax.grid(alpha=0.3)
    _legend_outside(ax, len(runs))
    return _save(fig, path)


def plot_curve_overlay(runs: Mapping[str, tuple[np.ndarray, np.ndarray]], name: str,
                       path: str) -> str:
    """One accuracy-vs-radius curve (e.g. ``attack``: the paper's Fig. 2) of several runs."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (radii, accuracy) in runs.items():
        ax.plot(radii, accuracy, label=label)
    ax.set_xlabel('perturbation norm ‖δ‖₂')
    ax.set_ylabel('accuracy under CW-L2 attack' if name == 'attack' else f'accuracy ({name})')
    ax.set_ylim(0, 1.02)
    ax.set_title('Accuracy vs perturbation size')
    ax.grid(alpha=0.3)
    _legend_outside(ax, len(runs))
    return _save(fig, path)


def plot_accuracy_curves(radii: np.ndarray, curves: Mapping[str, tuple[np.ndarray, str]],
                         title: str, path: str) -> str:
    """One model's curves: certified accuracy (``'lower'`` bounds, dashed) under attacked
    accuracy (``'upper'`` bounds, solid); the band between the best of each holds the truth."""
    fig, ax = plt.subplots(figsize=(6, 4))
    lower = [values for values, bound in curves.values() if bound == 'lower']
    upper = [values for values, bound in curves.values() if bound == 'upper']
    colors = {'lower': iter(['C0', 'C1', 'C2', 'C4']), 'upper': iter(['C3', 'C5', 'C6', 'C7'])}
    for label, (values, bound) in curves.items():
        ax.plot(radii, values, color=next(colors[bound], 'C9'),
                linestyle='--' if bound == 'lower' else '-', label=label)
    if lower and upper:
        ax.fill_between(radii, np.max(lower, axis=0), np.min(upper, axis=0), color='0.85',
                        label='true robust accuracy lies here')
    ax.set_xlabel('L2 radius')
    ax.set_ylabel('accuracy')
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend_outside(ax, len(curves) + 1)
    return _save(fig, path)
