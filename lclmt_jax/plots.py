"""The paper's figures, drawn from the files runs leave in their workdirs (PNG + data beside).

Each function takes plain data and a path, so figures can be redrawn from the CSV/JSON alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

Records = Sequence[Mapping[str, float]]
# Accuracies at or below this are drawn as zero on a [0, 1] axis (2 pixels of a 4-inch figure):
# the radius axis of an accuracy curve ends where every curve has fallen to it.
VISIBLE_ACCURACY = 0.005


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


class CurveText(NamedTuple):
    """How a figure of one accuracy-vs-radius curve names what it shows."""

    title: str
    xlabel: str
    ylabel: str


def curve_text(name: str) -> CurveText:
    """The title and axis labels of curve ``name``, a column of an evaluation's ``curves.csv``
    named as the evaluators name their curves: ``certified_<certificate>`` (``certified_exact_
    <certificate>`` for a model without a float32 analysis) is a certificate, a sound lower bound
    on robust accuracy at each radius; any other is an attack (``attack``: CW-L2), an upper
    bound at each perturbation norm."""
    if name.startswith('certified_'):
        certificate = name.removeprefix('certified_')
        what = (f'{certificate.removeprefix("exact_")} certificate, exact arithmetic'
                if certificate.startswith('exact_') else f'{certificate} certificate')
        return CurveText(f'Certified accuracy ({what}): a sound lower bound',
                         'certified L2 radius', 'certified accuracy')
    attack = 'the CW-L2 attack' if name == 'attack' else f'the attack {name!r}'
    return CurveText(f'Accuracy under {attack}: an upper bound', 'perturbation norm ‖δ‖₂',
                     f'accuracy under {attack}')


def figure_subject(datasets: Sequence[str], models: Sequence[str], method: str | None = None,
                   epsilon: float | None = None) -> str:
    """What a figure holds results of, for its title: the model and the dataset (each distinct
    value once when the runs differ: ``cnn / mlp on mnist``), and for one run its training
    method, with the ε it trains for (``mlp on embedded_mnist, trained with LC-LMT-pw at
    ε = 0.2118``)."""
    def distinct(values: Sequence[str]) -> str:
        return ' / '.join(dict.fromkeys(values))

    text = f'{distinct(models)} on {distinct(datasets)}'
    if method:
        text += f', trained with {method}' + ('' if epsilon is None else f' at ε = {epsilon:.4g}')
    return text


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


def _line(ax, x: Sequence[float], y: Sequence[float], **style) -> None:
    """``y`` against ``x``; a lone point as a marker, since a line through one point draws
    nothing (a run of one epoch)."""
    ax.plot(x, y, **({'marker': 'o'} if len(x) < 2 else {}), **style)


def _series(records: Records, key: str) -> np.ndarray:
    """One metric over the records, NaN where a record lacks it (older runs, plain training)."""
    return np.array([np.nan if record.get(key) is None else record[key] for record in records],
                    np.float64)


def _scale_for(ax, values: Sequence[float]) -> bool:
    """A log y-axis when the positive values span more than two orders of magnitude; whether it
    is one."""
    values = np.asarray([v for v in values if np.isfinite(v)], np.float64)
    if values.size and values.min() > 0 and values.max() / values.min() > 100:
        ax.set_yscale('log')
        return True
    return False


def _epoch_axis(ax, runs: Mapping[str, Records]) -> None:
    """An x-axis of whole epochs, from the first to the last of ``runs`` (half an epoch beyond
    each end), so that one epoch is an axis at 1 and not ticks at 0.96, 0.98, ..."""
    last = max((record['epoch'] for records in runs.values() for record in records), default=1)
    ax.set_xlim(0.5, last + 0.5)
    ax.set_xlabel('epoch')
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True, min_n_ticks=1))


def _radius_limit(curves: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """Where the radius axis ends: 5% past the largest radius at which any curve is still above
    ``VISIBLE_ACCURACY``, so that curves reaching zero early are not squeezed into a corner by a
    flat tail (an attack's grid runs to its largest norm, far beyond any certified radius); the
    grids' end when no curve is above it."""
    reached, end = 0.0, 0.0
    for radii, accuracy in curves:
        radii, accuracy = np.asarray(radii, np.float64), np.asarray(accuracy, np.float64)
        end = max(end, float(np.nanmax(radii, initial=0.0)))
        positive = radii[accuracy > VISIBLE_ACCURACY]
        reached = max(reached, float(positive.max(initial=0.0)))
    return 1.05 * reached if reached > 0 else (end or 1.0)


def plot_margins(runs: Mapping[str, Records], path: str,
                 untrained_margin: Sequence[str] = (), subject: str = '') -> str:
    """Fig. 1a as small multiples: per run, the mean margin (solid) and the mean required margin
    (dashed) per epoch, each run on its own axes so that no run's scale squashes another's; a
    panel whose values span more than two orders of magnitude is drawn on a log scale and says
    so in its title.

    Training-set means over each epoch's steps, with L the training-time estimate; the required
    margin is the run's method's: sqrt(2)·L·eps (global) or eps·K_tv (pairwise). Runs named in
    ``untrained_margin`` (plain training) show only their margin: they train for none.
    ``subject``: what the runs are (``figure_subject``), under the title.
    """
    columns = min(4, max(1, len(runs)))
    rows = -(-len(runs) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.5 * rows + 0.5),
                             sharex=True, squeeze=False)
    for ax, (label, records) in zip(axes.flat, runs.items(), strict=False):
        epochs = _series(records, 'epoch')
        margin = _series(records, 'train_margin')
        _line(ax, epochs, margin, color='C0')
        shown = list(margin)
        if label not in untrained_margin:
            required = _series(records, 'train_required_margin')
            _line(ax, epochs, required, color='C3', linestyle='--')
            shown += list(required)
        log = _scale_for(ax, shown)
        ax.set_title(f'{label} (log scale)' if log else label, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(runs):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        _epoch_axis(ax, runs)
    for ax in axes[:, 0]:
        ax.set_ylabel('mean over training batches', fontsize=8)
    fig.suptitle('Training margin (blue, solid) and required margin (red, dashed), mean per epoch'
                 + (f'\n{subject}' if subject else ''), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_loss(runs: Mapping[str, Records], path: str, subject: str = '') -> str:
    """Fig. 1b: training loss (on inflated logits) per epoch, runs overlaid, legend outside."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, records in runs.items():
        _line(ax, _series(records, 'epoch'), _series(records, 'train_loss'), label=label)
    _epoch_axis(ax, runs)
    ax.set_ylabel('training loss (log scale)')
    ax.set_yscale('log')
    ax.set_title('Training loss per epoch (on the inflated logits)'
                 + (f'\n{subject}' if subject else ''), fontsize=10)
    ax.grid(alpha=0.3)
    _legend_outside(ax, len(runs))
    return _save(fig, path)


def plot_curve_overlay(runs: Mapping[str, tuple[np.ndarray, np.ndarray]], name: str,
                       path: str, subject: str = '') -> str:
    """One accuracy-vs-radius curve of several runs (``attack``: the paper's Fig. 2), titled and
    labelled by what the curve is (``curve_text``), the radius axis cut where every curve is 0."""
    text = curve_text(name)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (radii, accuracy) in runs.items():
        _line(ax, radii, accuracy, label=label)
    ax.set_xlabel(text.xlabel)
    ax.set_ylabel(text.ylabel)
    ax.set_xlim(0, _radius_limit(runs.values()))
    ax.set_ylim(0, 1.02)
    ax.set_title(text.title + (f'\n{subject}' if subject else ''), fontsize=10)
    ax.grid(alpha=0.3)
    _legend_outside(ax, len(runs))
    return _save(fig, path)


def plot_accuracy_curves(radii: np.ndarray, curves: Mapping[str, tuple[np.ndarray, str]],
                         subject: str, path: str) -> str:
    """One model's curves: certified accuracy (``'lower'`` bounds, dashed) under attacked
    accuracy (``'upper'`` bounds, solid); the band between the best of each holds the truth.
    The title says which of the two the figure has, above ``subject`` (``figure_subject``)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    lower = [values for values, bound in curves.values() if bound == 'lower']
    upper = [values for values, bound in curves.values() if bound == 'upper']
    colors = {'lower': iter(['C0', 'C1', 'C2', 'C4']), 'upper': iter(['C3', 'C5', 'C6', 'C7'])}
    for label, (values, bound) in curves.items():
        _line(ax, radii, values, color=next(colors[bound], 'C9'),
              linestyle='--' if bound == 'lower' else '-', label=label)
    if lower and upper:
        ax.fill_between(radii, np.max(lower, axis=0), np.min(upper, axis=0), color='0.85',
                        label='true robust accuracy lies here')
        title = ('Certified accuracy (dashed, lower bounds) and accuracy under attack '
                 '(solid, upper bounds)')
    else:
        title = 'Certified accuracy: sound lower bounds' if lower else \
            'Accuracy under attack: upper bounds'
    ax.set_xlabel('L2 radius')
    ax.set_ylabel('accuracy')
    ax.set_xlim(0, _radius_limit((radii, values) for values, _ in curves.values()))
    ax.set_ylim(0, 1.02)
    ax.set_title(f'{title}\n{subject}' if subject else title, fontsize=10)
    ax.grid(alpha=0.3)
    _legend_outside(ax, len(curves) + 1)
    return _save(fig, path)


def plot_certified_vs_time(runs: Mapping[str, tuple[float, Mapping[float, float]]], path: str,
                           subject: str = '') -> str:
    """Certified accuracy against training time: one marker per run and radius, the radii of a
    run joined by a vertical dotted line, each run named beside its top marker. ``runs`` maps a
    name to (training seconds, {radius: certified accuracy}); radii without a figure are left
    out. What a fixed budget buys: up and to the left is better."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    radii = sorted({radius for _, accuracies in runs.values() for radius in accuracies})
    markers = dict(zip(radii, 'os^Dvp*', strict=False))
    for index, (name, (seconds, accuracies)) in enumerate(runs.items()):
        minutes = seconds / 60
        shown = {r: a for r, a in accuracies.items() if a is not None and np.isfinite(a)}
        if not shown:
            continue
        ax.plot([minutes] * len(shown), list(shown.values()), ':', color=f'C{index % 10}')
        for radius, accuracy in shown.items():
            ax.plot(minutes, accuracy, markers.get(radius, 'o'), color=f'C{index % 10}')
        ax.annotate(name, (minutes, max(shown.values())), textcoords='offset points',
                    xytext=(4, 3 + 9 * (index % 2)), fontsize=7)  # neighbours apart
    for radius in radii:
        ax.plot([], [], markers.get(radius, 'o'), color='0.4', label=f'certified @ {radius:.4g}')
    ax.set_xlabel('training time (minutes)')
    ax.set_ylabel('certified accuracy')
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    title = 'Certified accuracy against training time'
    ax.set_title(f'{title}\n{subject}' if subject else title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc='lower left')  # names run out to the right; this corner is free
    return _save(fig, path)
