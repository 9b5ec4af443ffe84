"""``--mode=compare`` (``comparison.compare_runs``): every run file checked before anything is
written, standard JSON out, a readable ``comparison.md`` and figures that say what they show.

The runs here are written file by file with the library's own writers (config.json, run.json,
metrics.jsonl, evaluation/), as training and evaluation leave them: a comparison reads nothing
else, and ``test_evaluate`` compares a really trained and evaluated run.
"""

import csv
import json
import os
import shutil

import chex
import launching
import matplotlib.pyplot as plt
import numpy as np
import pytest

from lclmt_jax import comparison, config_schema, configs, plots, run_files, writers

pytestmark = pytest.mark.fast

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, 'tests', 'fixtures')
EPSILONS = (0.1, 0.3, 0.5, 1.0, 1.58)
# An evaluation's radius grid runs to the attack's largest norm (8 here); the certificates reach
# zero accuracy far earlier (2.1), the attack at 6.3.
GRID = np.linspace(0.0, 8.0, 201)
CERTIFIED_ZERO, ATTACK_ZERO = 2.1, 6.3


def _write_run(workdir, method='lc_lmt_pairwise', epsilon=1.0, epochs=3, evaluated=True):
    """A finished run's files: ``epochs`` metrics records, and if ``evaluated`` an evaluation
    with both certificates and the attack (``GRID``)."""
    config = configs.mnist_variant(config_schema.default_config(), 'embedded')
    config.method, config.epsilon, config.num_epochs = method, epsilon, epochs
    run_files.save_json(workdir, run_files.CONFIG_FILE, run_files.config_as_dict(config))
    run_files.save_json(workdir, run_files.RUN_INFO_FILE, {
        'dataset': 'embedded_mnist', 'input_shape': [28, 28, 1], 'num_classes': 10})
    metrics = writers.JsonlWriter(os.path.join(workdir, run_files.METRICS_FILE))
    for epoch in range(1, epochs + 1):  # margins spanning 3 orders of magnitude: a log panel
        metrics.write_scalars(epoch, {
            'train_loss': 2.0 / epoch, 'train_accuracy': 0.5 + 0.1 * epoch,
            'test_accuracy': 0.45 + 0.1 * epoch, 'train_margin': 10.0 ** (epoch - 3),
            'train_required_margin': 1.5, 'epoch_seconds': 0.25})
    metrics.flush()
    if not evaluated:
        return workdir
    out = os.path.join(workdir, 'evaluation')
    os.makedirs(out)
    summary = {'workdir': workdir, 'epoch': epochs, 'label': 'x', 'certificate': 'pairwise',
               'num_examples': 1000, 'clean_accuracy': 0.8, 'lipschitz_sound': 2.5,
               'attack_examples': 1000, 'broken_certificates': 0}
    for k, eps in enumerate(EPSILONS):
        summary.update({f'certified_{name}@{eps:g}': 0.7 - 0.1 * k
                        for name in ('pairwise', 'global')})
        summary[f'attack@{eps:g}'] = 0.75 - 0.1 * k
    with open(os.path.join(out, 'evaluation.json'), 'w') as f:
        json.dump(summary, f)
    certified = np.clip(0.8 * (1 - GRID / CERTIFIED_ZERO), 0, None)
    attack = np.clip(0.8 * (1 - GRID / ATTACK_ZERO), 0, None)
    columns = np.stack([GRID, certified, 0.5 * certified, attack], axis=1)
    np.savetxt(os.path.join(out, 'curves.csv'), columns, fmt='%.6g', delimiter=',',
               comments='', header='radius,certified_pairwise,certified_global,attack')
    return workdir


@pytest.fixture
def runs(tmp_path):
    """LC-LMT and plain runs of 3 epochs, evaluated, and an LC-LMT run of one epoch, not."""
    return [_write_run(str(tmp_path / 'lc')), _write_run(str(tmp_path / 'plain'), 'plain'),
            _write_run(str(tmp_path / 'one'), epochs=1, evaluated=False)]


@pytest.fixture
def drawn(monkeypatch):
    """The figures a comparison draws, by file name, kept open instead of saved."""
    figures = {}

    def keep(fig, path):
        figures[os.path.basename(path)] = fig
        return path

    monkeypatch.setattr(plots, '_save', keep)
    yield figures
    for fig in figures.values():
        plt.close(fig)


def _strict_json(path):
    """``path`` parsed as standard JSON: NaN or Infinity in it fails."""
    def refuse(constant):
        raise ValueError(f'{path} holds {constant}, which is not JSON')

    with open(path) as f:
        return json.load(f, parse_constant=refuse)


def _write(path, text):
    with open(path, 'w') as f:
        f.write(text)


def _edit(path, old, new):
    with open(path) as f:
        text = f.read()
    assert old in text, (old, path)
    with open(path, 'w') as f:
        f.write(text.replace(old, new, 1))


def _set_config(workdir, key, value):
    path = os.path.join(workdir, run_files.CONFIG_FILE)
    with open(path) as f:
        config = json.load(f)
    config[key] = value
    with open(path, 'w') as f:
        json.dump(config, f)


# (file to break, how, what the one error line says)
BAD_FILES = [
    ('config.json: a list for a string', lambda w: _set_config(w, 'method', ['x']),
     r"config\.json: Could not override field 'method'.*\['x'\]"),
    ('config.json: an unknown method', lambda w: _set_config(w, 'method', 'lmtt'),
     r"config\.json: unknown config\.method 'lmtt'; allowed: plain"),
    ('config.json: an infinite epsilon', lambda w: _set_config(w, 'epsilon', 1e400),
     r'config\.json: epsilon must be a finite number >= 0, got inf'),
    ('config.json: radii as text', lambda w: _set_config(w, 'evaluation', {'epsilons': 'abc'}),
     r"config\.json: Could not override field 'epsilons'"),
    ('config.json: not an object', lambda w: _edit(os.path.join(w, 'config.json'), '{', '[{'),
     r'config\.json is not valid JSON'),
    ('run.json: a number as the dataset', lambda w: _edit(
        os.path.join(w, 'run.json'), '"embedded_mnist"', '5'), r'run\.json: "dataset" is 5'),
    ('metrics.jsonl: an epoch of 1e400', lambda w: _edit(
        os.path.join(w, 'metrics.jsonl'), '"epoch": 2', '"epoch": 1e400'),
     r'metrics\.jsonl: record 2 has "epoch": inf, not an epoch'),
    ('metrics.jsonl: an epoch of 2.5', lambda w: _edit(
        os.path.join(w, 'metrics.jsonl'), '"epoch": 2', '"epoch": 2.5'),
     r'metrics\.jsonl: record 2 has "epoch": 2\.5, not an epoch'),
    ('metrics.jsonl: text for a number', lambda w: _edit(
        os.path.join(w, 'metrics.jsonl'), '"train_loss": 1.0', '"train_loss": "big"'),
     r'metrics\.jsonl: record 2 has "train_loss": \'big\', not a number'),
    ('metrics.jsonl: half a line', lambda w: _edit(
        os.path.join(w, 'metrics.jsonl'), '"epoch": 2,', '"epoch": 2'),
     r'metrics\.jsonl, line 2: not a metrics record'),
    ('evaluation.json: text at a radius', lambda w: _edit(
        os.path.join(w, 'evaluation', 'evaluation.json'), '"attack@0.3": 0.65',
        '"attack@0.3": "high"'), r'evaluation\.json: "attack@0\.3" is \'high\', not a number'),
    ('curves.csv: text for a number', lambda w: _edit(
        os.path.join(w, 'evaluation', 'curves.csv'), '\n0.04', '\nx0.04'),
     r'curves\.csv, line 3: "radius" is \'x0\.04.*\', not a number'),
    ('curves.csv: a short row', lambda w: _edit(
        os.path.join(w, 'evaluation', 'curves.csv'), '\n8,0,0,0', '\n8,0,0,0\n9,0.5'),
     r'curves\.csv, line 203: 2 values for 4 columns'),
    ('curves.csv: no rows', lambda w: _write(os.path.join(w, 'evaluation', 'curves.csv'),
                                             'radius,attack\n'),
     r'curves\.csv: needs a "radius" column and at least one row'),
    ('no config.json', lambda w: os.remove(os.path.join(w, 'config.json')),
     r'config\.json not found: is .* the workdir of a training run'),
]


@pytest.mark.parametrize('what, damage, message', BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_a_malformed_run_file_is_one_error_naming_it_and_nothing_is_created(
        runs, tmp_path, what, damage, message):
    damage(runs[0])
    outdir = tmp_path / 'out' / 'figures'
    with pytest.raises((ValueError, OSError), match=message) as error:
        comparison.compare_runs(runs, str(outdir))
    assert '\n' not in str(error.value)
    assert str(error.value).startswith(runs[0]) or 'not found' in str(error.value)
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('damage, message', [
    (lambda w: _set_config(w, 'method', ['x']), "config.json: Could not override field 'method'"),
    (lambda w: _edit(os.path.join(w, 'metrics.jsonl'), '"epoch": 2', '"epoch": 1e400'),
     'metrics.jsonl: record 2 has "epoch": inf, not an epoch'),
], ids=['config types', 'infinite epoch'])
def test_launch_compare_refuses_a_malformed_run_in_one_line(runs, tmp_path, damage, message):
    damage(runs[0])
    outdir = tmp_path / 'figures'
    result = launching.launch('--mode=compare', f'--workdir={outdir}', f'--runs={",".join(runs)}')
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'error: {runs[0]}/{message}'), lines
    assert result.stdout == '' and not outdir.exists()


def test_non_finite_figures_are_written_as_null(runs, tmp_path):
    path = os.path.join(runs[0], 'evaluation', 'evaluation.json')
    _edit(path, '"lipschitz_sound": 2.5', '"lipschitz_sound": 1e999')
    _edit(path, '"clean_accuracy": 0.8', '"clean_accuracy": NaN')
    table = comparison.compare_runs(runs, str(tmp_path / 'out'))
    written = _strict_json(tmp_path / 'out' / 'comparison.json')
    assert written[0]['lipschitz_sound'] is None and written[0]['clean_accuracy'] is None
    assert written[1]['lipschitz_sound'] == 2.5  # the finite ones stay
    assert table == written
    with open(tmp_path / 'out' / 'comparison.csv') as f:
        rows = list(csv.DictReader(f))
    assert (rows[0]['lipschitz_sound'], rows[0]['clean_accuracy']) == ('', '')
    with open(tmp_path / 'out' / 'comparison.md') as f:
        row = next(line for line in f if line.startswith('| lipschitz_sound |'))
    assert row.split('|')[2].strip() == '' and row.split('|')[3].strip() == '2.5'


def test_standard_json_replaces_every_non_finite_number():
    value = {'a': float('inf'), 'b': [1.5, float('nan'), {'c': -float('inf')}], 'd': (2, 'x')}
    assert writers.standard_json(value) == {'a': None, 'b': [1.5, None, {'c': None}],
                                            'd': [2, 'x']}


def test_legacy_runs_are_compared(tmp_path):
    legacy = []
    for name in ('run_151ddc4', 'cnn_151ddc4'):
        legacy.append(str(tmp_path / name))
        shutil.copytree(os.path.join(FIXTURES, name), legacy[-1])
    table = comparison.compare_runs(legacy, str(tmp_path / 'out'))
    assert [row['epochs'] for row in table] == [2, 2]
    assert (tmp_path / 'out' / 'fig1a_margins.png').stat().st_size > 0


def test_comparison_md_has_a_headline_table_and_the_rest_transposed(runs, tmp_path):
    table = comparison.compare_runs(runs, str(tmp_path / 'out'))
    with open(tmp_path / 'out' / 'comparison.md') as f:
        text = f.read()
    headline, rest = text.split('## Every other figure')
    header = next(line for line in headline.splitlines() if line.startswith('| workdir |'))
    columns = [cell.strip() for cell in header.strip('|').split('|')]
    assert columns == ['workdir', 'run', 'epochs', 'train acc', 'test acc', 'test points',
                       *(f'certified@{eps:g}' for eps in EPSILONS), 'attacked points',
                       *(f'CW-L2@{eps:g}' for eps in EPSILONS), 'bound met at epoch']
    rows = [line for line in headline.splitlines() if line.startswith('| ') and line != header]
    assert [row.split('|')[1].strip() for row in rows] == ['lc', 'plain', 'one']
    lc = [cell.strip() for cell in rows[0].strip('|').split('|')]
    assert lc[columns.index('certified@0.3')] == f'{table[0]["certified_pairwise@0.3"]:.4g}'
    transposed = [line for line in rest.splitlines() if line.startswith('| ')]
    assert transposed[0].count('|') == len(runs) + 2  # a row per figure, a column per run
    shown = {line.split('|')[1].strip() for line in transposed[1:]}
    hidden = set(comparison.headline_columns(table, 'pairwise', EPSILONS)) | {'workdir', 'method'}
    assert shown | hidden == set(table[0]) | set(table[1])
    assert 'mlp on embedded_mnist' in text.splitlines()[0]


def test_figures_name_what_they_show_and_fit_their_curves(runs, tmp_path, drawn):
    table = comparison.compare_runs(runs, str(tmp_path / 'out'))
    assert set(drawn) == {'fig1a_margins.png', 'fig1b_loss.png', 'fig2_attack.png',
                          'fig2_certified_pairwise.png', 'fig2_certified_global.png',
                          'certified_vs_time.png'}
    timed = drawn['certified_vs_time.png'].axes[0]
    points = {(float(line.get_xdata()[0]), float(line.get_ydata()[0]))
              for line in timed.get_lines() if len(line.get_xdata()) == 1}
    for row in table:  # a marker at (minutes of training, certified accuracy) per radius
        for eps in EPSILONS:
            accuracy = row.get(f'certified_pairwise@{eps:g}')
            if accuracy is not None:
                assert any(abs(x - row['train_seconds'] / 60) < 1e-9 and abs(y - accuracy) < 1e-9
                           for x, y in points)
    assert timed.get_xlabel() == 'training time (minutes)'
    titles = {name: ' '.join([fig.get_suptitle(), *(ax.get_title() for ax in fig.axes)])
              for name, fig in drawn.items()}
    for name, title in titles.items():
        assert 'mlp on embedded_mnist' in title, name  # the model and the dataset

    certified = drawn['fig2_certified_pairwise.png'].axes[0]
    assert 'Certified accuracy (pairwise certificate)' in certified.get_title()
    assert (certified.get_xlabel(), certified.get_ylabel()) == ('certified L2 radius',
                                                               'certified accuracy')
    attack = drawn['fig2_attack.png'].axes[0]
    assert 'CW-L2 attack' in attack.get_title() and 'perturbation norm' in attack.get_xlabel()
    # each radius axis ends just past its last visible accuracy, not at the grid's end (8)
    last_certified = GRID[0.8 * (1 - GRID / CERTIFIED_ZERO) > plots.VISIBLE_ACCURACY].max()
    assert certified.get_xlim()[1] == pytest.approx(1.05 * last_certified)
    assert CERTIFIED_ZERO < attack.get_xlim()[1] < GRID[-1]
    assert 'Certified' not in attack.get_title() and 'attack' not in certified.get_title()
    for name in ('fig2_attack.png', 'fig2_certified_pairwise.png'):  # no run label as a title
        assert 'LC-LMT-pw(' not in titles[name]

    margins = drawn['fig1a_margins.png']
    for ax in margins.axes:
        if ax.get_visible():
            assert ('(log scale)' in ax.get_title()) == (ax.get_yscale() == 'log')
    assert any(ax.get_yscale() == 'log' for ax in margins.axes)  # the margins span 10^-2..1
    one_epoch = next(ax for ax in margins.axes if ax.get_title().startswith('LC-LMT-pw(1.0) ['))
    for line in one_epoch.get_lines():  # a lone point is drawn as a marker, not as no line
        chex.assert_shape(line.get_xdata(), (1,))
        assert line.get_marker() == 'o'
    loss = drawn['fig1b_loss.png'].axes[0]
    assert 'log scale' in loss.get_ylabel()
    assert [line.get_marker() for line in loss.get_lines()] == ['None', 'None', 'o']


@pytest.mark.parametrize('bounds, says, not_says', [
    (('lower', 'lower'), 'Certified accuracy: sound lower bounds', 'attack'),
    (('upper',), 'Accuracy under attack: upper bounds', 'Certified'),
    (('lower', 'upper'), 'Certified accuracy (dashed, lower bounds) and accuracy under attack',
     None),
])
def test_one_runs_figure_says_whether_it_holds_an_attack(tmp_path, drawn, bounds, says,
                                                         not_says):
    radii = np.linspace(0, 4, 41)
    curves = {f'curve {k}': (np.clip(1 - radii / (k + 1), 0, None), bound)
              for k, bound in enumerate(bounds)}
    subject = plots.figure_subject(['embedded_mnist'], ['mlp'], 'LC-LMT-pw', 0.2118)
    plots.plot_accuracy_curves(radii, curves, subject, str(tmp_path / 'figure.png'))
    title = drawn['figure.png'].axes[0].get_title()
    assert says in title and title.endswith(
        'mlp on embedded_mnist, trained with LC-LMT-pw at ε = 0.2118')
    assert not_says is None or not_says not in title.split('\n')[0]


def test_figure_subject_lists_each_dataset_and_model_once():
    assert plots.figure_subject(['mnist', 'mnist'], ['mlp', 'cnn', 'mlp']) == 'mlp / cnn on mnist'
    assert plots.figure_subject(['svhn'], ['wrn'], 'plain') == 'wrn on svhn, trained with plain'


def test_a_one_epoch_run_is_a_marker_at_epoch_1(tmp_path, drawn):
    runs = {'LC-LMT-pw(1.0)': [{'epoch': 1, 'train_loss': 4.5, 'train_margin': 0.05,
                                'train_required_margin': 4.3}]}
    plots.plot_loss(runs, str(tmp_path / 'loss.png'))
    plots.plot_margins(runs, str(tmp_path / 'margins.png'))
    for name in ('loss.png', 'margins.png'):
        ax = drawn[name].axes[0]
        low, high = ax.get_xlim()
        assert [tick for tick in ax.get_xticks() if low <= tick <= high] == [1.0], name
        assert all(line.get_marker() == 'o' for line in ax.get_lines())
