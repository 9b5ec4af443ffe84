"""Several processes: when to join them, and two real processes training as one.

The end-to-end tests start two ``launch.py`` processes on this machine, each with two CPU devices,
joined through ``jax.distributed`` on localhost (gloo collectives), once by explicit flags and once
by the variables Slurm's ``srun`` sets: one global mesh of 4 devices, the host input pipeline,
process 0 writing the metrics, collective orbax checkpoints in one shared workdir. They must end
where one process with 4 devices ends.
"""

import glob
import importlib.util
import os
import re
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

import lclmt_jax
from lclmt_jax import distributed, run_files, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 2
# The paper's LMT: its loss has no discrete choice (LC-LMT's runner-up) and its bound no
# eigendecomposition (the block estimator's Ritz basis), so float summation order, which differs
# between one process and two, cannot flip a step's gradient or rotate a basis.
METHOD = 'lmt'
VARIANT = 'embedded,paper'
TIMEOUT_S = 240
_CLUSTER_VARIABLES = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
                      'SLURM_LOCALID', 'OMPI_MCA_orte_hnp_uri', 'OMPI_COMM_WORLD_SIZE',
                      'TPU_WORKER_HOSTNAMES', 'TPU_PROCESS_ADDRESSES', 'MEGASCALE_NUM_SLICES')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('localhost', 0))
        return sock.getsockname()[1]


def _launch_processes(workdir, log_dir, launcher, num_processes=2, devices_per_process=2):
    """Runs ``launch.py`` as ``num_processes`` joined processes; returns their exit codes, logs.

    ``launcher='flags'``: explicit --coordinator_address/--num_processes/--process_id.
    ``launcher='slurm'``: the variables ``srun`` sets for a 2-task step on this host, no flags.
    """
    xla_flags = re.sub(r'--xla_force_host_platform_device_count=\d+', '',
                       os.environ.get('XLA_FLAGS', ''))
    env = {name: value for name, value in os.environ.items() if name not in _CLUSTER_VARIABLES}
    env.update(JAX_PLATFORMS='cpu', PYTHONPATH=REPO,
               XLA_FLAGS=f'{xla_flags} --xla_force_host_platform_device_count='
                         f'{devices_per_process}')
    port = _free_port()
    processes, logs = [], []
    try:
        for index in range(num_processes):
            args = [sys.executable, 'launch.py', f'--config=experiments/mnist_lc.py:{VARIANT}',
                    f'--workdir={workdir}', f'--config.num_epochs={EPOCHS}',
                    f'--config.method={METHOD}']
            process_env = dict(env)
            if launcher == 'flags':
                args += [f'--coordinator_address=localhost:{port}',
                         f'--num_processes={num_processes}', f'--process_id={index}']
            else:
                process_env.update(SLURM_JOB_ID='4242', SLURM_STEP_NODELIST='localhost',
                                   SLURM_NTASKS=str(num_processes), SLURM_PROCID=str(index),
                                   SLURM_LOCALID=str(index), JAX_COORDINATOR_PORT=str(port))
            logs.append(os.path.join(log_dir, f'process_{index}.log'))
            with open(logs[-1], 'w') as log:
                processes.append(subprocess.Popen(args, cwd=REPO, env=process_env, stdout=log,
                                                  stderr=subprocess.STDOUT))
        deadline = time.monotonic() + TIMEOUT_S
        codes = [process.wait(timeout=max(1.0, deadline - time.monotonic()))
                 for process in processes]
    finally:  # a crashed peer leaves the other waiting in a collective: never leak it
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return codes, [open(path).read() for path in logs]


def _mnist_lc_embedded(**overrides):
    spec = importlib.util.spec_from_file_location(
        'mnist_lc_config', os.path.join(REPO, 'experiments', 'mnist_lc.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(VARIANT)
    config.update(overrides)
    return config


@pytest.fixture(scope='module')
def one_process_run(tmp_path_factory):
    """The reference: one process with all 4 (faked) devices, the device pipeline."""
    assert jax.device_count() == 4
    workdir = str(tmp_path_factory.mktemp('one_process'))
    train.train_and_evaluate(_mnist_lc_embedded(num_epochs=EPOCHS, method=METHOD), workdir)
    return workdir


@pytest.mark.parametrize('launcher', ['flags', 'slurm'])
def test_two_processes_train_like_one_process_with_all_devices(tmp_path, one_process_run,
                                                                launcher):
    multi_dir = str(tmp_path / 'two_processes')
    codes, logs = _launch_processes(multi_dir, str(tmp_path), launcher)
    assert codes == [0, 0], '\n'.join(f'--- process {i}:\n{log[-3000:]}'
                                      for i, log in enumerate(logs))

    multi, single = lclmt_jax.restore(multi_dir), lclmt_jax.restore(one_process_run)
    assert multi.epoch == single.epoch == EPOCHS
    # One process and two partition the sums differently (~1e-7 per step); 80 Adam steps, which
    # normalise small gradients, grow that to at most ~7e-4 of an array's norm (one process with
    # 1 and with 4 devices differ as much). The same 80 steps on other batches (another epoch
    # order) leave arrays 3e-2 to 3e-1 apart.
    for ours, theirs in zip(jax.tree.leaves((multi.params, multi.model_state)),
                            jax.tree.leaves((single.params, single.model_state)), strict=True):
        ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
        assert np.linalg.norm(ours - theirs) <= 3e-3 * np.linalg.norm(theirs)

    # Only process 0 wrote metrics (one record per epoch, not one per process) and printed them.
    records = run_files.read_metrics(multi_dir)
    assert [r['epoch'] for r in records] == list(range(1, EPOCHS + 1))
    for key in ('train_loss', 'test_accuracy', 'test_margin'):  # the same drift as the weights
        chex.assert_trees_all_close(records[-1][key],
                                    run_files.read_metrics(one_process_run)[-1][key], rtol=3e-3)
    assert len(os.listdir(os.path.join(multi_dir, 'tensorboard'))) == 1
    assert f'epoch   {EPOCHS}/{EPOCHS}' in logs[0] and 'epoch ' not in logs[1]
    # Both processes took part in the collective checkpoint (orbax writes one shard per process).
    assert glob.glob(os.path.join(multi_dir, 'checkpoints', str(EPOCHS), '**', '*process_1*'),
                     recursive=True)


# -- when to call jax.distributed.initialize -------------------------------------------------

_SLURM_STEP = {'SLURM_JOB_ID': '123', 'SLURM_STEP_NODELIST': 'node[1-2]', 'SLURM_NTASKS': '2',
               'SLURM_PROCID': '1', 'SLURM_LOCALID': '0'}


@pytest.fixture
def calls(monkeypatch):
    """Records jax.distributed.initialize calls instead of making them; a bare environment."""
    for name in _CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, '_on_cloud_tpu_vm', lambda: False)
    recorded = []
    monkeypatch.setattr(jax.distributed, 'initialize', lambda **kwargs: recorded.append(kwargs))
    return recorded


def test_a_plain_process_initializes_nothing(calls):
    assert not distributed.initialize()
    assert distributed.detect_cluster() is None
    assert calls == []


@pytest.mark.parametrize('environment, cluster', [
    (_SLURM_STEP, 'slurm'),
    ({'OMPI_MCA_orte_hnp_uri': '1531576320.0;tcp://10.0.0.1:34911',
      'OMPI_COMM_WORLD_SIZE': '4'}, 'ompi'),
    ({'TPU_WORKER_HOSTNAMES': 'host-0,host-1'}, 'tpu'),
])
def test_a_multi_process_launcher_is_detected_and_left_to_jax(calls, monkeypatch, environment,
                                                               cluster):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert distributed.detect_cluster() == cluster
    assert distributed.initialize()
    assert calls == [{'coordinator_address': None, 'num_processes': None, 'process_id': None}]


@pytest.mark.parametrize('environment', [
    {**_SLURM_STEP, 'SLURM_NTASKS': '1'},  # a one-task job
    {name: value for name, value in _SLURM_STEP.items() if name != 'SLURM_STEP_NODELIST'},  # sbatch
])
def test_single_task_slurm_jobs_stay_single_process(calls, monkeypatch, environment):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert not distributed.initialize()
    assert calls == []


def test_explicit_flags_initialize_with_them(calls):
    assert distributed.initialize('10.0.0.1:1234', 4, 3)
    assert calls == [{'coordinator_address': '10.0.0.1:1234', 'num_processes': 4,
                      'process_id': 3}]


@pytest.mark.parametrize('args, message', [
    (('localhost:1234', None, None), 'need --num_processes, --process_id too'),
    (('localhost:1234', 2, 2), r'process_id must be in \[0, 2\), got 2'),
    (('localhost:1234', 0, 0), 'num_processes must be >= 1'),
    ((None, 2, 0, 'off'), '--distributed=off contradicts --num_processes, --process_id'),
    ((None, None, None, 'sometimes'), "unknown distributed mode 'sometimes'"),
])
def test_inconsistent_flags_fail_before_anything_starts(calls, args, message):
    with pytest.raises(ValueError, match=message):
        distributed.initialize(*args)
    assert calls == []


def test_launch_rejects_incomplete_flags_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, 'launch.py', '--config=experiments/mnist_lc.py:embedded',
         f'--workdir={tmp_path}', '--coordinator_address=localhost:1234'],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={name: value for name, value in os.environ.items()
             if name not in _CLUSTER_VARIABLES})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        'error: several processes need --num_processes, --process_id too: no Slurm, MPI or TPU '
        'environment to take them from')
