"""LMT (Tsuzuku et al., 2018) on MNIST with the paper's 4-layer MLP, epsilon = 1.0.

  python launch.py --config=experiments/mnist_lmt.py --workdir=runs/mnist_lmt \
      --config.data.manual_dir=../shared/data/mnist
Quick start on embedded data: --config=experiments/mnist_lmt.py:embedded
"""

from lclmt_jax.configs import default_config, mnist_variant


def get_config(variant: str = ''):
    config = default_config()
    config.method = 'lmt'
    return mnist_variant(config, variant)
