"""The metric writers: metrics.jsonl, TensorBoard events (readable without TensorFlow), progress."""

import json
import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing import event_accumulator

from lclmt_jax import writers

pytestmark = pytest.mark.fast


def test_one_record_per_epoch_in_jsonl_and_tensorboard(tmp_path, capsys):
    writer = writers.create_writer(str(tmp_path), num_epochs=2)
    progress = writers.create_progress(writer)
    for epoch in (1, 2):
        progress(epoch)
        scalars = {'train_loss': 1.0 / epoch, 'train_accuracy': 0.5, 'test_accuracy': 0.5,
                   'test_lipschitz': 2.0, 'test_margin': 0.1, 'test_required_margin': 0.2,
                   'test_bound_met': 0.0, 'epoch_seconds': 0.01}
        writer.write_scalars(epoch, scalars)
        writer.flush()
    writer.close()
    records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
    assert [r['epoch'] for r in records] == [1, 2]
    assert records[1]['train_loss'] == pytest.approx(0.5)
    assert records[1]['epochs_per_second'] > 0 and records[1]['uptime'] > 0
    events = event_accumulator.EventAccumulator(str(tmp_path / 'tensorboard'))
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars('train_loss')]
    assert losses == [(1, pytest.approx(1.0)), (2, pytest.approx(0.5))]
    assert 'ETA' in capsys.readouterr().out.splitlines()[-1]


def test_the_trainer_and_its_writers_do_not_import_tensorflow(tmp_path):
    code = ('import sys, lclmt_jax.train; from lclmt_jax import writers; '
            f'w = writers.TensorBoardWriter({str(tmp_path)!r}); w.write_scalars(1, {{"a": 1}}); '
            'w.close(); sys.exit("tensorflow" in sys.modules)')
    assert subprocess.run([sys.executable, '-c', code], cwd=os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))).returncode == 0


def test_a_figure_that_is_not_finite_is_null_in_metrics_jsonl_and_nan_when_read(tmp_path):
    from lclmt_jax import run_files

    writer = writers.JsonlWriter(str(tmp_path / 'metrics.jsonl'))
    writer.write_record(1, {'train_loss': float('nan'), 'test_accuracy': 0.5,
                            'test_lipschitz': float('inf')})
    line = (tmp_path / 'metrics.jsonl').read_text()
    record = json.loads(line, parse_constant=lambda name: pytest.fail(f'{name} in {line}'))
    assert record == {'epoch': 1, 'train_loss': None, 'test_accuracy': 0.5,
                      'test_lipschitz': None}
    (read,) = run_files.read_metrics(str(tmp_path))
    assert read['test_accuracy'] == 0.5 and read['train_loss'] != read['train_loss']  # NaN


def test_resuming_drops_an_epoch_too_large_for_an_int_instead_of_crashing(tmp_path):
    from lclmt_jax import run_files

    (tmp_path / 'metrics.jsonl').write_text('{"epoch": 1, "train_loss": 1.0}\n'
                                            '{"epoch": 1e400, "train_loss": 1.0}\n')
    run_files.rewrite_metrics(str(tmp_path), 1)  # (--mode=compare names it: test_compare)
    assert [r['epoch'] for r in run_files.read_metrics(str(tmp_path))] == [1]
