"""Command-line entry point.

  python launch.py --config=experiments/mnist_lc.py --workdir=DIR        # train
  python launch.py --mode=evaluate --workdir=DIR                          # certify, attack, draw
  python launch.py --mode=compare --workdir=OUT --runs=DIR1,DIR2,...      # overlay runs

Any config field can be overridden, e.g. ``--config.epsilon=0.5 --config.num_epochs=10``.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow (used by TFDS) is chatty

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file (train mode).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (compare mode: output directory).')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'evaluate', 'compare'],
                          'train a config; evaluate the run in --workdir; compare --runs.')
_RUNS = flags.DEFINE_list('runs', [], 'compare mode: workdirs of the runs to overlay.')
_MAX_EXAMPLES = flags.DEFINE_integer('max_examples', None,
                                     'evaluate mode: only the first N test examples.')
flags.mark_flag_as_required('workdir')


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    # Imported here so that --help and flag errors do not wait for JAX and TensorFlow.
    from lclmt_jax import evaluate, train

    try:
        if _MODE.value == 'train':
            if _CONFIG.value is None:
                raise ValueError('--config is required to train')
            train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
        elif _MODE.value == 'evaluate':
            evaluate.evaluate_run(_WORKDIR.value, _MAX_EXAMPLES.value)
        else:
            if not _RUNS.value:
                raise ValueError('--runs=DIR1,DIR2,... is required in compare mode')
            evaluate.compare_runs(_RUNS.value, _WORKDIR.value)
    except (ValueError, FileNotFoundError, train.NonFiniteLossError,
            evaluate.BrokenCertificateError) as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    app.run(main)
