"""The benchmarks cannot rot: the one command for every GPU figure runs on the CPU, small."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


ROWS = {
    'mnist': ['paper MLP epoch, default', 'paper MLP epoch, paper recipe', '4C3F epoch, default',
              '4C3F epoch, paper recipe'],
    'colour': ['LiResNet step, default', 'LiResNet step, paper recipe', '6C2F step, default',
               '6C2F step, paper recipe', 'LipConvNet-AOL step, default',
               'LipConvNet-SLL step, default', 'LipConvNet-CPL step, default'],
    'wrn': ['WRN-10-1 step, plain', 'WRN-10-1 step, lc_lmt'],
    'evaluation': ['CW-L2, paper MLP', 'sound certification, paper MLP',
                   'sound certification, 4C3F'],
}


@pytest.mark.parametrize('group', list(ROWS))
def test_the_benchmark_suite_runs_end_to_end_on_the_cpu(tmp_path, group):
    """benchmarks/gpu.sh (the one command for every GPU figure) cannot rot: its CPU-sized run,
    one group of rows per test so that the workers share them out."""
    out = tmp_path / 'suite.json'
    result = subprocess.run(['bash', 'benchmarks/gpu.sh', '--small', '--repeats=1',
                             f'--groups={group}', f'--out={out}'], cwd=REPO,
                            capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, PYTHON=sys.executable))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.load(open(out))['rows']
    assert [row['measurement'] for row in rows] == ROWS[group]
    assert all(row['seconds'] > 0 and row['images_per_second'] > 0 for row in rows)
    assert '| measurement | size | median s | images/s |' in result.stdout


def test_the_groups_cover_the_whole_suite():
    spec = importlib.util.spec_from_file_location('suite', os.path.join(REPO, 'benchmarks',
                                                                        'suite.py'))
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    assert tuple(ROWS) == suite.GROUPS
