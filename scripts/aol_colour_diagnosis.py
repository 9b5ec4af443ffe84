"""Why the AOL LipConvNet did not learn the SVHN-like stand-in, and what each fix buys.

Two measurements on the stand-in (``runs/svhn_standin.npz``, scripts/make_svhn_standin.py):

1. *Features at initialisation*: a linear probe (softmax regression on standardised features of
   5,000 training images, scored on 1,000 test images) on the body of an untrained
   ``LipConvNet(layer='aol')``, for AOL's identity (Dirac) init and for ``neighbour_pairs_init``.
   Random ink and background colours flip the sign of a digit's contrast from image to image; a
   body that starts linear in the image (the identity) has no feature that keeps its sign.
2. *Learning*: ``--steps`` Adam steps (1e-3, batch 64, gradients clipped to 3) of plain
   cross-entropy, T·CE(logits / T), for the identity init, and for the neighbour-pair init with
   the input centred (x - 1/2) at T = 1, 1/4 and 1/10; test accuracy on 1,000 test images.

  python scripts/aol_colour_diagnosis.py --data=runs/svhn_standin.npz     # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from lclmt_jax.layers import aol  # noqa: E402
from lclmt_jax.models.lipconvnet import LipConvBody, LipConvNet  # noqa: E402


@contextlib.contextmanager
def identity_init():
    """AOL convs built inside start as the identity (``aol.dirac_init``), the former default."""
    default = aol.neighbour_pairs_init
    aol.neighbour_pairs_init = aol.dirac_init
    try:
        yield
    finally:
        aol.neighbour_pairs_init = default


def probe_accuracy(x_train, y_train, x_test, y_test, steps: int = 300) -> float:
    """Test accuracy of softmax regression on standardised features (Adam 1e-2, small L2)."""
    mean, scale = x_train.mean(0), x_train.std(0) + 1e-6
    train, test = (x_train - mean) / scale, (x_test - mean) / scale
    weights = jnp.zeros((train.shape[1], 10))
    optimizer = optax.adam(1e-2)
    state = optimizer.init(weights)

    @jax.jit
    def step(weights, state):
        grads = jax.grad(lambda w: optax.softmax_cross_entropy_with_integer_labels(
            train @ w, y_train).mean() + 1e-4 * jnp.sum(w ** 2))(weights)
        updates, state = optimizer.update(grads, state)
        return weights + updates, state

    for _ in range(steps):
        weights, state = step(weights, state)
    return float(np.mean(np.argmax(test @ weights, -1) == y_test))


def features_at_init(images: np.ndarray) -> np.ndarray:
    """The flat features of an untrained AOL LipConvBody (width 16, 3 blocks of 2)."""
    body = LipConvBody(layer='aol')
    variables = body.init(jax.random.key(0), images[:2])
    apply = jax.jit(lambda x: body.apply(variables, x)[0])
    return np.concatenate([np.asarray(apply(images[i:i + 500]))
                           for i in range(0, len(images), 500)])


def trained_accuracy(data, steps: int, temperature: float, center_input: bool) -> float:
    """Test accuracy of an AOL LipConvNet after ``steps`` updates of T·CE(logits / T)."""
    x_train, y_train, x_test, y_test = data
    model = LipConvNet(layer='aol', center_input=center_input)
    params = model.init(jax.random.key(0), x_train[:2])
    optimizer = optax.chain(optax.clip_by_global_norm(3.0), optax.adam(1e-3))
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, x, y):
        grads = jax.grad(lambda p: temperature * optax.softmax_cross_entropy_with_integer_labels(
            model.apply(p, x).logits / temperature, y).mean())(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    rng = np.random.default_rng(0)
    for _ in range(steps):
        rows = rng.integers(0, len(y_train), 64)
        params, state = step(params, state, x_train[rows], y_train[rows])
    logits = model.apply(params, x_test)
    return float(np.mean(np.argmax(logits.logits, -1) == y_test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', default='runs/svhn_standin.npz')
    parser.add_argument('--steps', type=int, default=400)
    args = parser.parse_args()
    archive = np.load(args.data)
    data = (archive['x_train'][:20000].astype(np.float32) / 255, archive['y_train'][:20000],
            archive['x_test'][:1000].astype(np.float32) / 255, archive['y_test'][:1000])
    start = time.time()
    print('linear probe on the untrained body (test accuracy):')
    for name, context in (('identity init', identity_init), ('neighbour pairs', None)):
        with context() if context else contextlib.nullcontext():
            train = features_at_init(data[0][:5000])
            test = features_at_init(data[2])
        print(f'  {name:18s} {probe_accuracy(train, data[1][:5000], test, data[3]):.3f}')
    print(f'after {args.steps} steps of T·CE(logits / T) (test accuracy):')
    settings = (('identity init, T = 1', True, 1.0, False),
                ('pairs, centred, T = 1', False, 1.0, True),
                ('pairs, centred, T = 1/4', False, 0.25, True),
                ('pairs, centred, T = 1/10', False, 0.1, True))
    for name, identity, temperature, center in settings:
        with identity_init() if identity else contextlib.nullcontext():
            accuracy = trained_accuracy(data, args.steps, temperature, center)
        print(f'  {name:26s} {accuracy:.3f}   ({time.time() - start:.0f} s so far)', flush=True)


if __name__ == '__main__':
    main()
