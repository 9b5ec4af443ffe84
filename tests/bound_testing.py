"""Test helper shared by the bound tests: run power iteration to convergence."""

import jax


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
