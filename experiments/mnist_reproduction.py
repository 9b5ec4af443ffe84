"""The paper's MNIST protocol as one sweep (docs/REPRODUCTION.md): Figures 1a/1b and 2a.

Nine runs of the 4-layer MLP (784-100-100-100-10, Adam 1e-3, batch 100, 100 epochs), each
trained, then certified and attacked with CW-L2 (100 steps) in ``<workdir>/<member>``: LMT at
epsilon 0.2, 0.5 and 1.0; LC-LMT at 0.2, 0.5, 1.0, 2.0 and 10.0; plain training.

  bash experiments/reproduce.sh ../shared/data/mnist /usr/share/datasets/fashion-mnist runs/reproduction
runs this sweep on MNIST and on Fashion-MNIST (variant ``fashion``) and draws every figure.
A single dataset:
  python launch.py --config=experiments/mnist_reproduction.py:idx --workdir=runs/reproduction/mnist --sweep=run --config.data.path=../shared/data/mnist
Variants: ``''`` (TFDS mnist), ``idx`` (original IDX files in --config.data.path), ``fashion``
(Fashion-MNIST IDX files, by default where Debian's dataset-fashion-mnist installs them).
"""

from lclmt_jax.config_schema import default_config
from lclmt_jax.configs import mnist_variant, paper_recipe

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'


def get_config(variant: str = ''):
    """The members' common config: the paper's MNIST MLP setup."""
    if variant == 'fashion':
        config = paper_recipe(mnist_variant(default_config(), 'idx'))
        config.data.path = FASHION_MNIST_DIR
        return config
    return paper_recipe(mnist_variant(default_config(), variant))


def get_sweep(variant: str = ''):
    del variant  # the same nine runs on every dataset
    return [
        *({'method': 'lmt', 'epsilon': epsilon} for epsilon in (0.2, 0.5, 1.0)),
        *({'method': 'lc_lmt', 'epsilon': epsilon} for epsilon in (0.2, 0.5, 1.0, 2.0, 10.0)),
        {'method': 'plain'},
    ]
