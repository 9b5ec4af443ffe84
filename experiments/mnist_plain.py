"""Plain softmax cross-entropy (no inflation) on MNIST with the paper's 4-layer MLP.

  python launch.py --config=experiments/mnist_plain.py:idx --workdir=runs/mnist_plain \
      --config.data.path=../shared/data/mnist
Quick start on embedded data: --config=experiments/mnist_plain.py:embedded
"""

from lclmt_jax.config_schema import default_config
from lclmt_jax.configs import mnist_variant


def get_config(variant: str = ''):
    config = default_config()
    config.method = 'plain'
    return mnist_variant(config, variant)
