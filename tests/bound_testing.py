"""Helpers shared by the bound tests: converged power iteration, random BN statistics."""

import jax
import jax.numpy as jnp
import numpy as np


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
