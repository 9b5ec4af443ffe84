"""Reliability, as a careful user and an attacker would probe it: a mismatch is not damage, one
run per workdir, bad inputs in one line.

Each case runs ``launch.py`` as a user would (or the public API) and asserts the one line, the
exit status and what is on disk afterwards: checkpoints intact, nothing moved, nothing created.
The runs are tiny (a 784-32-10 MLP on the embedded digits, 1-3 epochs).
"""

import datetime
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import launching
import numpy as np
import pytest

import lclmt_jax
from lclmt_jax import (
    checkpoints,
    config_schema,
    configs,
    manifest,
    run_files,
    sweeps,
    train,
    workdir_lock,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDED = '--config=experiments/mnist_lc.py:embedded'
SMALL = ['--config.mlp.hidden_sizes=(32,)', '--config.checkpoint_every_epochs=1']
TIMEOUT_S = 180


def _env():
    return dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu', PYTHONFAULTHANDLER='1')


def _launch(*args):
    """``launch.py`` in this process (``launching.launch``); the tests of a second process, a
    signal or a fresh interpreter start real ones (``_start``, ``subprocess``)."""
    return launching.launch(*args)


def _default_ctrl_c():
    """In the child: Ctrl-C as a terminal delivers it. A shell without job control starts
    background commands with SIGINT ignored, and Python keeps an ignored SIGINT ignored, so a
    test run from such a job would otherwise send Ctrl-C to a run that cannot hear it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(log_path, *args):
    """A background ``launch.py``, its output in ``log_path`` (a pipe could fill and block it)."""
    with open(log_path, 'w') as log:
        return subprocess.Popen([sys.executable, 'launch.py', *args], cwd=REPO, env=_env(),
                                stdout=log, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=_default_ctrl_c)


def _wait_for(predicate, process, log_path, what):
    deadline = time.monotonic() + TIMEOUT_S
    while not predicate():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f'never saw {what}:\n' + open(log_path).read()[-3000:])
        time.sleep(0.05)


def _interrupted(process, log_path, timeout=180):
    """Sends Ctrl-C and returns the exit status. A run still alive after ``timeout`` s (a hang,
    not a slow machine) is aborted so that faulthandler writes every thread's stack to the log,
    and the test fails with it."""
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        process.wait(timeout=30)
        pytest.fail('Ctrl-C did not end the run:\n' + open(log_path).read()[-6000:])


def _stop(process):
    if process.poll() is None:
        process.kill()
        process.wait()


def _snapshot(directory) -> dict:
    """Every file below ``directory`` with its content hash (empty if it does not exist)."""
    return {os.path.relpath(os.path.join(root, name), directory):
            hashlib.sha256(open(os.path.join(root, name), 'rb').read()).hexdigest()
            for root, _, names in os.walk(directory) for name in names}


def _one_error_line(result, message):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr[-3000:]
    assert message in lines[0], lines[0]
    return lines[0]


def _checkpoint_folders(workdir):
    root = checkpoints.checkpoint_directory(workdir)
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


def _all_verify(workdir):
    root = checkpoints.checkpoint_directory(workdir)
    return all(manifest.verify(checkpoints.step_directory(root, epoch))
               for epoch in checkpoints.saved_epochs(root))


def small_config(**overrides):
    config = configs.mnist_variant(config_schema.default_config(), 'embedded')
    config.update(num_epochs=2, checkpoint_every_epochs=1)
    config.mlp.hidden_sizes = (32,)
    config.update(overrides)
    return config


@pytest.fixture(scope='module')
def two_epochs(tmp_path_factory):
    """A finished run with checkpoints of epochs 1 and 2 (copy it before changing it)."""
    workdir = str(tmp_path_factory.mktemp('base') / 'run')
    train.train_and_evaluate(small_config(), workdir)
    return workdir


@pytest.fixture
def run(two_epochs, tmp_path):
    workdir = str(tmp_path / 'run')
    shutil.copytree(two_epochs, workdir)
    return workdir


# 1. A mismatch is not damage.

def test_a_config_mismatch_is_one_line_and_moves_nothing(run):
    os.remove(os.path.join(run, run_files.CONFIG_FILE))  # the checkpoint still knows
    before = _snapshot(run)
    result = _launch(EMBEDDED, f'--workdir={run}', '--config.num_epochs=3',
                     '--config.mlp.hidden_sizes=(50,50,50)', '--config.checkpoint_every_epochs=1')
    line = _one_error_line(result, f'{run} was trained with mlp.hidden_sizes=[32], the config '
                                   'now says [50, 50, 50]; use another --workdir, or run with '
                                   'the config it was trained with')
    assert line.endswith('(saved in checkpoints/2/config)')
    assert _snapshot(run) == before  # nothing moved aside, no lock left
    assert _checkpoint_folders(run) == ['1', '2']


def test_a_parameter_tree_of_other_shapes_is_a_mismatch_not_damage(run):
    """Same config fields, other shapes (e.g. code that changed a model): refused by the shapes
    read from the checkpoint's metadata, before orbax reads the state."""
    config = small_config()
    config.mlp.hidden_sizes = (16,)
    like = train.create_trainer(config, (28, 28, 1), 10).state
    with pytest.raises(checkpoints.CheckpointMismatchError) as raised:
        checkpoints.restore_train_state(run, like)
    message = str(raised.value)
    assert 'params/LipschitzDense_0/kernel saved (784, 32) float32, now (784, 16) float32' \
        in message, message
    assert 'use another --workdir' in message and '\n' not in message
    assert _checkpoint_folders(run) == ['1', '2'] and _all_verify(run)


def test_a_run_that_diverged_before_any_checkpoint_binds_no_config(tmp_path):
    workdir = str(tmp_path / 'diverged')
    diverged = _launch(EMBEDDED, f'--workdir={workdir}', *SMALL, '--config.num_epochs=1',
                       '--config.learning_rate=1e30')
    _one_error_line(diverged, 'non-finite loss at epoch 1')
    assert 'no checkpoint was written' in diverged.stderr
    assert not os.path.exists(os.path.join(workdir, run_files.CONFIG_FILE))
    sane = _launch(EMBEDDED, f'--workdir={workdir}', *SMALL, '--config.num_epochs=1')
    assert sane.returncode == 0, sane.stderr[-3000:]
    assert [r['epoch'] for r in run_files.read_metrics(workdir)] == [1]


def _without_manifest_and_scaled(workdir, epoch, factor):
    """Rewrites the checkpoint of ``epoch`` with its parameters times ``factor``, finite, and
    no manifest: data no check can catch, from which training diverges at once."""
    config = small_config()
    like = train.create_trainer(config, (28, 28, 1), 10).state
    state, restored_epoch = checkpoints.restore_train_state(workdir, like)
    assert restored_epoch == epoch
    scaled = state.replace(params=jax.tree.map(lambda p: p * factor, state.params))
    root = checkpoints.checkpoint_directory(workdir)
    shutil.rmtree(checkpoints.step_directory(root, epoch))
    manager = checkpoints.checkpoint_manager(workdir)
    checkpoints.save(manager, epoch, scaled, run_files.read_json(
        os.path.join(workdir, run_files.CONFIG_FILE)), run_files.read_json(
        os.path.join(workdir, run_files.RUN_INFO_FILE)))
    manager.close()
    os.remove(os.path.join(checkpoints.step_directory(root, epoch), manifest.MANIFEST))


def test_an_unchecked_checkpoint_training_diverges_from_falls_back_once(run, capsys):
    _without_manifest_and_scaled(run, 2, 1e30)
    capsys.readouterr()
    assert lclmt_jax.restore(run).epoch == 2  # read, but not without notice
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith('warning: checkpoint ') \
        and 'has no manifest' in warning[0], warning

    result = _launch(EMBEDDED, f'--workdir={run}', *SMALL, '--config.num_epochs=3')
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith('warning:')]
    assert len(warnings) == 3, result.stderr
    assert 'has no manifest' in warnings[0]
    assert warnings[1].startswith('warning: non-finite loss at epoch 3, step 1 of the epoch, '
                                  'right after resuming from the checkpoint of epoch 2; falling '
                                  'back once to the checkpoint of epoch 1')
    root = checkpoints.checkpoint_directory(run)
    assert warnings[2].endswith(f'moved aside to {root}/2{checkpoints.NONFINITE_SUFFIX}')
    assert _checkpoint_folders(run) == ['1', '2', f'2{checkpoints.NONFINITE_SUFFIX}', '3']
    assert _all_verify(run)  # 2 trained again, with its manifest
    assert [r['epoch'] for r in run_files.read_metrics(run)] == [1, 2, 3]
    assert all(np.isfinite(r['train_loss']) for r in run_files.read_metrics(run))


def test_a_divergence_that_recurs_after_the_fallback_stops_with_one_line(run, monkeypatch):
    from lclmt_jax import losses

    finite_loss = losses.method_loss
    monkeypatch.setattr(losses, 'method_loss', lambda *args: finite_loss(*args) * np.nan)
    before = _snapshot(os.path.join(run, 'checkpoints'))
    with pytest.raises(train.NonFiniteLossError) as raised:
        train.train_and_evaluate(small_config(num_epochs=3), run)
    assert str(raised.value) == (
        'non-finite loss at epoch 3, step 1 of the epoch, right after resuming from the '
        'checkpoint of epoch 2, and again (non-finite loss at epoch 2, step 1 of the epoch) '
        "after falling back: the divergence is the training's, not a checkpoint's; the "
        'checkpoint of epoch 2 is kept')
    assert _snapshot(os.path.join(run, 'checkpoints')) == before
    assert not os.path.exists(os.path.join(run, workdir_lock.LOCK_FILE))


def _damage_newest(workdir):
    root = checkpoints.checkpoint_directory(workdir)
    path = os.path.join(checkpoints.step_directory(root, 2), 'state', '_METADATA')
    with open(path, 'r+b') as f:
        f.truncate(10)


def test_a_read_only_workdir_skips_a_damaged_checkpoint_instead_of_failing(run, monkeypatch,
                                                                            capsys):
    _damage_newest(run)
    before = _snapshot(run)

    def read_only(source, target):
        raise OSError(errno.EROFS, 'Read-only file system', source)

    monkeypatch.setattr(os, 'rename', read_only)
    capsys.readouterr()
    assert lclmt_jax.restore(run).epoch == 1
    warning = capsys.readouterr().err.strip().splitlines()
    path = os.path.join(checkpoints.checkpoint_directory(run), '2')
    assert len(warning) == 1 and warning[0].startswith(f'warning: checkpoint {path} is damaged '
                                                       '(DamagedCheckpointError: state/_METADATA')
    assert warning[0].endswith("skipped and left in place (cannot move it aside: [Errno 30] "
                               f"Read-only file system: '{path}')")
    assert _snapshot(run) == before


# 2. One run per workdir.

def test_a_second_run_on_a_workdir_in_use_is_refused_in_one_line(tmp_path):
    workdir, log_path = str(tmp_path / 'run'), str(tmp_path / 'first.log')
    lock = os.path.join(workdir, workdir_lock.LOCK_FILE)
    first = _start(log_path, EMBEDDED, f'--workdir={workdir}', '--config.mlp.hidden_sizes=(32,)',
                   '--config.num_epochs=100000', '--config.checkpoint_every_epochs=2')
    try:
        _wait_for(lambda: checkpoints.saved_epochs(checkpoints.checkpoint_directory(workdir)),
                  first, log_path, 'a first checkpoint')
        holder = json.load(open(lock))
        assert holder['pid'] == first.pid and holder['host'] == socket.gethostname()
        second = _launch(EMBEDDED, f'--workdir={workdir}', *SMALL, '--config.num_epochs=3')
        _one_error_line(second, f'{workdir} is in use by process {first.pid} on host '
                                f'{socket.gethostname()} (started {holder["started"]})')
        assert first.poll() is None  # the first run goes on
        assert _interrupted(first, log_path) == 1
    finally:
        _stop(first)
    assert not os.path.exists(lock)  # released on Ctrl-C too
    epochs = [r['epoch'] for r in run_files.read_metrics(workdir)]
    assert epochs == list(range(1, len(epochs) + 1))  # one writer: every epoch once
    assert _all_verify(workdir)


def _dead_pid():
    process = subprocess.Popen([sys.executable, '-c', 'pass'])
    process.wait()
    return process.pid


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    workdir = str(tmp_path / 'run')
    os.makedirs(workdir)
    lock = os.path.join(workdir, workdir_lock.LOCK_FILE)
    pid = _dead_pid()
    json.dump({'pid': pid, 'host': socket.gethostname(),
               'started': '2020-01-01T00:00:00+00:00'}, open(lock, 'w'))
    result = _launch(EMBEDDED, f'--workdir={workdir}', *SMALL, '--config.num_epochs=1')
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith('warning:')]
    assert warnings == [f'warning: taking over the stale lock {lock} of process {pid} on host '
                        f'{socket.gethostname()} (started 2020-01-01T00:00:00+00:00), which no '
                        'longer runs']
    assert not os.path.exists(lock)


def test_a_lock_held_from_another_host_is_never_taken_over(run):
    lock = os.path.join(run, workdir_lock.LOCK_FILE)
    json.dump({'pid': 4242, 'host': 'elsewhere.example', 'started': '2020-01-01T00:00:00+00:00'},
              open(lock, 'w'))
    before = _snapshot(run)
    result = _launch(EMBEDDED, f'--workdir={run}', *SMALL, '--config.num_epochs=3')
    _one_error_line(result, f'{run} is in use by process 4242 on host elsewhere.example')
    assert _snapshot(run) == before


def test_a_pid_reused_by_a_later_process_is_a_stale_lock():
    now = datetime.datetime.now(datetime.timezone.utc)
    mine = {'pid': os.getpid(), 'host': socket.gethostname()}
    # this process started before now: a lock it took now is live ...
    assert not workdir_lock.is_stale({**mine, 'started': now.isoformat()})
    # ... but a lock taken before this process started was another process's
    assert workdir_lock.is_stale({**mine, 'started': (now - datetime.timedelta(days=1))
                                  .isoformat()})
    assert not workdir_lock.is_stale({**mine, 'host': 'elsewhere.example',
                                      'started': '2020-01-01T00:00:00+00:00'})
    assert not workdir_lock.is_stale({})


def test_metrics_are_rewritten_to_the_checkpoint_on_resume(run):
    path = os.path.join(run, run_files.METRICS_FILE)
    records = open(path).read().splitlines()
    with open(path, 'a') as f:  # two runs' worth, a stray later epoch and half a line
        f.write('\n'.join([records[0], records[1], json.dumps({'epoch': 7}), '{"epoch": 3, "tr'])
                + '\n')
    result = _launch(EMBEDDED, f'--workdir={run}', *SMALL, '--config.num_epochs=3')
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r['epoch'] for r in run_files.read_metrics(run)] == [1, 2, 3]


# 3. Certificates only where they mean something: the public API's input checks.

@pytest.mark.parametrize('images, labels, message', [
    (lambda x: (x * 255).astype(np.uint8), None, 'images must be floats in [0, 1], got dtype '
                                                 'uint8'),
    (lambda x: x * 3e38, None, 'pixels must lie in [0, 1]'),
    (lambda x: x - 0.5, None, 'pixels must lie in [0, 1]'),
    (lambda x: x[:, :14], None, 'images must be (N, 28, 28, 1) for this run'),
    (None, np.array([0, 1, 10]), 'labels must lie in [0, 10)'),
    (None, np.array([-1, 0, 1]), 'labels must lie in [0, 10)'),
    (None, np.array([0.0, 1.0, 2.0]), 'labels must be integers'),
    (None, np.array([0, 1]), 'expected 3 labels'),
])
def test_certified_radius_refuses_inputs_it_cannot_certify(two_epochs, images, labels, message):
    model = lclmt_jax.restore(two_epochs)
    x = np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype(np.float32)
    y = np.array([0, 1, 2])
    with pytest.raises(ValueError, match=re.escape(message)):
        model.certified_radius(images(x) if images else x, labels if labels is not None else y)


def test_logits_refuse_integer_pixels(two_epochs):
    model = lclmt_jax.restore(two_epochs)
    with pytest.raises(ValueError, match='images must be floats in'):
        model.logits(np.zeros((1, 28, 28, 1), np.uint8))
    assert model.logits(np.zeros((1, 28, 28, 1), np.float32)).shape == (1, 10)


# 5. Names, paths and files.

@pytest.mark.parametrize('name', ['../escaped', '/tmp/x', '..', '.hidden', 'a/b', 'a' * 101])
def test_a_sweep_member_name_must_stay_inside_the_workdir(tmp_path, name):
    path = tmp_path / 'sweep.py'
    path.write_text(textwrap.dedent(f'''\
        from lclmt_jax.config_schema import default_config
        from lclmt_jax.configs import mnist_variant


        def get_config(variant=''):
            return mnist_variant(default_config(), variant)


        def get_sweep(variant=''):
            return [{{'member': {name!r}, 'method': 'plain'}}]
    '''))
    with pytest.raises(ValueError, match=re.escape(f'sweep member name {name!r} is not allowed')):
        sweeps.Sweep.load(f'{path}:embedded')
    if name == '../escaped':
        workdir = str(tmp_path / 'sweep')
        result = _launch(f'--config={path}:embedded', f'--workdir={workdir}', '--sweep=run')
        _one_error_line(result, "sweep member name '../escaped' is not allowed")
        assert not os.path.exists(workdir) and not os.path.exists(tmp_path / 'escaped')


def test_manifest_entries_are_confined_before_anything_is_read(run, tmp_path):
    root = checkpoints.checkpoint_directory(run)
    directory = checkpoints.step_directory(root, 2)
    outside = tmp_path / 'outside'
    outside.write_bytes(b'secret')
    manifest_path = os.path.join(directory, manifest.MANIFEST)
    entries = json.load(open(manifest_path))
    opened = []
    sys.addaudithook(lambda event, args: opened.append(str(args[0]))
                     if event == 'open' and str(outside) in str(args[0]) else None)
    for entry in ('../../../outside', str(outside)):
        json.dump({**entries, entry: [6, hashlib.sha256(b'secret').hexdigest()]},
                  open(manifest_path, 'w'))
        with pytest.raises(manifest.DamagedCheckpointError, match='not a file of the '
                                                                     'checkpoint'):
            manifest.verify(directory)
    assert opened == []  # never followed, never hashed
    json.dump(entries, open(manifest_path, 'w'))
    assert manifest.verify(directory)
    os.symlink(outside, os.path.join(directory, 'extra'))  # a file the manifest does not list
    with pytest.raises(manifest.DamagedCheckpointError, match='extra leads outside'):
        manifest.verify(directory)


def test_orbax_opens_nothing_of_a_damaged_checkpoint(run, capsys):
    """The manifest is checked first: orbax never parses the damaged checkpoint's metadata."""
    _damage_newest(run)
    damaged = os.path.join(checkpoints.checkpoint_directory(run), '2')
    opened = []

    def audit(event, args):  # files of the damaged checkpoint that orbax code opens
        if event == 'open' and str(args[0]).startswith(damaged + os.sep):
            frame = sys._getframe(1)
            while frame is not None:
                if f'{os.sep}orbax{os.sep}' in frame.f_code.co_filename:
                    opened.append(str(args[0]))
                    break
                frame = frame.f_back

    sys.addaudithook(audit)
    assert lclmt_jax.restore(run).epoch == 1
    assert opened == []  # hashed by the manifest check, never parsed
    assert os.path.isdir(damaged + checkpoints.DAMAGED_SUFFIX)


def test_a_workdir_that_is_a_file_is_refused_up_front(tmp_path):
    path = tmp_path / 'a_file'
    path.write_text('not a run')
    trained = _launch(EMBEDDED, f'--workdir={path}', *SMALL, '--config.num_epochs=1')
    _one_error_line(trained, f'--workdir {path} is a file, not a directory')
    below = _launch(EMBEDDED, f'--workdir={path}/run', *SMALL, '--config.num_epochs=1')
    _one_error_line(below, f'--workdir {path}/run lies below {path}, which is a file')
    evaluated = _launch('--mode=evaluate', f'--workdir={path}')
    _one_error_line(evaluated, f'{path} is a file, not the workdir of a run')
    assert path.read_text() == 'not a run' and sorted(os.listdir(tmp_path)) == ['a_file']


def test_evaluate_and_restore_create_nothing_in_a_missing_workdir(tmp_path):
    workdir = str(tmp_path / 'missing')
    result = _launch('--mode=evaluate', f'--workdir={workdir}')
    _one_error_line(result, f'{workdir} does not exist: there is no run to restore')
    with pytest.raises(checkpoints.NoCheckpointError, match='does not exist'):
        lclmt_jax.restore(workdir)
    os.makedirs(workdir)
    with pytest.raises(checkpoints.NoCheckpointError, match='holds no checkpoint'):
        lclmt_jax.restore(workdir)
    assert os.listdir(workdir) == [] and os.listdir(tmp_path) == ['missing']


# 6. One line for each case, exit status 1, nothing lost.

def test_a_truncated_config_json_is_named(run):
    path = os.path.join(run, run_files.CONFIG_FILE)
    content = open(path).read()
    open(path, 'w').write(content[:len(content) // 2])
    before = _snapshot(run)
    result = _launch(EMBEDDED, f'--workdir={run}', *SMALL, '--config.num_epochs=3')
    _one_error_line(result, f'{path} is not valid JSON (')
    compared = _launch('--mode=compare', f'--workdir={run}_compared', f'--runs={run}')
    _one_error_line(compared, f'{path} is not valid JSON (')
    assert _snapshot(run) == before


FULL_DISK = textwrap.dedent('''\
    import runpy, sys
    import orbax.checkpoint as ocp

    save = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):  # what orbax raises when the disk is full
        if step == 2:
            raise ValueError('RESOURCE_EXHAUSTED: Error writing "params" in OCDBT database: '
                             'Failed to write 601730 bytes to file 15: No space left on device '
                             "[os_error_code='28']")
        return save(self, step, *args, **kwargs)

    ocp.CheckpointManager.save = full_disk
    sys.argv = ['launch.py', *sys.argv[1:]]
    runpy.run_path('launch.py', run_name='__main__')
''')


def test_a_full_disk_is_one_line_with_the_path_and_the_space_needed(tmp_path):
    workdir = str(tmp_path / 'run')
    script = tmp_path / 'full_disk.py'
    script.write_text(FULL_DISK)
    result = subprocess.run([sys.executable, str(script), EMBEDDED, f'--workdir={workdir}',
                             *SMALL, '--config.num_epochs=3'], cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    root = checkpoints.checkpoint_directory(workdir)
    line = _one_error_line(result, f'no space left on device writing {root}/2: it needs about ')
    needed = sum(os.path.getsize(os.path.join(r, n))
                 for r, _, names in os.walk(os.path.join(root, '1')) for n in names)
    assert f'it needs about {needed / 1e6:.1f} MB' in line
    assert line.endswith('are free; the checkpoint of epoch 1 is kept; free some space and '
                         'resume with the same command')
    assert _checkpoint_folders(workdir) == ['1'] and _all_verify(workdir)
    assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_FILE))
    resumed = _launch(EMBEDDED, f'--workdir={workdir}', *SMALL, '--config.num_epochs=3')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r['epoch'] for r in run_files.read_metrics(workdir)] == [1, 2, 3]


def test_ctrl_c_is_one_line_and_the_same_command_resumes(tmp_path):
    workdir, log_path = str(tmp_path / 'run'), str(tmp_path / 'run.log')
    command = [EMBEDDED, f'--workdir={workdir}', *SMALL, '--config.num_epochs=100000']
    process = _start(log_path, *command)
    try:
        _wait_for(lambda: len(checkpoints.saved_epochs(checkpoints.checkpoint_directory(
            workdir))) >= 2, process, log_path, 'two checkpoints')
        assert _interrupted(process, log_path) == 1
    finally:
        _stop(process)
    lines = [line for line in open(log_path).read().splitlines()
             if not line.startswith(('epoch ', 'training mlp '))]  # progress, the start-up line
    kept = checkpoints.latest_epoch(workdir)
    assert len(lines) == 1 and lines[0].startswith('error: interrupted at epoch '), lines
    assert lines[0].endswith(f'; the checkpoint of epoch {kept} is kept; resume with the same '
                             'command')
    assert _all_verify(workdir)
    assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_FILE))
    # the same command, one epoch further than the kept checkpoint
    resumed = _launch(*command[:-1], f'--config.num_epochs={kept + 1}')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'resuming from the checkpoint of epoch {kept}' in resumed.stderr
    assert [r['epoch'] for r in run_files.read_metrics(workdir)] == list(range(1, kept + 2))
