"""Helpers shared by the bound tests: exact dense conv matrices, converged power iteration,
random BN statistics, random unit vectors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lclmt_jax import convolution


def unit(shape, seed) -> jax.Array:
    """A random float32 array of unit L2 norm."""
    x = np.random.default_rng(seed).normal(size=shape)
    return jnp.asarray(x / np.linalg.norm(x), jnp.float32)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def conv_matrix(kernel, input_shape, stride, padding):
    """The bias-free conv on one input of ``input_shape`` as a dense (outputs × inputs) matrix.

    The conv is linear, so its Jacobian is the conv itself; each entry is a kernel weight or 0.
    """
    strides = convolution.pair(stride, 'stride')
    pads = convolution.conv_padding(padding, input_shape[:2], kernel.shape[:2], strides)
    jac = jax.jacobian(lambda x: convolution.conv(x[None], kernel, strides, pads)[0])(
        jnp.zeros(input_shape, kernel.dtype))
    return jac.reshape(int(np.prod(jac.shape[:3])), -1)


def exact_conv_norm(kernel, input_shape, stride, padding) -> float:
    """Largest singular value of the conv's dense matrix, float64 SVD (its entries are exact)."""
    matrix = np.asarray(conv_matrix(kernel, input_shape, stride, padding), np.float64)
    return float(np.linalg.svd(matrix, compute_uv=False)[0])


def converge(model, variables, x, steps=1000):
    """``steps`` training-mode calls that update only the power-iteration vectors."""
    @jax.jit
    def run(variables):
        def body(_, lipschitz):
            _, state = model.apply({**variables, 'lipschitz': lipschitz}, x, train=True,
                                   mutable=['lipschitz'])
            return state['lipschitz']
        return {**variables, 'lipschitz': jax.lax.fori_loop(0, steps, body,
                                                            variables['lipschitz'])}
    return run(variables)


def random_bn_variables(variables, seed):
    """Random gamma (both signs) and running statistics for every BN, as after some training."""
    rng = np.random.default_rng(seed)
    draw = {'scale': lambda shape: rng.uniform(-1.5, 1.5, shape),
            'var': lambda shape: rng.uniform(0.3, 2.0, shape),
            'mean': lambda shape: rng.normal(size=shape)}
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.asarray(draw[path[-1].key](leaf.shape), leaf.dtype)
        if path[-1].key in draw else leaf, variables)
