"""Test session setup: four faked CPU devices (chex), so every test also exercises data
parallelism, and one small trained run per test worker, shared by the evaluation, restore,
report, checkpoint and bad-input tests (read-only, or as a private copy)."""

import os
import shutil
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')  # as launch.py: small float64 factorizations

import chex  # noqa: E402
import pytest  # noqa: E402

from lclmt_jax import compilation_cache  # noqa: E402

NUM_FAKE_DEVICES = 4
chex.set_n_cpu_devices(NUM_FAKE_DEVICES)  # before anything starts a JAX backend

# One persistent compilation cache for the whole session, shared by the xdist workers and the
# launch.py subprocesses they start (which read $LCLMT_JAX_CACHE): the many runs of the same
# small configurations compile each program once. It lives in the temporary directory, never in
# the user's own cache; JAX keys entries by program, backend and version, so reuse is safe.
os.environ.setdefault('LCLMT_JAX_CACHE', os.path.join(tempfile.gettempdir(),
                                                      'lclmt_jax_test_xla_cache'))
# JAX's own variables too, so that every Python subprocess of the tests (benchmarks/gpu.sh, a
# fresh interpreter restoring a run) reads and fills the same cache, not only launch.py.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.environ['LCLMT_JAX_CACHE'])
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.1')
compilation_cache.enable()


def trained_config():
    """``experiments/mnist_lc.py:embedded`` (LC-LMT on the embedded digits) for 3 epochs with a
    checkpoint after each, and a small CW-L2 attack configured."""
    from lclmt_jax import config_schema, configs

    config = configs.mnist_variant(config_schema.default_config(), 'embedded')
    config.update(num_epochs=3, checkpoint_every_epochs=1)
    config.evals.cw_l2.update(steps=30, binary_search_steps=3, batch_size=200)
    return config


@pytest.fixture(scope='session')
def _pristine_run(tmp_path_factory):
    """The run of ``trained_config``, trained once per worker; never handed out itself."""
    from lclmt_jax import train

    workdir = str(tmp_path_factory.mktemp('pristine') / 'run')
    train.train_and_evaluate(trained_config(), workdir)
    return workdir


@pytest.fixture(scope='session')
def trained_run_copy(_pristine_run, tmp_path_factory):
    """``trained_run_copy()``: a fresh copy of the shared run (checkpoints of epochs 1, 2 and 3)
    for a test that changes, damages or resumes it."""
    def copy() -> str:
        workdir = str(tmp_path_factory.mktemp('copy') / 'run')
        shutil.copytree(_pristine_run, workdir, symlinks=True)
        return workdir

    return copy


@pytest.fixture(scope='session')
def trained_workdir(trained_run_copy):
    """The shared run, for tests that read it or write its evaluation (one copy per worker)."""
    return trained_run_copy()
