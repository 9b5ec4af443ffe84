"""Certified CIFAR-10 at eps = 36/255 with a LiResNet (or GloRo's 6C2F), pairwise LC-LMT.

LiResNet (lclmt_jax/models/liresnet.py; Hu et al., NeurIPS 2023): x - 1/2, stem conv 5x5 /2,
``depth`` residual blocks y = x + conv(x) bounded as one linear map I + K (MinMax after each),
neck conv 4x4 /4 'VALID', dense 512, last-layer-normalised head, certified with the pairwise
constants |w_t - w_j|·L_body. Trained with pairwise LC-LMT at the training radius ``epsilon`` =
1.5 x 36/255 ramped up linearly over the first half of training (LiResNet's ramp), Adam with a
cosine decay, gradients clipped to norm 3; CIFAR-10 with random crops (4 pixels) and horizontal
flips. LiResNet's EMMA loss is one flag away (``--config.method=emma``). Every radius in ``evaluation.epsilons``
(36/255, 72/255, 108/255, 0.2) is certified with the sound bound (float64 circular-embedding
norms) for the float32 network as it runs (``rounding``).

Full schedule (a GPU; TFDS ``cifar10``, ``--config.data.manual_dir=DIR`` offline):
  python launch.py --config=experiments/cifar10_certified.py --workdir=runs/cifar10_liresnet \
      --evaluators=certificates,cw_l2 --attack_examples=1000
GloRo's 6C2F baseline (CNN (32,3).(32,3).(32,4,2).(64,3).(64,3).(64,4,2).512, MinMax, orthogonal
init, plain dense head):
  python launch.py --config=experiments/cifar10_certified.py:6c2f --workdir=runs/cifar10_6c2f \
      --evaluators=certificates,cw_l2 --attack_examples=1000

On the SVHN-like stand-in (coloured MNIST digits, 20,000 train / 2,000 test; no flips, digits
are not mirror-symmetric, and no crops), shortened for a 2-core CPU:
  python scripts/make_svhn_standin.py --mnist=../shared/data/mnist --out=runs/svhn_standin.npz
  python launch.py --config=experiments/cifar10_certified.py:standin,short \
      --workdir=runs/standin_liresnet --config.data.path=runs/svhn_standin.npz \
      --evaluators=certificates,cw_l2 --attack_examples=200
Extra training data mixed into every batch (``--config.data.extra``, lclmt_jax/data/extra.py; the
references' 256 real + 768 generated images a step): ``.source`` and ``.path`` name the set
(``npy``: a directory of .npy files read as memory maps, for sets larger than memory; ``npz``),
``.share`` the fraction of each batch it fills (0, the default: off). An epoch keeps its steps
(the real train set // batch_size), so it draws batch_size·(1 − share) real rows a step. On the
stand-in, extra images made from its own training digits (docs/CERTIFIED.md, "Extra training
data"):
  python scripts/make_svhn_standin.py --mnist=../shared/data/mnist --out=runs/svhn_standin.npz \
      --extra=60000 --extra_out=runs/svhn_standin_extra
  python launch.py --config=experiments/cifar10_certified.py:standin,short \
      --workdir=runs/standin_liresnet_extra --config.data.path=runs/svhn_standin.npz \
      --config.data.extra.source=npy --config.data.extra.path=runs/svhn_standin_extra \
      --config.data.extra.share=0.75 --evaluators=certificates,cw_l2 --attack_examples=200
Variants (parts joined by commas): ``6c2f`` (GloRo's CNN instead of the LiResNet), ``aol`` and
``sll`` (``models/lipconvnet.py``: a ConvNet of AOL or SLL convs, 1-Lipschitz by construction up
to its head, in the style of "1-Lipschitz Layers Compared"), ``standin`` (the npz stand-in at
``--config.data.path``), ``short`` (the CPU schedule: a narrower, shallower LiResNet, 16 epochs,
batch 64). Results, timings and the design runs behind these choices (crops, EMMA, batch size,
the AOL variant): docs/CERTIFIED.md.
"""

import ml_collections

from lclmt_jax.config_schema import default_config
from lclmt_jax.configs import check_variant, liresnet_recipe

EPS36 = 36 / 255
CNN_6C2F = ((32, 3, 1), (32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 3, 1), (64, 4, 2))


def get_config(variant: str = ''):
    parts = variant.split(',')
    for part in parts:
        check_variant(part, ('', '6c2f', 'aol', 'sll', 'standin', 'short'))
    short = 'short' in parts
    config = default_config()
    if 'standin' in parts:
        config.data.source = 'npz'
        config.data.path = 'runs/svhn_standin.npz'
    else:
        config.data.source = 'tfds'
        config.data.name = 'cifar10'
    if '6c2f' in parts:
        config.model = 'cnn'
        config.cnn = ml_collections.ConfigDict({
            'convs': CNN_6C2F, 'dense': (512,), 'activation': 'minmax',
            'weight_init': 'orthogonal'})
    elif 'aol' in parts or 'sll' in parts:
        config.model = 'lipconvnet'
        config.lipconvnet = ml_collections.ConfigDict({
            'layer': 'aol' if 'aol' in parts else 'sll', 'width': 16 if short else 32,
            'blocks': 3, 'layers_per_block': 2 if short else 4})
    else:
        config.model = 'liresnet'
        config.liresnet = ml_collections.ConfigDict({
            'depth': 6 if short else 12, 'width': 32 if short else 128, 'stem_kernel': 5,
            'stem_stride': 2, 'neck_features': 64 if short else 256, 'neck_size': 4,
            'dense_features': 512})
    # the training radius (certified at evaluation.epsilons) and LiResNet's schedule
    liresnet_recipe(config, 1.5 * EPS36, 16 if short else 200)
    if short:  # a short schedule is step-limited: batch 64 gives 4x the updates per epoch
        config.batch_size = 64
    config.augment.crop_padding = 0 if 'standin' in parts else 4
    config.augment.flip = 'standin' not in parts
    config.bound.sound_every_epochs = 4 if short else 20
    config.checkpoint_every_epochs = 4 if short else 20
    config.evaluation.epsilons = (EPS36, 2 * EPS36, 3 * EPS36, 0.2)
    config.evals.cw_l2.batch_size = 500
    return config
