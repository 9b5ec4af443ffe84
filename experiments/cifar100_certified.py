"""Certified CIFAR-100 at eps = 36/255: the networks and recipes of cifar10_certified.py.

TFDS ``cifar100`` (50,000 train / 10,000 test, 32x32x3, 100 fine labels;
``--config.data.manual_dir=DIR`` offline). The same variants as experiments/cifar10_certified.py
(``configs.cifar_variant``), the stand-in aside (it has 10 classes): the default LiResNet with
pairwise LC-LMT at 1.5x 36/255; ``6c2f``, ``aol``, ``sll``, ``cpl`` for the other networks;
``short`` for the CPU schedule; and the reference recipes ``liresnet_ref`` (LiResNet's CIFAR-100
settings, the same as its CIFAR-10 ones: EMMA, NAdam in Lookahead, 800 epochs) and ``bronet_ref``
(BRONet's: LA and weight decay 4e-5, on the LiResNet until the ``bro`` model variant is wired
in). With 100 classes the LLN head's pairwise constants |w_t - w_j|·L_body are taken over 99
rivals per point. Every radius in ``evaluation.epsilons`` is certified with the sound bound:
  python launch.py --config=experiments/cifar100_certified.py:liresnet_ref \
      --workdir=runs/cifar100_liresnet_ref --evaluators=certificates,cw_l2 --attack_examples=1000
  python launch.py --config=experiments/cifar100_certified.py:bronet_ref \
      --workdir=runs/cifar100_bronet_ref --evaluators=certificates,cw_l2 --attack_examples=1000
"""

from lclmt_jax.config_schema import default_config
from lclmt_jax.configs import cifar_variant


def get_config(variant: str = ''):
    return cifar_variant(default_config(), variant, 'cifar100')
