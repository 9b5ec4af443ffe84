"""Times the WRN train step (SVHN config: WRN-16-4, batch 128, 32×32×3) for plain and LC-LMT.

  python benchmarks/bench_wrn.py --repeats 5

The step is the trainer's own (``input_pipeline.accumulating_step``, the ``host`` pipeline's
jitted step on a global batch sharded over the mesh), built from ``configs.svhn_variant``
exactly as a run builds it (its optimizer, gradient clipping, folded BN bounds). Compilation is
timed separately;
then ``--repeats`` rounds, each timing ``--steps`` consecutive steps per method with the methods
interleaved so that machine noise hits both alike, and the median per-step time is reported.
Pixel values do not change the cost, so the images are random uint8. LC-LMT's extra work over
plain is the backward pass through the Lipschitz estimate (both run the power iteration: one
conv and one transposed conv on a single image per conv layer).
"""

import argparse
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lclmt_jax import config_schema, configs, input_pipeline, metrics, train  # noqa: E402

SHAPE = (32, 32, 3)


def make_step(method: str, args: argparse.Namespace):
    """The trainer's jitted step, its replicated initial state and the zeroed epoch metrics."""
    config = configs.svhn_variant(config_schema.default_config(), '')
    config.method, config.batch_size = method, args.batch_size
    config.wrn.depth, config.wrn.width = args.depth, args.width
    trainer = train.create_trainer(config, SHAPE, 10, steps_per_epoch=args.batches)
    step = input_pipeline.accumulating_step(trainer.train_step, trainer.mesh)
    totals = input_pipeline.replicate(trainer.mesh, metrics.TrainMetrics.empty())
    return step, trainer.state, totals, trainer.mesh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--steps', type=int, default=2, help='timed steps per repeat and method')
    parser.add_argument('--batches', type=int, default=4, help='distinct batches cycled through')
    parser.add_argument('--batch_size', type=int, default=128)
    parser.add_argument('--depth', type=int, default=16)
    parser.add_argument('--width', type=int, default=4)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    num = args.batches * args.batch_size
    images = rng.integers(0, 256, (num, *SHAPE), dtype=np.uint8)
    labels = rng.integers(0, 10, num).astype(np.int32)

    runners, times = {}, {}
    for method in ('plain', 'lc_lmt'):
        step, state, totals, mesh = make_step(method, args)
        batches = [input_pipeline.to_global_batch(mesh, (images[i::args.batches],
                                                         labels[i::args.batches]))
                   for i in range(args.batches)]
        started = time.perf_counter()
        compiled = step.lower(state, totals, *batches[0]).compile()
        compile_seconds = time.perf_counter() - started
        started = time.perf_counter()
        state, totals = jax.block_until_ready(compiled(state, totals, *batches[0]))
        print(f'{method}: compile {compile_seconds:.1f}s, first step '
              f'{time.perf_counter() - started:.2f}s', flush=True)
        runners[method] = {'step': compiled, 'state': state, 'metrics': totals,
                           'batches': batches}
        times[method] = []
    count = 1
    for repeat in range(args.repeats):
        for method, runner in runners.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                batch = runner['batches'][count % args.batches]
                runner['state'], runner['metrics'] = runner['step'](
                    runner['state'], runner['metrics'], *batch)
                count += 1
            jax.block_until_ready(runner['state'])
            times[method].append((time.perf_counter() - started) / args.steps)
        print(f'repeat {repeat + 1}/{args.repeats}: ' + ', '.join(
            f'{method} {t[-1]:.3f}s/step' for method, t in times.items()), flush=True)
    medians = {method: float(np.median(t)) for method, t in times.items()}
    for method, t in times.items():
        loss = float(runners[method]['metrics'].loss.compute())
        print(f'{method}: median {medians[method]:.3f}s per step  (runs: '
              f'{", ".join(f"{x:.3f}" for x in t)}; mean loss {loss:.3g})')
    print(f'WRN-{args.depth}-{args.width}, batch {args.batch_size} of {SHAPE}, devices: '
          f'{jax.device_count()} x {jax.devices()[0].platform}, {args.repeats} repeats of '
          f'{args.steps} steps')
    print(f'lc_lmt / plain = {medians["lc_lmt"] / medians["plain"]:.3f}')


if __name__ == '__main__':
    main()
