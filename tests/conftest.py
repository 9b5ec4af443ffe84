"""Test session setup: four faked CPU devices (chex), so every test also exercises data
parallelism, and one small trained run shared by the evaluation and restore tests."""

import os
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
compilation_cache.enable()


@pytest.fixture(scope='session')
def trained_workdir(tmp_path_factory):
    """LC-LMT on the embedded digits for 3 epochs, with a small CW-L2 attack configured."""
    from lclmt_jax import config_schema, configs, train

    workdir = str(tmp_path_factory.mktemp('run'))
    config = configs.mnist_variant(config_schema.default_config(), 'embedded')
    config.num_epochs = 3
    config.evals.cw_l2.update(steps=30, binary_search_steps=3, batch_size=200)
    train.train_and_evaluate(config, workdir)
    return workdir
