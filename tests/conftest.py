"""Test session setup: four faked CPU devices (chex), so every test also exercises data
parallelism, and one small trained run shared by the evaluation and restore tests."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')  # as launch.py: small float64 factorizations

import chex  # noqa: E402
import pytest  # noqa: E402

NUM_FAKE_DEVICES = 4
chex.set_n_cpu_devices(NUM_FAKE_DEVICES)  # before anything starts a JAX backend


@pytest.fixture(scope='session')
def trained_workdir(tmp_path_factory):
    """LC-LMT on the embedded digits for 3 epochs, with a small CW-L2 attack configured."""
    from lclmt_jax import configs, train

    workdir = str(tmp_path_factory.mktemp('run'))
    config = configs.mnist_variant(configs.default_config(), 'embedded')
    config.num_epochs = 3
    config.evals.cw_l2.update(steps=30, binary_search_steps=3, batch_size=200)
    train.train_and_evaluate(config, workdir)
    return workdir
