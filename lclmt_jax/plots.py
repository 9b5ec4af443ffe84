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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_margins(runs: Mapping[str, Records], path: str) -> str:
    """Fig. 1a: mean margin (solid) and mean required margin (dashed) per epoch, runs overlaid.

    Training-set means over each epoch's steps, with L the training-time estimate; the required
    margin is the run's method's: sqrt(2)·L·eps (global) or eps·K_tv (pairwise).
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for index, (label, records) in enumerate(runs.items()):
        color = f'C{index}'
        epochs = [r['epoch'] for r in records]
        ax.plot(epochs, [r['train_margin'] for r in records], color=color, label=f'{label} margin')
        ax.plot(epochs, [r['train_required_margin'] for r in records], color=color,
                linestyle='--', label=f'{label} required margin')
    ax.set_xlabel('epoch')
    ax.set_ylabel('mean over training batches')
    ax.set_title('Margin vs required margin')
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_loss(runs: Mapping[str, Records], path: str) -> str:
    """Fig. 1b: training loss (on inflated logits) per epoch, runs overlaid."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, records in runs.items():
        ax.plot([r['epoch'] for r in records], [r['train_loss'] for r in records], label=label)
    ax.set_xlabel('epoch')
    ax.set_ylabel('training loss')
    ax.set_yscale('log')
    ax.set_title('Training loss')
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
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
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
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
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
