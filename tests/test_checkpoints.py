"""Checkpoints survive damaged state: SIGKILL between and during writes, truncated files.

Nothing is shut down cleanly: the process dies between or during checkpoint writes, possibly
after writing metrics of an epoch whose checkpoint never landed; files are truncated as a full
disk or an interrupted copy leaves them. A run must resume from the newest checkpoint that reads,
never delete or overwrite a damaged one, and say so in one line.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import chex
import launching
import pytest

import lclmt_jax
from lclmt_jax import checkpoints, config_schema, configs, manifest, run_files, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 8
KILL_AFTER_EPOCH = 2
TIMEOUT_S = 180


def _launch(workdir, log_path, *flags):
    with open(log_path, 'a') as log:
        return subprocess.Popen(
            [sys.executable, 'launch.py', '--config=experiments/mnist_lc.py:embedded',
             f'--workdir={workdir}', f'--config.num_epochs={EPOCHS}',
             '--config.checkpoint_every_epochs=1', *flags],
            cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdout=log,
            stderr=subprocess.STDOUT)


def _run(*args):
    """``launch.py`` in this process (``launching.launch``): only the SIGKILLed runs need one."""
    return launching.launch(*args)


def _checkpointed_epochs(workdir):
    """Epochs whose checkpoint is complete (orbax renames a finished temporary directory)."""
    directory = os.path.join(workdir, checkpoints.CHECKPOINT_DIR)
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return sorted(int(name) for name in names if name.isdigit())


def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path):
    workdir, log_path = str(tmp_path / 'killed'), str(tmp_path / 'launch.log')
    process = _launch(workdir, log_path)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not any(epoch >= KILL_AFTER_EPOCH for epoch in _checkpointed_epochs(workdir)):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f'no checkpoint of epoch {KILL_AFTER_EPOCH} before the run ended:\n'
                            + open(log_path).read()[-3000:])
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    killed_at = max(_checkpointed_epochs(workdir))
    assert KILL_AFTER_EPOCH <= killed_at < EPOCHS, 'killed too late to test a resume'

    process = _launch(workdir, log_path)
    try:
        assert process.wait(timeout=TIMEOUT_S) == 0, open(log_path).read()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert 'resuming from the checkpoint of epoch' in open(log_path).read()

    # The uninterrupted reference, in this process: same 4 faked devices, same pipeline.
    config = configs.mnist_variant(config_schema.default_config(), 'embedded')
    config.update(num_epochs=EPOCHS)  # checkpointing less often changes nothing else
    train.train_and_evaluate(config, str(tmp_path / 'whole'))

    resumed, whole = lclmt_jax.restore(workdir), lclmt_jax.restore(str(tmp_path / 'whole'))
    assert resumed.epoch == whole.epoch == EPOCHS
    chex.assert_trees_all_equal(resumed.params, whole.params)
    chex.assert_trees_all_equal(resumed.model_state, whole.model_state)
    epochs = [record['epoch'] for record in run_files.read_metrics(workdir)]
    assert epochs == list(range(1, EPOCHS + 1))


def test_sigkilled_during_a_checkpoint_write_the_run_resumes(tmp_path):
    """Killed while orbax writes a checkpoint (its temporary directory exists), the rerun resumes
    from the last complete one and finishes; the half-written one never counts."""
    workdir, log_path = str(tmp_path / 'killed'), str(tmp_path / 'launch.log')
    wide = '--config.mlp.hidden_sizes=(1024, 1024, 1024)'  # 35 MB: a write takes ~0.2 s
    directory = os.path.join(workdir, checkpoints.CHECKPOINT_DIR)
    process = _launch(workdir, log_path, wide)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not glob.glob(os.path.join(directory, f'{KILL_AFTER_EPOCH}.*tmp*')):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail('never saw a checkpoint being written:\n'
                            + open(log_path).read()[-3000:])
            time.sleep(0.0005)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert KILL_AFTER_EPOCH not in _checkpointed_epochs(workdir)
    assert _checkpointed_epochs(workdir) == list(range(1, KILL_AFTER_EPOCH))
    result = _run('--config=experiments/mnist_lc.py:embedded', f'--workdir={workdir}',
                  f'--config.num_epochs={KILL_AFTER_EPOCH + 1}',
                  '--config.checkpoint_every_epochs=1', wide)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'resuming from the checkpoint of epoch {KILL_AFTER_EPOCH - 1}' in result.stderr
    assert lclmt_jax.restore(workdir).epoch == KILL_AFTER_EPOCH + 1
    assert [r['epoch'] for r in run_files.read_metrics(workdir)] == list(
        range(1, KILL_AFTER_EPOCH + 2))


def _truncate(paths):
    for path in paths:
        with open(path, 'r+b') as f:
            f.truncate(os.path.getsize(path) // 2)


def _damage(workdir, epoch, which):
    """Truncates half of every file of a checkpoint, or of its array files only."""
    root = os.path.join(workdir, checkpoints.CHECKPOINT_DIR, str(epoch))
    files = [os.path.join(r, n) for r, _, names in os.walk(root) for n in names
             if n != manifest.MANIFEST]
    if which == 'array files':
        files = [f for f in files if f'{os.sep}d{os.sep}' in f]
    assert files
    _truncate(files)
    return {os.path.relpath(f, root): open(f, 'rb').read() for f in files}


@pytest.fixture
def three_epochs(trained_run_copy):
    """A run of mnist_lc.py:embedded with checkpoints of epochs 1, 2 and 3 (a private copy)."""
    return trained_run_copy()


@pytest.mark.parametrize('which', ['every file', 'array files'])
def test_a_damaged_newest_checkpoint_is_moved_aside_and_training_resumes_before_it(
        three_epochs, which):
    workdir = three_epochs
    damaged = _damage(workdir, 3, which)
    result = _run('--config=experiments/mnist_lc.py:embedded', f'--workdir={workdir}',
                  '--config.num_epochs=4', '--config.checkpoint_every_epochs=1')
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith('warning:')]
    path = os.path.join(os.path.abspath(workdir), checkpoints.CHECKPOINT_DIR, '3')
    assert len(warnings) == 1 and warnings[0].startswith(f'warning: checkpoint {path} is damaged')
    assert warnings[0].endswith(f'moved aside to {path}.damaged')
    assert 'resuming from the checkpoint of epoch 2' in result.stderr
    # Kept for inspection, byte for byte: never deleted, never overwritten.
    for name, content in damaged.items():
        assert open(os.path.join(path + '.damaged', name), 'rb').read() == content
    assert _checkpointed_epochs(workdir) == [2, 3, 4]  # 3 and 4 trained again from epoch 2
    assert [r['epoch'] for r in run_files.read_metrics(workdir)] == [1, 2, 3, 4]


def test_evaluate_takes_the_newest_good_checkpoint_unless_told_which(three_epochs):
    workdir = three_epochs
    path = os.path.join(os.path.abspath(workdir), checkpoints.CHECKPOINT_DIR, '3')
    damaged = _damage(workdir, 3, 'array files')
    first = sorted(damaged)[0]  # the first file the manifest lists that no longer matches
    entries = json.load(open(os.path.join(path, manifest.MANIFEST)))
    reason = (f'DamagedCheckpointError: {first} has {len(damaged[first])} of its '
              f'{entries[first][0]} bytes')
    chosen = _run('--mode=evaluate', f'--workdir={workdir}', '--checkpoint=3',
                  '--evaluators=certificates', '--max_examples=50')
    assert chosen.returncode == 1
    assert chosen.stderr.strip().splitlines() == [
        f'error: checkpoint of epoch 3 in {workdir} cannot be read ({reason})']
    assert os.path.isdir(path)  # an explicit choice is reported, not moved

    newest = _run('--mode=evaluate', f'--workdir={workdir}', '--evaluators=certificates',
                  '--max_examples=50')
    assert newest.returncode == 0, newest.stderr[-3000:]
    assert f'evaluating the checkpoint of epoch 2 in {workdir}' in newest.stdout
    assert [line for line in newest.stderr.splitlines() if line.startswith('warning:')] == [
        f'warning: checkpoint {path} is damaged ({reason}); moved aside to {path}.damaged']
    assert lclmt_jax.restore(workdir).epoch == 2


def test_the_manifest_names_a_truncated_or_altered_file(three_epochs):
    path = os.path.join(three_epochs, checkpoints.CHECKPOINT_DIR, '3')
    assert manifest.verify(path)
    name = sorted(n for n in os.listdir(os.path.join(path, 'config')))[0]
    file = os.path.join(path, 'config', name)
    content = open(file, 'rb').read()
    open(file, 'wb').write(content[:-1] + bytes([content[-1] ^ 1]))  # same size, one bit off
    with pytest.raises(manifest.DamagedCheckpointError,
                       match=f'config/{name} does not match its checksum'):
        manifest.verify(path)
    os.remove(os.path.join(path, manifest.MANIFEST))
    assert not manifest.verify(path)  # nothing to check against: tried as it is
