"""Plain training (no inflation) of WRN-16-4 on SVHN (paper Table 1, Figure 2b).

  python launch.py --config=experiments/svhn_plain.py --workdir=runs/svhn_plain
Offline, put TFDS's svhn_cropped files in a directory and add --config.data.manual_dir=DIR.
CPU smoke run of the same path (a depth-10, width-1 WRN, 2 epochs): --config=experiments/svhn_plain.py:smoke
Table 1 from several runs: python launch.py --mode=compare --workdir=runs/svhn_table \
    --runs=runs/svhn_plain,runs/svhn_lmt,runs/svhn_lc   (comparison.csv: train/test accuracy)
"""

from lclmt_jax.config_schema import default_config
from lclmt_jax.configs import svhn_variant


def get_config(variant: str = ''):
    config = default_config()
    config.method = 'plain'
    return svhn_variant(config, variant)
