"""Every speed figure of the project in one run, printed as one table (``benchmarks/gpu.sh``).

  python benchmarks/suite.py                 # full sizes (a GPU: a few minutes)
  python benchmarks/suite.py --small         # CPU-sized smoke run (the tests run this)

Rows: the paper MLP's epoch (60,000 MNIST-shaped images, batch 100) and the 4C3F CNN's epoch
(experiments/mnist_certified_cnn.py), each with the default training (pairwise LC-LMT, the
tracked block bound) and with the paper's recipe (``configs.paper_recipe``: global LC-LMT, one
power-iteration step and vector per layer); the train step of the colour models of
experiments/cifar10_certified.py (batch 256, 32x32x3: LiResNet and GloRo's 6C2F, default and
paper recipe; the AOL, SLL and CPL LipConvNets); the WRN-16-4 train step (batch 128, 32x32x3, SVHN
config) for plain training and LC-LMT; CW-L2 (100 steps x 5 rounds) on 10,000 images of the
paper MLP; sound certification (float64 bounds, logits and pairwise radii) of the paper MLP and
the 4C3F on 10,000 images. Every row is the median of ``--repeats`` timed runs after one untimed
run that compiles; pixel values do not change the cost, so images are random. The functions
timed are the trainer's and evaluator's own.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lclmt_jax import (  # noqa: E402
    attacks,
    certify,
    configs,
    input_pipeline,
    metrics,
    models,
    train,
)

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')

# (experiments/cifar10_certified.py variant, row name, whether it trains with an estimator: the
# AOL/SLL bodies are 1-Lipschitz by construction, so they have no paper-recipe counterpart).
COLOUR_MODELS = (('', 'LiResNet', True), ('6c2f', '6C2F', True), ('aol', 'LipConvNet-AOL', False),
                 ('sll', 'LipConvNet-SLL', False), ('cpl', 'LipConvNet-CPL', False))


def experiment(name: str, variant: str = ''):
    """``experiments/<name>.py``'s ``get_config(variant)``."""
    path = os.path.join(REPO, 'experiments', f'{name}.py')
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``run()`` (blocking on its result) after one untimed call."""
    jax.block_until_ready(run())
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def random_images(count: int, shape: tuple[int, ...], seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (count, *shape), dtype=np.uint8),
            rng.integers(0, 10, count).astype(np.int32))


def epoch_seconds(config, shape: tuple[int, ...], examples: int, repeats: int) -> float:
    """Median time of the trainer's jitted on-device epoch over ``examples`` random images."""
    trainer = train.create_trainer(config, shape, 10, examples // config.batch_size)
    holder = {'state': trainer.state}
    arrays = input_pipeline.replicate(trainer.mesh, random_images(examples, shape))
    epoch = input_pipeline.device_train_epoch(trainer.train_step, trainer.mesh,
                                              config.batch_size, examples)

    def run():
        holder['state'], totals = epoch(holder['state'], *arrays, jax.random.key(1))
        return totals

    return median_seconds(run, repeats)


def step_seconds(config, shape: tuple[int, ...], steps: int, repeats: int) -> float:
    """Median time per step of the trainer's jitted step (host pipeline), ``steps`` per run."""
    trainer = train.create_trainer(config, shape, 10, steps)
    holder = {'state': trainer.state,
              'metrics': input_pipeline.replicate(trainer.mesh, metrics.TrainMetrics.empty())}
    batch = input_pipeline.to_global_batch(trainer.mesh, random_images(config.batch_size, shape))
    step = input_pipeline.accumulating_step(trainer.train_step, trainer.mesh)

    def run():
        for _ in range(steps):
            holder['state'], holder['metrics'] = step(holder['state'], holder['metrics'], *batch)
        return holder['metrics']

    return median_seconds(run, repeats) / steps


def restored_like(config, shape: tuple[int, ...]):
    """A freshly initialised model of ``config`` and its variables (host numpy)."""
    model = models.create_model(config, 10)
    return model, jax.device_get(models.init_variables(model, jax.random.key(0), shape))


def certification_seconds(config, shape: tuple[int, ...], examples: int, repeats: int) -> float:
    """Median time of a sound certification: float64 bounds, logits and pairwise radii."""
    model, variables = restored_like(config, shape)
    images = random_images(examples, shape)[0].astype(np.float32) / 255
    labels = np.zeros(examples, np.int32)

    def run():
        bounds = certify.sound_bounds(model, variables, shape)
        logits = certify.logits_float64(model, variables, images)
        return certify.certified_radii(logits, labels, bounds, 'pairwise')

    return median_seconds(run, repeats)


def cw_seconds(config, shape: tuple[int, ...], examples: int, steps: int, repeats: int) -> float:
    """Median time of CW-L2 (``steps`` Adam steps x 5 rounds) on ``examples`` images."""
    model, variables = restored_like(config, shape)
    images = random_images(examples, shape)[0].astype(np.float32) / 255
    logits = jax.jit(lambda x: model.apply(variables, x).logits)
    labels = np.asarray(np.argmax(logits(images), axis=-1), np.int32)
    cw = attacks.CWConfig(steps=steps, batch_size=examples)
    return median_seconds(lambda: attacks.cw_l2_min_norms(logits, images, labels, cw), repeats)


GROUPS = ('mnist', 'colour', 'wrn', 'evaluation')


def measure(small: bool, repeats: int, groups: tuple[str, ...] = GROUPS) -> list[dict]:
    """The rows of ``groups`` (all by default): name, size, median seconds, images per second."""
    rows = []

    def row(name: str, size: str, seconds: float, images: int) -> None:
        rows.append({'measurement': name, 'size': size, 'seconds': seconds,
                     'images_per_second': images / seconds})
        print(f'{name}: {seconds:.4g} s ({images / seconds:,.0f} images/s)', flush=True)

    recipes = (('default', lambda config: config), ('paper recipe', configs.paper_recipe))
    if 'mnist' in groups:
        mnist_rows(row, recipes, small, repeats)
    if 'colour' in groups:
        colour_rows(row, recipes, small, repeats)
    if 'wrn' in groups:
        wrn_rows(row, small, repeats)
    if 'evaluation' in groups:
        evaluation_rows(row, small, repeats)
    return rows


def mnist_rows(row: Callable, recipes: tuple, small: bool, repeats: int) -> None:
    """The paper MLP's and the 4C3F's epochs, default and paper recipe."""
    mnist, examples = (28, 28, 1), 2000 if small else 60_000
    for label, recipe in recipes:
        row(f'paper MLP epoch, {label}', f'{examples} images, batch 100',
            epoch_seconds(recipe(experiment('mnist_lc')), mnist, examples, repeats), examples)
    cnn_examples = 256 if small else examples  # XLA:CPU's conv gradients are slow in a scan
    for label, recipe in recipes:
        cnn = recipe(experiment('mnist_certified_cnn'))
        row(f'4C3F epoch, {label}', f'{cnn_examples} images, batch {cnn.batch_size}',
            epoch_seconds(cnn, mnist, cnn_examples, repeats), cnn_examples)


def colour_rows(row: Callable, recipes: tuple, small: bool, repeats: int) -> None:
    """The colour models' train steps (``COLOUR_MODELS``)."""
    colour_batch = 16 if small else 256
    for variant, name, with_estimator in COLOUR_MODELS:
        for label, recipe in recipes if with_estimator else recipes[:1]:
            config = recipe(experiment('cifar10_certified', variant + (',short' if small else '')))
            config.batch_size = colour_batch
            row(f'{name} step, {label}', f'batch {colour_batch}, 32x32x3',
                step_seconds(config, (32, 32, 3), 2, repeats), colour_batch)


def wrn_rows(row: Callable, small: bool, repeats: int) -> None:
    """The WRN train step, plain and LC-LMT."""
    for method, name in (('plain', 'svhn_plain'), ('lc_lmt', 'svhn_lc')):
        wrn = experiment(name, 'smoke' if small else '')
        wrn.batch_size = 16 if small else 128
        row(f'WRN-{wrn.wrn.depth}-{wrn.wrn.width} step, {method}',
            f'batch {wrn.batch_size}, 32x32x3', step_seconds(wrn, (32, 32, 3), 2, repeats),
            wrn.batch_size)


def evaluation_rows(row: Callable, small: bool, repeats: int) -> None:
    """CW-L2 and sound certification."""
    mnist, test_examples = (28, 28, 1), 500 if small else 10_000
    mlp = experiment('mnist_lc')
    steps = 10 if small else 100
    row('CW-L2, paper MLP', f'{test_examples} images, {steps} steps x 5 rounds',
        cw_seconds(mlp, mnist, test_examples, steps, repeats), test_examples)
    row('sound certification, paper MLP', f'{test_examples} images',
        certification_seconds(mlp, mnist, test_examples, repeats), test_examples)
    row('sound certification, 4C3F', f'{test_examples} images',
        certification_seconds(experiment('mnist_certified_cnn'), mnist, test_examples, repeats),
        test_examples)


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ['| measurement | size | median s | images/s |', '|---|---|---|---|']
    lines += [f'| {r["measurement"]} | {r["size"]} | {r["seconds"]:.4g} | '
              f'{r["images_per_second"]:,.0f} |' for r in rows]
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--small', action='store_true', help='CPU-sized smoke run')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--out', help='also write the rows as JSON here')
    parser.add_argument('--groups', default=','.join(GROUPS),
                        help=f'comma-separated subset of {",".join(GROUPS)}')
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f'jax {jax.__version__}, {jax.device_count()} x {device.platform} '
          f'({getattr(device, "device_kind", "")})', flush=True)
    started = time.perf_counter()
    groups = tuple(args.groups.split(','))
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f'unknown --groups {",".join(unknown)}; choose from {",".join(GROUPS)}')
    rows = measure(args.small, args.repeats, groups)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump({'device': str(device.device_kind), 'rows': rows}, f, indent=2)
    print(f'\n{device.device_kind}, {args.repeats} repeats, '
          f'{time.perf_counter() - started:.0f} s in all\n')
    print(table(rows))


if __name__ == '__main__':
    main()
