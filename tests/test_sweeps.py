"""Sweeps: member names and configs, printed commands, and a tiny sweep run end to end."""

import csv
import json
import os
import shlex
import sys
import textwrap

import launching
import pytest
from absl import flags
from ml_collections import config_flags

from lclmt_jax import resume, sweeps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIG2 = os.path.join(REPO, 'experiments', 'mnist_fig2_sweep.py')

TINY_SWEEP = textwrap.dedent('''\
    from lclmt_jax.config_schema import default_config
    from lclmt_jax.configs import mnist_variant


    def get_config(variant=''):
        return mnist_variant(default_config(), variant)


    def get_sweep(variant=''):
        return [{'method': 'lmt', 'epsilon': 0.2}, {'method': 'plain'}]
''')
# Applied to every member: one epoch, and a small attack on 50 test examples.
COMMON_FLAGS = ['--config.num_epochs=1', '--config.evals.cw_l2.steps=5',
                '--config.evals.cw_l2.binary_search_steps=1',
                '--config.evaluation.epsilons=(0.1, 0.3)', '--max_examples=50']


def _write(path, text):
    with open(path, 'w') as f:
        f.write(text)
    return str(path)


@pytest.mark.parametrize('overrides, name', [
    ({'method': 'lmt', 'epsilon': 0.2}, 'lmt_eps0.2'),
    ({'method': 'lc_lmt', 'epsilon': 10.0}, 'lc_lmt_eps10'),
    ({'method': 'plain'}, 'plain'),
    ({'learning_rate': 1e-3, 'mlp.hidden_sizes': (200, 200)}, 'lr0.001_h200-200'),
    ({'data.name': 'fashion_mnist', 'seed': 3}, 'fashion_mnist_seed3'),
    ({'attack.confidence': 0.5, 'model': 'a/b c'}, 'confidence0.5_a-b-c'),
])
def test_member_names_come_from_the_overrides(overrides, name):
    assert sweeps.member_name(overrides) == name


def _parse_config_flags(argv, monkeypatch):
    """Parses ``--config=... --config.x=y`` as launch.py does, in a private flag registry."""
    monkeypatch.setattr(sys, 'argv', ['launch.py', *argv])  # config_flags reads the overrides here
    registry = flags.FlagValues()
    config_flags.DEFINE_config_file('config', None, '', flag_values=registry, lock_config=True)
    registry(['launch.py', *argv])
    return registry['config'].value


def test_override_flags_parse_back_to_the_same_config(monkeypatch):
    overrides = {'epsilon': 0.1 + 0.2, 'method': 'lmt', 'num_epochs': 7, 'seed': -1,
                 'mlp.hidden_sizes': (200, 50), 'evaluation.epsilons': (0.25,),
                 'data.pipeline': 'host', 'learning_rate': 1e-5}
    parsed = _parse_config_flags([f'--config={FIG2}:embedded',
                                  *sweeps.override_flags(overrides)], monkeypatch)
    for key, value in overrides.items():
        node = parsed
        for part in key.split('.'):
            node = node[part]
        assert node == value, key


def test_the_figure_2a_sweep_declares_the_papers_eight_runs():
    sweep = sweeps.Sweep.load(f'{FIG2}:embedded')
    assert list(sweep.members) == ['lmt_eps0.2', 'lmt_eps0.5', 'lc_lmt_eps0.2', 'lc_lmt_eps0.5',
                                   'lc_lmt_eps1', 'lc_lmt_eps2', 'lc_lmt_eps10', 'plain']
    config = sweep.config('lc_lmt_eps10')
    assert (config.method, config.epsilon, config.data.source) == ('lc_lmt', 10.0, 'embedded')
    assert sweep.config('plain').method == 'plain'
    assert sweep.base.method == 'lc_lmt' and sweep.base.epsilon == 1.0  # members copy the base


@pytest.mark.parametrize('sweep_body, overrides, message', [
    ('', {}, 'declares no sweep: it needs a get_sweep'),
    ("def get_sweep(variant=''):\n    return [{'method': 'lmt'}, {'method': 'lmt'}]\n", {},
     "two sweep members are both named 'lmt'"),
    ("def get_sweep(variant=''):\n    return [{'epsilonn': 0.1}]\n", {},
     "sweep member 'epsilonn0.1' sets 'epsilonn', which is not a config field; did you mean "
     "'epsilon'"),
    ("def get_sweep(variant=''):\n    return [{'evals.cw_l2.step': 3}]\n", {},
     "'evals.cw_l2.step', which is not a config field; did you mean 'evals.cw_l2.steps'"),
    ("def get_sweep(variant=''):\n    return [{'epsilon': 'big'}]\n", {},
     "sweep member 'big'.*cannot be casted"),
    ("def get_sweep(variant=''):\n    return [{'method': 'lmtt'}]\n", {},
     "unknown config.method 'lmtt'"),
    ("def get_sweep(variant=''):\n    return [{'epsilon': 0.1}]\n", {'epsilon': 0.5},
     '--config.epsilon is set by the sweep members'),
    ("def get_sweep(variant=''):\n    return []\n", {}, 'returned no members'),
])
def test_a_bad_sweep_fails_before_anything_runs(tmp_path, sweep_body, overrides, message):
    path = _write(tmp_path / 'sweep.py', TINY_SWEEP.split('def get_sweep')[0] + sweep_body)
    with pytest.raises(ValueError, match=message):
        sweeps.Sweep.load(f'{path}:embedded', overrides)


def _launch(*args):
    result = launching.launch(*args)  # in this process: the boundary is not what is tested
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_a_tiny_sweep_prints_its_commands_runs_and_tabulates(tmp_path):
    config_file = _write(tmp_path / 'tiny_sweep.py', TINY_SWEEP) + ':embedded'
    workdir = str(tmp_path / 'sweep')
    members = ['lmt_eps0.2', 'plain']

    # --sweep=print: one command per member, carrying the common and the member's overrides.
    printed = _launch(f'--config={config_file}', f'--workdir={workdir}', '--sweep=print',
                      *COMMON_FLAGS)
    commands = printed.stdout.strip().splitlines()
    assert len(commands) == len(members)
    for name, command in zip(members, commands, strict=True):
        assert f'--workdir={os.path.join(workdir, name)}' in command
        assert "'--config.evaluation.epsilons=(0.1, 0.3)'" in command
        assert '--mode=evaluate' in command and '--max_examples=50' in command
    assert '--config.method=lmt --config.epsilon=0.2' in commands[0]
    assert '--config.method=plain' in commands[1]
    assert '--mode=compare' in printed.stderr

    # Running the first printed command's training trains that member as the sweep would: the
    # sweep below refuses to reuse a member workdir trained with a different config.
    train_command = shlex.split(commands[0].split(' && ')[0])
    _launch(*train_command[2:])  # drop "python launch.py"

    # --sweep=run: trains what is missing, evaluates everything, writes the table.
    ran = _launch(f'--config={config_file}', f'--workdir={workdir}', '--sweep=run', *COMMON_FLAGS)
    with open(os.path.join(workdir, 'comparison.csv')) as f:
        rows = list(csv.DictReader(f))
    assert [os.path.basename(row['workdir']) for row in rows] == members
    assert [row['run'] for row in rows] == ['LMT(0.2)', 'plain']
    for row in rows:
        assert row['epochs'] == '1'
        for column in ('train_accuracy', 'test_accuracy', 'certified_pairwise@0.1',
                       'certified_pairwise@0.3', 'first_epoch_meeting_bound'):
            assert column in row
        assert 0 < float(row['test_accuracy']) <= 1
    assert os.path.exists(os.path.join(workdir, 'fig2_attack.png'))
    table = ran.stdout[ran.stdout.index('\nworkdir '):].split('\n')
    assert [line.split()[0] for line in table[2:len(members) + 2]] == members
    for name in members:
        with open(os.path.join(workdir, name, 'config.json')) as f:
            config = json.load(f)
        assert (config['num_epochs'], config['evals']['cw_l2']['steps']) == (1, 5)
        with open(os.path.join(workdir, name, 'evaluation', 'evaluation.json')) as f:
            assert json.load(f)['num_examples'] == 50

    # Again: everything is done, nothing is retrained or re-evaluated.
    tensorboard = {name: os.listdir(os.path.join(workdir, name, 'tensorboard'))
                   for name in members}
    again = _launch(f'--config={config_file}', f'--workdir={workdir}', '--sweep=run',
                    *COMMON_FLAGS)
    assert again.stdout.count('trained and evaluated, skipped') == len(members)
    assert tensorboard == {name: os.listdir(os.path.join(workdir, name, 'tensorboard'))
                           for name in members}


def test_a_member_workdir_trained_otherwise_is_not_reused(tmp_path):
    path = _write(tmp_path / 'sweep.py', TINY_SWEEP)
    sweep = sweeps.Sweep.load(f'{path}:embedded', {'num_epochs': 1})
    member_dir = tmp_path / 'sweep' / 'plain'
    os.makedirs(member_dir)
    saved = json.loads(sweep.config('plain').to_json_best_effort())
    saved.update(num_epochs=50, eval_batch_size=500)  # may differ
    saved['evals']['cw_l2']['steps'] = 1
    saved['data']['manual_dir'] = '/elsewhere'
    _write(member_dir / 'config.json', json.dumps(saved))
    resume.check_same_training(str(member_dir), sweep.config('plain'))
    saved['learning_rate'] = 0.1
    _write(member_dir / 'config.json', json.dumps(saved))
    with pytest.raises(ValueError, match='was trained with learning_rate=0.1, the config now '
                                         'says 0.001; use another --workdir'):
        sweep.run_member('plain', str(tmp_path / 'sweep'))


def test_a_failing_member_does_not_stop_the_others(tmp_path):
    path = _write(tmp_path / 'sweep.py', TINY_SWEEP.replace(
        "[{'method': 'lmt', 'epsilon': 0.2}, {'method': 'plain'}]",
        # Adam's steps of 1e30: infinite logits, a non-finite loss
        "[{'learning_rate': 1e30}, {'method': 'plain'}]"))
    sweep = sweeps.Sweep.load(f'{path}:embedded', {
        'num_epochs': 1, 'evals.cw_l2.steps': 5, 'evals.cw_l2.binary_search_steps': 1})
    assert list(sweep.members) == ['lr1e+30', 'plain']
    workdir = str(tmp_path / 'sweep')
    with pytest.raises(sweeps.SweepError,
                       match='1 of 2 sweep members failed: lr1e\\+30: non-finite'):
        sweep.run(workdir, max_examples=20)
    with open(os.path.join(workdir, 'comparison.json')) as f:
        assert [row['run'] for row in json.load(f)] == ['plain']
