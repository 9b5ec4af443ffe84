"""A run killed with SIGKILL mid-training and relaunched ends exactly like an uninterrupted run.

Nothing is shut down cleanly: the process dies between (or during) checkpoint writes, possibly
after writing metrics of an epoch whose checkpoint never landed.
"""

import os
import signal
import subprocess
import sys
import time

import chex
import pytest

import lclmt_jax
from lclmt_jax import checkpoints, configs, run_files, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 8
KILL_AFTER_EPOCH = 2
TIMEOUT_S = 180


def _launch(workdir, log_path):
    with open(log_path, 'a') as log:
        return subprocess.Popen(
            [sys.executable, 'launch.py', '--config=experiments/mnist_lc.py:embedded',
             f'--workdir={workdir}', f'--config.num_epochs={EPOCHS}',
             '--config.checkpoint_every_epochs=1'],
            cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdout=log,
            stderr=subprocess.STDOUT)


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
    config = configs.mnist_variant(configs.default_config(), 'embedded')
    config.update(num_epochs=EPOCHS)  # checkpointing less often changes nothing else
    train.train_and_evaluate(config, str(tmp_path / 'whole'))

    resumed, whole = lclmt_jax.restore(workdir), lclmt_jax.restore(str(tmp_path / 'whole'))
    assert resumed.epoch == whole.epoch == EPOCHS
    chex.assert_trees_all_equal(resumed.params, whole.params)
    chex.assert_trees_all_equal(resumed.model_state, whole.model_state)
    epochs = [record['epoch'] for record in run_files.read_metrics(workdir)]
    assert epochs == list(range(1, EPOCHS + 1))
