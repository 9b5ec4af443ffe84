"""LMT with WRN-16-4 on SVHN (paper Table 1, Figure 2b); epsilon = 1.0 (paper: 0.2, 1.0).

Epsilon in [0, 1] pixel units; why, and the other reading: configs.svhn_variant, docs/SVHN.md.
  python launch.py --config=experiments/svhn_lmt.py --workdir=runs/svhn_lmt
  python launch.py --config=experiments/svhn_lmt.py --workdir=runs/svhn_lmt_0.2 --config.epsilon=0.2
Offline, put TFDS's svhn_cropped files in a directory and add --config.data.manual_dir=DIR.
CPU smoke run of the same path (a depth-10, width-1 WRN, 2 epochs): --config=experiments/svhn_lmt.py:smoke
Table 1 from several runs: python launch.py --mode=compare --workdir=runs/svhn_table \
    --runs=runs/svhn_plain,runs/svhn_lmt,runs/svhn_lc   (comparison.csv: train/test accuracy)
"""

from lclmt_jax.config_schema import default_config
from lclmt_jax.configs import svhn_variant


def get_config(variant: str = ''):
    config = default_config()
    config.method = 'lmt'
    return svhn_variant(config, variant)
