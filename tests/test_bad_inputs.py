"""Bad inputs, fuzzed: every bad config and data file is one line on stderr, exit status 1,
and an untouched workdir.

Each case runs ``launch.py``'s flag parsing and ``main`` as a user's command would, in the test
process (``launching.launch``: the process boundary is not what is tested), on 4 faked CPU
devices. A bad config is tried on a workdir holding a finished run (its files must come out byte
for byte the same) and on a new one (it must not appear); a bad data file on a new one.
"""

import gzip
import hashlib
import os

import launching
import numpy as np
import pytest

pytestmark = pytest.mark.fast

EMBEDDED = '--config=experiments/mnist_lc.py:embedded'


def _launch(*args):
    return launching.launch(*args)


def _snapshot(directory) -> dict:
    """Every file below ``directory`` with its content hash (empty if it does not exist)."""
    return {os.path.relpath(os.path.join(root, name), directory):
            hashlib.sha256(open(os.path.join(root, name), 'rb').read()).hexdigest()
            for root, _, names in os.walk(directory) for name in names}


@pytest.fixture(scope='module')
def finished_run(trained_run_copy):
    """A finished mnist_lc.py:embedded run of this module's own."""
    return trained_run_copy()


def _assert_one_line_and_untouched(result, message, workdir, before):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr[-3000:]
    assert message in lines[0], lines[0]
    assert _snapshot(workdir) == before


def _npz(path, x_train=None, y_train=None, x_test=None, y_test=None, drop=()):
    rng = np.random.default_rng(0)
    arrays = {'x_train': rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
              'y_train': np.arange(40) % 10, 'x_test': rng.integers(0, 256, (20, 8, 8),
                                                                    dtype=np.uint8),
              'y_test': np.arange(20) % 10}
    given = {'x_train': x_train, 'y_train': y_train, 'x_test': x_test, 'y_test': y_test}
    arrays.update({key: value for key, value in given.items() if value is not None})
    np.savez(path, **{key: value for key, value in arrays.items() if key not in drop})
    return path


CONFIG_CASES = {
    'unknown variant': ([f'{EMBEDDED[:-9]}:foo'], "unknown config variant 'foo'; allowed: "),
    'unknown field': ([EMBEDDED, '--config.foo=1'], "'foo', which is not a config field"),
    'misspelt nested field': ([EMBEDDED, '--config.mlp.hidden_size=(3,)'],
                              "did you mean 'mlp.hidden_sizes'?"),
    'wrong type': ([EMBEDDED, '--config.epsilon=abc'], "could not convert string to float"),
    'negative epsilon': ([EMBEDDED, '--config.epsilon=-1'], 'epsilon must be a finite number'),
    'NaN epsilon': ([EMBEDDED, '--config.epsilon=nan'], 'epsilon must be a finite number'),
    'batch not divisible by the devices': ([EMBEDDED, '--config.batch_size=102'],
                                           'batch_size=102 is not divisible by the device count 4'),
    'unknown method': ([EMBEDDED, '--config.method=lmtt'], "unknown config.method 'lmtt'"),
    'unknown model': ([EMBEDDED, '--config.model=resnet'], "unknown config.model 'resnet'"),
    'negative epochs': ([EMBEDDED, '--config.num_epochs=-1'], 'num_epochs must be'),
    'missing config file': (['--config=experiments/nope.py'], 'No such file or directory'),
    'unknown evaluator': ([EMBEDDED, "--config.evaluators=('pgd',)"], "unknown evaluator 'pgd'"),
}


@pytest.mark.parametrize('name', CONFIG_CASES)
def test_a_bad_config_is_one_line_and_touches_no_workdir(name, tmp_path, finished_run):
    args, message = CONFIG_CASES[name]
    for workdir in (str(tmp_path / 'new'), finished_run):
        before = _snapshot(workdir)
        result = _launch(*args, f'--workdir={workdir}')
        _assert_one_line_and_untouched(result, message, workdir, before)


def _truncated(path):
    """Cuts a file in half, as an interrupted download or copy leaves it."""
    with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)
    return path


def _bad_files(directory):
    """name -> (data flags, expected message), each a data file broken in its own way."""
    n = lambda name: str(directory / f'{name}.npz')  # noqa: E731
    cases = {
        'images of the wrong rank': (_npz(n('rank'), x_train=np.zeros((40, 64), np.uint8)),
                                     'images must be (N, H, W) or (N, H, W, C)'),
        'NaN pixels': (_npz(n('nan'), x_train=np.full((40, 8, 8), np.nan)),
                       '2560 pixels are NaN; float pixels must be finite'),
        'one NaN pixel': (_npz(n('nan1'), x_train=np.where(np.arange(40 * 64) == 7, np.nan, 0.5)
                               .reshape(40, 8, 8)), '1 pixel is NaN; float pixels must be'),
        'infinite pixels': (_npz(n('inf'), x_test=np.full((20, 8, 8), np.inf)),
                            '1280 pixels are infinite'),
        'float pixels above 1': (_npz(n('above'), x_test=np.full((20, 8, 8), 2.0)),
                                 'float pixels must lie in [0, 1], got range [2, 2]'),
        'string pixels': (_npz(n('str'), x_train=np.full((40, 8, 8), 'a')),
                          'unsupported image dtype'),
        'negative labels': (_npz(n('neg'), y_train=np.arange(40) % 10 - 1),
                            'labels must be >= 0'),
        'float labels': (_npz(n('float'), y_train=np.arange(40) / 4),
                         'labels must be a 1-D integer array'),
        'a stray label': (_npz(n('stray'), y_test=np.r_[np.arange(19) % 10, 1000]),
                          'the labels reach 1000'),
        'an empty train split': (_npz(n('empty'), x_train=np.zeros((0, 8, 8), np.uint8),
                                      y_train=np.zeros(0, np.int64)), 'the train split is empty'),
        'fewer labels than images': (_npz(n('count'), y_train=np.arange(39) % 10),
                                     '40 images but 39 labels'),
        'a missing key': (_npz(n('key'), drop=('y_test',)), 'missing key(s) y_test'),
        'a truncated archive': (_truncated(_npz(n('cut'))), 'cannot read .npz file (File is not '
                                                           'a zip file): truncated'),
    }
    cases = {name: (['--config.data.source=npz', f'--config.data.path={path}'], message)
             for name, (path, message) in cases.items()}
    idx_dir = directory / 'idx'
    for name, content, message in [
            ('a truncated IDX file', None, 'truncated'),
            ('a .gz that is not gzip', b'not gzip at all', 'cannot read IDX file'),
            ('an IDX file of the wrong kind', None, 'IDX magic number')]:
        folder = idx_dir / name.replace(' ', '_').replace('.', '')
        os.makedirs(folder)
        for stem, array in [('train-images-idx3-ubyte', np.zeros((40, 4, 4), np.uint8)),
                            ('train-labels-idx1-ubyte', (np.arange(40) % 10).astype(np.uint8)),
                            ('t10k-images-idx3-ubyte', np.zeros((20, 4, 4), np.uint8)),
                            ('t10k-labels-idx1-ubyte', (np.arange(20) % 10).astype(np.uint8))]:
            ndim = 3 if 'wrong kind' in name and 'labels' in stem else array.ndim
            raw = bytes([0, 0, 8, ndim]) + b''.join(int(d).to_bytes(4, 'big')
                                                    for d in array.shape) + array.tobytes()
            if stem.startswith('t10k-images'):
                raw = content if content is not None else raw[:len(raw) // 2] \
                    if 'truncated' in name else raw
            path = folder / f'{stem}.gz'
            if content is not None and stem.startswith('t10k-images'):
                path.write_bytes(raw)
            else:
                with gzip.open(path, 'wb') as f:
                    f.write(raw)
        cases[name] = (['--config.data.source=idx', f'--config.data.path={folder}'], message)
    cases['a missing IDX directory'] = (['--config.data.source=idx',
                                         f'--config.data.path={directory}/none'],
                                        'does not exist')
    return cases


def test_every_bad_data_file_is_one_line_and_creates_no_workdir(tmp_path):
    cases = _bad_files(tmp_path)
    assert len(cases) == 17
    workdir = str(tmp_path / 'new')
    for name, (args, message) in cases.items():
        result = _launch('--config=experiments/mnist_lc.py', *args, f'--workdir={workdir}',
                         '--config.batch_size=20', '--config.eval_batch_size=20')
        try:
            _assert_one_line_and_untouched(result, message, workdir, {})
        except AssertionError as error:
            raise AssertionError(f'{name}: {error}') from None


START_CASES = {
    'nothing to train': ([EMBEDDED, '--config.num_epochs=0'],
                         'num_epochs=0 and {workdir} holds no trained run'),
    'shifts larger than the images': ([EMBEDDED, '--config.augment.crop_padding=100'],
                                      'augment.crop_padding=100 shifts the 28x28 images'),
    'an attack of no points': ([EMBEDDED, '--evaluators=certificates,cw_l2',
                                '--attack_examples=0'],
                               'evals.cw_l2.max_examples must be a positive integer or None, '
                               'got 0'),
    'an evaluation of no points': ([EMBEDDED, '--evaluators=certificates', '--max_examples=0'],
                                   '--max_examples must be a positive integer, got 0'),
    'no flags at all': ([], 'python launch.py --help lists the flags'),
}


@pytest.mark.parametrize('name', START_CASES)
def test_a_run_that_cannot_start_is_one_line_and_creates_nothing(name, tmp_path):
    args, message = START_CASES[name]
    workdir = str(tmp_path / 'new')
    result = _launch(*args, *([f'--workdir={workdir}'] if args else []))
    _assert_one_line_and_untouched(result, message.format(workdir=workdir), workdir, {})


@pytest.mark.parametrize('flag, message', [
    ('--attack_examples=0', 'evals.cw_l2.max_examples must be a positive integer or None'),
    ('--max_examples=-3', '--max_examples must be a positive integer, got -3')])
def test_an_evaluation_that_cannot_run_is_refused_before_any_work(flag, message, finished_run):
    before = _snapshot(finished_run)
    result = _launch('--mode=evaluate', f'--workdir={finished_run}', flag)
    _assert_one_line_and_untouched(result, message, finished_run, before)
    assert 'evaluating the checkpoint' not in result.stdout
