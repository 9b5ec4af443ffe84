"""The WRN experiments of docs/SVHN.md, on the SVHN-like stand-in (SVHN is not available offline).

Five runs of WRN-10-1 (the ``smoke`` WRN) on coloured 32x32x3 MNIST digits
(``scripts/make_svhn_standin.py``: 20,000 train / 2,000 test), 6 epochs of Adam (lr 1e-3,
batch 128; SGD's plain baseline is at 30% train accuracy after 4 epochs here), epsilon warm-up
over 2 epochs: plain; LC-LMT and LMT at eps = 1/255 and 0.2/255 (the paper's 1.0 and 0.2 in
0-255 pixel units). Add members to study more, e.g. ``{'method': 'lc_lmt', 'epsilon': 1.0}``
(the [0, 1] reading) or ``{..., 'epsilon_warmup_epochs': 0.0}`` (no warm-up).

  python scripts/make_svhn_standin.py --mnist=../shared/data/mnist --out=runs/svhn_standin.npz
  python launch.py --config=experiments/svhn_standin.py --workdir=runs/svhn_standin --sweep=run \
      --max_examples=100
(about 30 minutes on a 2-core CPU; training ~3.5 and evaluation ~2.5 minutes per run).
"""

import ml_collections

from lclmt_jax.configs import SVHN_PIXEL, check_variant, default_config, svhn_variant


def get_config(variant: str = ''):
    check_variant(variant, ('',))
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
    config.attack.batch_size = 500
    return config


def get_sweep(variant: str = ''):
    del variant
    return [
        {'method': 'plain'},
        *({'method': method, 'epsilon': k * SVHN_PIXEL}
          for k in (1.0, 0.2) for method in ('lc_lmt', 'lmt')),
    ]
