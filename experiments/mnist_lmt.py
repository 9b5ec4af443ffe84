"""LMT (Tsuzuku et al., 2018) on MNIST with the paper's 4-layer MLP, epsilon = 1.0.

Pairwise LMT with the tracked training bound by default; ``:paper`` is the paper's global LMT
with one power-iteration step per update (see experiments/mnist_lc.py).
  python launch.py --config=experiments/mnist_lmt.py:idx --workdir=runs/mnist_lmt \
      --config.data.path=../shared/data/mnist
Quick start on embedded data: --config=experiments/mnist_lmt.py:embedded
"""

from lclmt_jax.config_schema import default_config
from lclmt_jax.configs import mnist_variant


def get_config(variant: str = ''):
    config = default_config()
    config.method = 'lmt_pairwise'
    return mnist_variant(config, variant)
