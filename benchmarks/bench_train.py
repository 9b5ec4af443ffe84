"""Times one MNIST-sized training epoch (60,000 examples, batch 100) of the paper MLP.

  python benchmarks/bench_train.py --repeats 7

Three trainings: plain; LC-LMT with the paper's recipe (global sqrt(2)·L·eps, one
power-iteration step per update: ``mnist_lc.py:paper``); LC-LMT with the defaults (pairwise, a
block of 16 vectors per layer: ``mnist_lc.py``). The epoch is one jitted call over the on-device
dataset (the same function the trainer uses); compilation is timed separately. Trainings are
interleaved so machine noise hits them alike. Pixel values do not change the cost, so the
images are random uint8 of MNIST's shape.
"""

import argparse
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lclmt_jax import config_schema, configs, input_pipeline, train  # noqa: E402

TRAININGS = {'plain': ('plain', ''), 'lc_lmt_paper': ('lc_lmt', 'paper'),
             'lc_lmt_default': ('lc_lmt_pairwise', '')}


def make_epoch(training: str, num_examples: int, batch_size: int):
    method, variant = TRAININGS[training]
    config = configs.mnist_variant(config_schema.default_config(), variant)
    config.method, config.batch_size = method, batch_size
    trainer = train.create_trainer(config, (28, 28, 1), 10, num_examples // batch_size)
    epoch = input_pipeline.device_train_epoch(trainer.train_step, trainer.mesh, batch_size,
                                              num_examples)
    return epoch, trainer.state, trainer.mesh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--examples', type=int, default=60_000)
    parser.add_argument('--batch_size', type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.examples, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, args.examples).astype(np.int32)

    runners, times = {}, {}
    for training in TRAININGS:
        epoch, state, mesh = make_epoch(training, args.examples, args.batch_size)
        data = input_pipeline.replicate(mesh, (images, labels))
        started = time.perf_counter()
        state, _ = jax.block_until_ready(epoch(state, *data, input_pipeline.epoch_key(0, 0)))
        print(f'{training}: compile + first epoch {time.perf_counter() - started:.2f}s')
        runners[training], times[training] = [epoch, state, data], []
    for repeat in range(args.repeats):
        for training, runner in runners.items():
            epoch, state, data = runner
            started = time.perf_counter()
            key = input_pipeline.epoch_key(0, repeat)
            runner[1], _ = jax.block_until_ready(epoch(state, *data, key))
            times[training].append(time.perf_counter() - started)
    medians = {training: float(np.median(t)) for training, t in times.items()}
    for training, t in times.items():
        print(f'{training}: median {medians[training]:.3f}s per epoch  '
              f'(runs: {", ".join(f"{x:.3f}" for x in t)})')
    print(f'devices: {jax.device_count()} x {jax.devices()[0].platform}; '
          f'{args.examples} examples, batch {args.batch_size}, {args.repeats} repeats')
    print(f'lc_lmt_paper / plain = {medians["lc_lmt_paper"] / medians["plain"]:.3f}')
    print(f'lc_lmt_default / lc_lmt_paper = '
          f'{medians["lc_lmt_default"] / medians["lc_lmt_paper"]:.3f}')


if __name__ == '__main__':
    main()
