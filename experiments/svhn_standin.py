"""The WRN experiments of docs/SVHN.md, on the SVHN-like stand-in (SVHN is not available offline).

WRN-10-1 (the ``smoke`` WRN) on coloured 32x32x3 MNIST digits (``scripts/make_svhn_standin.py``:
20,000 train / 2,000 test), 6 epochs of Adam (lr 1e-3, batch 128; why not SGD: docs/SVHN.md),
epsilon warm-up over 2 epochs, the paper's global LMT and LC-LMT. Variants (the two readings of the paper's SVHN radii, configs.svhn_variant):
* ``''``: epsilon in [0, 1] pixel units (the LMT code from its NeurIPS version on): plain, then
  LC-LMT and LMT at eps = 1.0 and 0.2;
* ``v1``: 0-255 pixel units (arXiv v1's code): LC-LMT and LMT at eps = 1/255 and 0.2/255.
Every run logs ``train_accuracy_inflated`` (Table 1's training accuracy in the reference code)
beside the clean ``train_accuracy``, and the sound/training bound ratio per epoch.

  python scripts/make_svhn_standin.py --mnist=../shared/data/mnist --out=runs/svhn_standin.npz
  python launch.py --config=experiments/svhn_standin.py --workdir=runs/svhn_standin --sweep=run \
      --max_examples=100
  python launch.py --config=experiments/svhn_standin.py:v1 --workdir=runs/svhn_standin_v1 \
      --sweep=run --max_examples=100
Results and timings: docs/SVHN.md.
"""

import ml_collections

from lclmt_jax.config_schema import default_config
from lclmt_jax.configs import SVHN_PIXEL, check_variant, svhn_variant


def get_config(variant: str = ''):
    check_variant(variant, ('', 'v1'))
    config = svhn_variant(default_config(), 'smoke')
    config.data.source = 'npz'
    config.data.path = 'runs/svhn_standin.npz'
    config.num_epochs = 6
    config.epsilon_warmup_epochs = 2.0
    config.batch_size = 128
    config.eval_batch_size = 500
    config.optimizer = 'adam'
    config.optimizer_kwargs = ml_collections.ConfigDict()  # not SGD's momentum
    config.learning_rate = 1e-3
    config.schedule = 'constant'
    config.weight_decay = 0.0
    config.checkpoint_every_epochs = 6
    config.evals.cw_l2.batch_size = 500
    return config


def get_sweep(variant: str = ''):
    if variant == 'v1':
        radii = {'1_255': SVHN_PIXEL, '0.2_255': 0.2 * SVHN_PIXEL}
        plain = []
    else:
        radii = {'1.0': 1.0, '0.2': 0.2}
        plain = [{'member': 'plain', 'method': 'plain'}]
    return plain + [{'member': f'{method}_eps{label}', 'method': method, 'epsilon': epsilon}
                    for label, epsilon in radii.items() for method in ('lc_lmt', 'lmt')]
