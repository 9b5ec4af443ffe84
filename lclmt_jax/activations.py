"""Activations and their Lipschitz constants, by name (``config.<model>.activation``).

An activation is a pure function ``x -> (y, bound)`` with ``bound`` a Lipschitz constant of
``x -> y`` in L2, the same value for training and certification (it does not depend on
parameters). Adding one is a function and a ``register`` line here.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax

from lclmt_jax.registry import Registry

Array = jax.Array
Activation = Callable[[Array], tuple[Array, float]]

ACTIVATIONS: Registry[Activation] = Registry('activation')


@ACTIVATIONS.register('relu')
def relu(x: Array) -> tuple[Array, float]:
    """ReLU and its Lipschitz constant 1 (|max(a,0) - max(b,0)| <= |a - b| elementwise)."""
    return nn.relu(x), 1.0
