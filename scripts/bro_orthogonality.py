"""How orthogonal a BRO conv is (``lclmt_jax.layers.bro``), measured: docs/CERTIFIED.md, "The BRO
layer: orthogonality measured".

For random, identity-like (the init) and trained-like kernels, with zero padding (pad k//2, crop
back: BRONet's LipConvNet layer) and circular padding (the torus itself), on an 8×8 image with 4
channels (rank 2): the exact singular values of the float64 layer's dense matrix (its Jacobian;
the layer is linear), the per-frequency singular values of the float32 and float64 symbols W(w),
the sound bound, and min/max of |BRO(x)|/|x| for the float32 layer over random Gaussian x. Then
the user's measurement: mean and max of |BRO(x) - BRO(z)|/|x - z| of a random-kernel layer on
32×32 with 32 channels (rank 31, as BRONet's own layer test), zero padding.

  PYTHONPATH=. python scripts/bro_orthogonality.py     # about a minute on one CPU core
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lclmt_jax.layers import bro


def random_kernel(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """V ~ N(0, 1): no structure (the scale does not matter, W is scale-invariant)."""
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def init_kernel(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The layer's own init: [I_r; 0] at the centre tap plus N(0, 1/(k²C)²)."""
    return np.asarray(bro.identity_init()(jax.random.key(seed), shape))


def trained_kernel(shape: tuple[int, ...], seed: int, steps: int = 300) -> np.ndarray:
    """From the init, ``steps`` Adam steps (lr 1e-2) fitting a random 3×3 conv's outputs on
    random 8×8 images: a kernel moved by data, as training moves it."""
    rng = np.random.default_rng(seed)
    channels = shape[2]
    target = rng.normal(size=(3, 3, channels, channels)).astype(np.float32) / 3
    images = jnp.asarray(rng.normal(size=(64, 8, 8, channels)), jnp.float32)
    wanted = jax.lax.conv_general_dilated(images, jnp.asarray(target), (1, 1), 'SAME',
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    grid = bro.torus((8, 8), 3, 'zero')

    def loss(kernel):
        out = bro.bro_apply(images, bro.bro_symbol(kernel, grid), 3, 'zero')
        return jnp.mean((out - wanted) ** 2)

    optimizer = optax.adam(1e-2)
    kernel = jnp.asarray(init_kernel(shape, seed))
    state = optimizer.init(kernel)

    @jax.jit
    def step(kernel, state):
        grads = jax.grad(loss)(kernel)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(kernel, updates), state

    for _ in range(steps):
        kernel, state = step(kernel, state)
    return np.asarray(kernel)


def dense_singular_values(kernel: np.ndarray, shape: tuple[int, ...], padding: str) -> np.ndarray:
    """Exact singular values of the float64 layer (bias 0) as a dense matrix."""
    with jax.enable_x64(True):
        grid = bro.torus(shape[:2], kernel.shape[0], padding)
        symbol = bro.bro_symbol(jnp.asarray(kernel, jnp.float64), grid)
        eye = jnp.eye(int(np.prod(shape)), dtype=jnp.float64).reshape(-1, *shape)
        columns = bro.bro_apply(eye, symbol, kernel.shape[0], padding)
    return np.linalg.svd(np.asarray(columns).reshape(len(eye), -1), compute_uv=False)


def norm_ratios(kernel: np.ndarray, shape: tuple[int, ...], padding: str, count: int = 1000,
                seed: int = 0, differences: bool = False) -> np.ndarray:
    """|BRO(x)|/|x| (or |BRO(x) - BRO(z)|/|x - z|) of the float32 layer, Gaussian x and z."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(count, *shape)), jnp.float32)
    grid = bro.torus(shape[:2], kernel.shape[0], padding)
    symbol = bro.bro_symbol(jnp.asarray(kernel), grid)
    apply = jax.jit(lambda a: bro.bro_apply(a, symbol, kernel.shape[0], padding))
    if differences:
        z = jnp.asarray(rng.normal(size=(count, *shape)), jnp.float32)
        out, x = apply(x) - apply(z), x - z
    else:
        out = apply(x)
    return (np.linalg.norm(np.asarray(out, np.float64).reshape(count, -1), axis=1)
            / np.linalg.norm(np.asarray(x, np.float64).reshape(count, -1), axis=1))


def measure_small() -> None:
    shape, kernel_shape = (8, 8, 4), (3, 3, 4, 2)
    kernels = {'random': random_kernel(kernel_shape, 0), 'init': init_kernel(kernel_shape, 0),
               'trained': trained_kernel(kernel_shape, 0)}
    print('| kernel | padding | dense sigma_min | dense sigma_max | symbol64 sigma min..max | '
          'symbol32 max - 1 | bound - 1 | float32 |BRO(x)|/|x| min..max |')
    print('|---|---|---|---|---|---|---|---|')
    for name, kernel in kernels.items():
        for padding in bro.PADDINGS:
            sigma = dense_singular_values(kernel, shape, padding)
            grid = bro.torus(shape[:2], 3, padding)
            w32, w64 = bro.computed_symbols(kernel, grid)
            s64 = np.linalg.svd(w64, compute_uv=False)
            over32 = bro.spectral_norms(w32).max() - 1
            bound = bro.bro_upper_bound(kernel, shape[:2], padding)
            ratios = norm_ratios(kernel, shape, padding)
            print(f'| {name} | {padding} | {sigma.min():.6f} | {sigma.max():.12f} | '
                  f'{s64.min():.6f}..{s64.max():.12f} | {over32:.2e} | {bound - 1:.2e} | '
                  f'{ratios.min():.5f}..{ratios.max():.5f} |')


def measure_users_setting() -> None:
    shape, kernel = (32, 32, 32), random_kernel((3, 3, 32, 31), 1)
    for padding in bro.PADDINGS:
        ratios = norm_ratios(kernel, shape, padding, count=64, differences=True)
        print(f'32x32x32, rank 31, random kernel, {padding}: |BRO(x) - BRO(z)|/|x - z| mean '
              f'{ratios.mean():.5f}, min {ratios.min():.5f}, max {ratios.max():.5f}, bound - 1 = '
              f'{bro.bro_upper_bound(kernel, shape[:2], padding) - 1:.2e}')


if __name__ == '__main__':
    measure_small()
    measure_users_setting()
