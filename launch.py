"""Command-line entry point.

  python launch.py --config=experiments/mnist_lc.py --workdir=DIR        # train
  python launch.py --config=... --workdir=DIR --evaluators=certificates   # train, then certify
  python launch.py --mode=evaluate --workdir=DIR                          # certify, attack, draw
  python launch.py --mode=compare --workdir=OUT --runs=DIR1,DIR2,...      # overlay runs
  python launch.py --config=experiments/mnist_fig2_sweep.py --workdir=DIR --sweep=run    # a sweep

Any config field can be overridden, e.g. ``--config.epsilon=0.5 --config.num_epochs=10``.
Several processes (TPU pod, Slurm, MPI: detected; otherwise ``--coordinator_address=HOST:PORT
--num_processes=N --process_id=I``) run the same command and train one model together.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow (TFDS, TensorBoard) is chatty
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # and announces oneDNN otherwise
# numpy's float64 sound bounds factor small matrices: BLAS threads only contend with XLA's there
# (a 784x100 SVD: 2 ms on one thread, 60-150 ms on two beside a JAX computation).
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file (train mode).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (compare mode: output directory).')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'evaluate', 'compare'],
                          'train a config; evaluate the run in --workdir; compare --runs.')
_RUNS = flags.DEFINE_list('runs', [], 'compare mode: workdirs of the runs to overlay.')
_MAX_EXAMPLES = flags.DEFINE_integer(
    'max_examples', None, 'evaluate mode, train mode with --evaluators, --sweep: evaluate only the '
    'first N test points, with every evaluator (certificates and attack alike).')
_ATTACK_EXAMPLES = flags.DEFINE_integer(
    'attack_examples', None, 'evaluate mode, train mode with --evaluators: attack only N of the '
    'evaluated test points (certificates still cover all of them): CW-L2 on a CNN is slow on a '
    'CPU. Shorthand for --eval_setting=cw_l2.max_examples=N.')
_EVALUATORS = flags.DEFINE_list('evaluators', None, 'evaluate mode: these evaluators instead of '
                                'the run\'s config.evaluators; train mode: run them on the trained '
                                'model when training ends (one process).')
_EVAL_SETTINGS = flags.DEFINE_multi_string(
    'eval_setting', [], 'NAME.FIELD=VALUE (repeatable): an evaluator setting for this evaluation '
    '(e.g. cw_l2.steps=200); evaluate mode reads the run\'s config.json, not --config.')
_CHECKPOINT = flags.DEFINE_integer('checkpoint', None, 'evaluate mode: the checkpoint of this '
                                   'epoch instead of the newest one that restores.')
_SWEEP = flags.DEFINE_enum('sweep', None, ['run', 'print'],
                           'For a --config file with get_sweep(variant): run = train and evaluate '
                           'every member in --workdir/<member>, then write the comparison table; '
                           'print = one shell command per member, for a scheduler.')
_DISTRIBUTED = flags.DEFINE_enum('distributed', 'auto', ['auto', 'on', 'off'],
                                 'Multi-process runtime: auto = when launched by Slurm/MPI with '
                                 'several tasks, on a TPU VM, or with the flags below.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, for several processes.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes in the job.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process: 0 .. num_processes - 1.')
flags.mark_flag_as_required('workdir')
ATTACK_EXAMPLES_SETTING = 'cw_l2.max_examples'  # what --attack_examples=N stands for


def evaluator_settings() -> list[str]:
    """The ``--eval_setting`` values with ``--attack_examples`` resolved into its setting."""
    shorthand = [] if _ATTACK_EXAMPLES.value is None else [
        f'{ATTACK_EXAMPLES_SETTING}={_ATTACK_EXAMPLES.value}']
    return [*_EVAL_SETTINGS.value, *shorthand]


def _unknown_override(argv: list[str]) -> str | None:
    """The first ``--config.FIELD=...`` of ``argv`` that names no field of the config, or None."""
    from lclmt_jax import config_files, config_schema  # ml_collections only

    files = [arg.split('=', 1)[1] for arg in argv if arg.startswith('--config=')]
    if not files:
        return None
    path, variant = config_files.split_config_file(files[-1])
    config = config_files.load_config_module(path).get_config(variant)
    for arg in argv:
        if arg.startswith('--config.'):
            key = arg[len('--config.'):].split('=', 1)[0]
            try:
                config_schema.check_field(config, key, f'--config.{key}')
            except ValueError as error:
                return str(error)
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with every failure as one line and exit status 1.

    A config file runs arbitrary code while the flags are parsed (an unknown variant raises in
    its ``get_config``), and ml_collections reports unknown fields and wrong types as exceptions
    of its own: none of them is worth a traceback.
    """
    try:
        return flags.FLAGS(argv)
    except Exception as error:  # noqa: BLE001 -- any failure here is a bad command line
        from lclmt_jax.console import one_line

        try:
            message = _unknown_override(argv) or one_line(error)
        except Exception:  # noqa: BLE001 -- the file itself is broken: report the first error
            message = one_line(error)
        if isinstance(error, flags.Error):  # absl's own: a missing, unknown or malformed flag
            message = f'{message.rstrip(".")}; python launch.py --help lists the flags'
        print(f'error: {message}', file=sys.stderr)
        sys.exit(1)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    # Imported here so that --help and flag errors do not wait for JAX and TensorFlow.
    from lclmt_jax import (
        assessment,
        comparison,
        compilation_cache,
        distributed,
        outcomes,
        sweeps,
        train,
        workdir_lock,
    )
    from lclmt_jax.console import one_line

    try:
        # Before anything touches a JAX backend.
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                               _DISTRIBUTED.value)
        compilation_cache.enable()
        if _SWEEP.value:
            if _MODE.value != 'train' or _CONFIG.value is None:
                raise ValueError('--sweep needs --config=FILE[:variant] and the default --mode')
            sweeps.launch(flags.FLAGS['config'], _SWEEP.value, _WORKDIR.value,
                          _MAX_EXAMPLES.value, program=sys.argv[0])
        elif _MODE.value == 'train':
            if _CONFIG.value is None:
                raise ValueError('--config is required to train')
            if _EVALUATORS.value:  # a bad evaluation is refused before the training
                assessment.evaluation_config(_CONFIG.value, _EVALUATORS.value,
                                             evaluator_settings(), _MAX_EXAMPLES.value)
            train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
            outcomes.after_training(_WORKDIR.value, evaluating=bool(_EVALUATORS.value))
            if _EVALUATORS.value:
                summary = assessment.evaluate_run(_WORKDIR.value, _MAX_EXAMPLES.value,
                                                  _EVALUATORS.value,
                                                  evaluator_settings=evaluator_settings())
                outcomes.after_evaluation(_WORKDIR.value, summary)
        elif _MODE.value == 'evaluate':
            if _CONFIG.value is not None:
                raise ValueError('--mode=evaluate reads the run\'s own config.json; drop --config '
                                 'and set evaluator settings with --eval_setting NAME.FIELD=VALUE')
            summary = assessment.evaluate_run(_WORKDIR.value, _MAX_EXAMPLES.value,
                                              _EVALUATORS.value, _CHECKPOINT.value,
                                              evaluator_settings())
            outcomes.after_evaluation(_WORKDIR.value, summary)
        else:
            if not _RUNS.value:
                raise ValueError('--runs=DIR1,DIR2,... is required in compare mode')
            table = comparison.compare_runs(_RUNS.value, _WORKDIR.value)
            outcomes.after_comparison(_WORKDIR.value, _RUNS.value, table)
    except (ValueError, OSError, train.NonFiniteLossError, train.TrainingInterrupted,
            assessment.BrokenCertificateError, sweeps.SweepError,
            workdir_lock.WorkdirLockedError) as error:
        print(f'error: {one_line(error)}', file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # outside a training loop: nothing half-done to report
        print('error: interrupted; nothing is lost: rerun the same command', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
