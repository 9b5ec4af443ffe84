"""Times the Carlini–Wagner L2 attack on the paper's MNIST MLP over a full-size test set, or on
a trained run's first test points.

Usage: ``python benchmarks/bench_cw.py --repeats 3``
       ``python benchmarks/bench_cw.py --workdir=runs/certified_cnn_embedded --num-examples=200``

The network is 784 -> 100 -> 100 -> 100 -> 10 with ReLU and random Lecun-normal weights (taken
from ``lclmt_jax.models.mlp.MLP`` when that module is importable, else a small jnp version defined
here); the images are uniform random 28x28x1 in [0, 1] and the labels are the model's own
predictions, so every example starts correctly classified and is attacked. The first call (which
compiles) is timed on its own, then ``--repeats`` timed calls of ``cw_l2_min_norms`` (which end
in a host copy, so they are complete).
With ``--workdir`` the network is that run's (``lclmt_jax.restore``), the images its first
``--num-examples`` test points with their true labels, and the attack settings its
``config.evals.cw_l2`` unless given here; the summary adds the accuracy under attack at the
run's ``config.evaluation.epsilons``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from lclmt_jax.attacks import (  # noqa: E402
    CWConfig,
    accuracy_under_attack,
    cw_l2_min_norms,
)

HIDDEN = (100, 100, 100)
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)


def _project_mlp(rng: jax.Array):
    """The project's MLP with fresh parameters, or None if the models module is unavailable."""
    try:
        from lclmt_jax.models.mlp import MLP
    except ImportError:
        return None
    model = MLP(hidden_sizes=HIDDEN, num_classes=NUM_CLASSES)
    variables = model.init({'params': rng}, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32))

    def logits_fn(x: jax.Array) -> jax.Array:
        return model.apply(variables, x).logits

    return logits_fn


def _standalone_mlp(rng: jax.Array):
    """Same architecture in plain jnp: Lecun-normal kernels, zero biases."""
    sizes = (int(np.prod(IMAGE_SHAPE)), *HIDDEN, NUM_CLASSES)
    init = jax.nn.initializers.lecun_normal()
    keys = jax.random.split(rng, len(sizes) - 1)
    layers = [(init(k, (m, n), jnp.float32), jnp.zeros((n,), jnp.float32))
              for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)]

    def logits_fn(x: jax.Array) -> jax.Array:
        h = x.reshape((x.shape[0], -1))
        for kernel, bias in layers[:-1]:
            h = jax.nn.relu(h @ kernel + bias)
        kernel, bias = layers[-1]
        return h @ kernel + bias

    return logits_fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=3, help='timed runs after the first call')
    parser.add_argument('--num-examples', type=int, default=10000)
    parser.add_argument('--steps', type=int, default=None, help='default: the run\'s or 100')
    parser.add_argument('--binary-search-steps', type=int, default=None)
    parser.add_argument('--batch-size', type=int, default=None)
    parser.add_argument('--workdir', default=None,
                        help='attack this trained run on its first --num-examples test points')
    parser.add_argument('--standalone', action='store_true',
                        help='use the jnp MLP defined here even if lclmt_jax.models exists')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--abort-early', choices=('on', 'off', 'both'), default='on',
                        help='both: time the attack with and without abort_early, interleaved, '
                             'and compare their norms')
    args = parser.parse_args()

    epsilons = None
    if args.workdir:
        logits_fn, images, labels, config, epsilons = _trained_run(args.workdir,
                                                                   args.num_examples)
        source = f'the run in {args.workdir}'
    else:
        model_rng, data_rng = jax.random.split(jax.random.PRNGKey(args.seed))
        logits_fn = None if args.standalone else _project_mlp(model_rng)
        source = 'lclmt_jax.models.mlp.MLP'
        if logits_fn is None:
            logits_fn, source = _standalone_mlp(model_rng), 'standalone jnp MLP'
        images = np.asarray(jax.random.uniform(data_rng, (args.num_examples, *IMAGE_SHAPE)))
        labels = np.asarray(jnp.argmax(jax.jit(logits_fn)(images), axis=-1), dtype=np.int32)
        config = CWConfig()
    given = {'steps': args.steps, 'binary_search_steps': args.binary_search_steps,
             'batch_size': args.batch_size}
    config = config._replace(**{key: value for key, value in given.items() if value is not None})

    settings = {'on': [True], 'off': [False], 'both': [True, False]}[args.abort_early]
    configs = {abort: config._replace(abort_early=abort) for abort in settings}
    print(f'jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} cpus); '
          f'model: {source}; {configs[settings[0]]}')

    norms, times = {}, {abort: [] for abort in settings}
    for abort, setting in configs.items():
        start = time.perf_counter()
        norms[abort] = cw_l2_min_norms(logits_fn, images, labels, setting)
        print(f'abort_early={abort}: first call (jit compile + run): '
              f'{time.perf_counter() - start:.2f} s')
    for i in range(args.repeats):
        for abort, setting in configs.items():  # interleaved: machine noise hits both alike
            start, cpu_start = time.perf_counter(), time.process_time()
            norms[abort] = cw_l2_min_norms(logits_fn, images, labels, setting)
            times[abort].append(time.perf_counter() - start)
            # CPU seconds of this process: if they fall well short of cores x wall, the machine
            # was shared and the wall time overstates the cost.
            print(f'abort_early={abort} run {i + 1}/{args.repeats}: {times[abort][-1]:.2f} s '
                  f'(process cpu {time.process_time() - cpu_start:.1f} s)')
    medians = {abort: float(np.median(t)) if t else float('nan') for abort, t in times.items()}
    for abort in settings:
        print(f'SUMMARY cw_l2 n={len(labels)} steps={config.steps} '
              f'binary_steps={config.binary_search_steps} abort_early={abort}: median '
              f'{medians[abort]:.2f} s over {len(times[abort])} runs '
              f'[{", ".join(f"{t:.2f}" for t in times[abort])}], '
              f'{_found(norms[abort], epsilons)}')
    if len(settings) == 2:
        on, off = norms[True], norms[False]
        both = np.isfinite(on) & np.isfinite(off) & (off > 0)
        ratio = on[both] / off[both]
        print(f'SUMMARY abort_early on/off: time ratio {medians[True] / medians[False]:.3f}; '
              f'norm ratio on {both.sum()} points found by both: median {np.median(ratio):.4f}, '
              f'max {ratio.max():.4f}' if both.any() else 'no point found by both')


def _found(norms: np.ndarray, epsilons) -> str:
    """What the attack found: how many points, their median norm, accuracy at each radius."""
    finite = norms[np.isfinite(norms)]
    found = f'{finite.size}/{norms.size} found'
    if finite.size:
        found += f', median norm {np.median(finite):.3f}'
    if epsilons is not None:
        accuracies = accuracy_under_attack(norms, epsilons)
        found += ', attack@' + ' '.join(f'{eps:g}:{accuracy:.4f}'
                                        for eps, accuracy in zip(epsilons, accuracies, strict=True))
    return found


def _trained_run(workdir: str, count: int):
    """The restored run's logits, its first ``count`` test points and labels, its attack settings
    and its evaluation radii."""
    from lclmt_jax import data, restore

    restored = restore(workdir)
    config = restored.config
    dataset = data.load_dataset(config.data)
    images = np.asarray(data.to_float(jnp.asarray(dataset.test_images[:count])))
    labels = dataset.test_labels[:count].astype(np.int32)
    settings = {key: value for key, value in dict(config.evals.cw_l2).items()
                if key in CWConfig._fields}
    return (restored.logits, images, labels, CWConfig(**settings),
            tuple(config.evaluation.epsilons))


if __name__ == '__main__':
    main()
