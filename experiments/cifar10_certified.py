"""Certified CIFAR-10 at eps = 36/255 with a LiResNet (or GloRo's 6C2F), pairwise LC-LMT.

LiResNet (lclmt_jax/models/liresnet.py; Hu et al., NeurIPS 2023): x - 1/2, stem conv 5x5 /2,
``depth`` residual blocks y = x + conv(x) bounded as one linear map I + K (MinMax after each),
neck conv 4x4 /4 'VALID', dense 512, last-layer-normalised head, certified with the pairwise
constants |w_t - w_j|·L_body. Trained with pairwise LC-LMT at the training radius ``epsilon`` =
1.5 x 36/255 ramped up linearly over the first half of training (LiResNet's ramp), Adam with a
cosine decay, gradients clipped to norm 3; CIFAR-10 with random crops (4 pixels) and horizontal
flips. LiResNet's EMMA loss is one flag away (``--config.method=emma``). Every radius in
``evaluation.epsilons`` (36/255, 72/255, 108/255, 0.2) is certified with the sound bound (float64
circular-embedding norms) for the float32 network as it runs (``rounding``).

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
Variants (parts joined by commas): ``6c2f`` (GloRo's CNN instead of the LiResNet), ``aol``,
``sll`` and ``cpl`` (``models/lipconvnet.py``: a ConvNet of AOL, SLL or CPL convs, 1-Lipschitz by
construction up to its head, in the style of "1-Lipschitz Layers Compared"), ``standin`` (the
npz stand-in at ``--config.data.path``), ``short`` (the CPU schedule: a narrower, shallower
LiResNet, 16 epochs, batch 64; the stand-in's LiResNet trains 44), and the reference recipes
(``configs.reference_recipe``): ``liresnet_ref``, LiResNet's CIFAR-10 settings (depth 12, width
512, neck 512, dense 2048, EMMA, NAdam 1e-3 in Lookahead, 20 of 800 epochs of warm-up then
cosine, gradient clip 3, training radius 0.1x -> 3x of 36/255 over the first 400 epochs, 10
power-iteration steps per update, crops, flips and RandAugment's colour ops; their 8 residual
dense layers after the neck are not in this LiResNet), and ``bronet_ref``, BRONet's (the same
with the LA loss and weight decay 4e-5), on the same LiResNet; ``bro`` puts BRONet's BRO layers
(lclmt_jax/layers/bro.py) in the residual blocks. Both recipes certify at 36/255 like the default:
  python launch.py --config=experiments/cifar10_certified.py:liresnet_ref \
      --workdir=runs/cifar10_liresnet_ref --evaluators=certificates,cw_l2 --attack_examples=1000
Results, timings and the design runs behind these choices (crops, EMMA, batch size, the AOL
variant), and the reference recipes' commands: docs/CERTIFIED.md.
"""

from lclmt_jax.config_schema import default_config
from lclmt_jax.configs import cifar_variant, stretch_schedule

# The stand-in LiResNet's CPU schedule (``standin,short``): 44 epochs train in 21 min on the
# 2-core CPU and certify 0.892 @36/255 against 0.867 after 16 (docs/CERTIFIED.md).
STANDIN_LIRESNET_EPOCHS = 44


def get_config(variant: str = ''):
    config = cifar_variant(default_config(), variant, 'cifar10', extra=('standin',))
    if 'standin' in variant.split(','):  # coloured digits: no flips, crops or colour ops
        config.data.source = 'npz'
        config.data.name = default_config().data.name  # unread by npz, as before: workdirs resume
        config.data.path = 'runs/svhn_standin.npz'
        config.augment.update(crop_padding=0, flip=False, colour_ops=0)
        if 'short' in variant.split(',') and config.model == 'liresnet':
            stretch_schedule(config, STANDIN_LIRESNET_EPOCHS)
    return config
