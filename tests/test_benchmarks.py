"""The benchmarks cannot rot: the one command for every GPU figure runs on the CPU, small."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_benchmark_suite_runs_end_to_end_on_the_cpu(tmp_path):
    """benchmarks/gpu.sh (the one command for every GPU figure) cannot rot: its CPU-sized run."""
    out = tmp_path / 'suite.json'
    result = subprocess.run(['bash', 'benchmarks/gpu.sh', '--small', '--repeats=1',
                             f'--out={out}'], cwd=REPO,
                            capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, PYTHON=sys.executable))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.load(open(out))['rows']
    assert [row['measurement'] for row in rows] == [
        'paper MLP epoch, default', 'paper MLP epoch, paper recipe', '4C3F epoch, default',
        '4C3F epoch, paper recipe', 'LiResNet step, default', 'LiResNet step, paper recipe',
        '6C2F step, default', '6C2F step, paper recipe', 'LipConvNet-AOL step, default',
        'LipConvNet-SLL step, default', 'WRN-10-1 step, plain', 'WRN-10-1 step, lc_lmt',
        'CW-L2, paper MLP', 'sound certification, paper MLP', 'sound certification, 4C3F']
    assert all(row['seconds'] > 0 and row['images_per_second'] > 0 for row in rows)
    assert '| measurement | size | median s | images/s |' in result.stdout
