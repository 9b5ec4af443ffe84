"""Activations and their Lipschitz constants, by name (``config.<model>.activation``).

An activation is a pure function ``x -> (y, bound)`` with ``bound`` a Lipschitz constant of
``x -> y`` in L2, the same value for training and certification (it does not depend on
parameters, and 1 is exact in floating point). Adding one is a function and a ``register`` line
here. ``relu`` is diagonal (what the WRN's folded BN bounds need); ``minmax`` and ``groupsort4``
keep gradient norms (what deep certified networks need).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lclmt_jax.registry import Registry

Array = jax.Array
Activation = Callable[[Array], tuple[Array, float]]

ACTIVATIONS: Registry[Activation] = Registry('activation')


@ACTIVATIONS.register('relu')
def relu(x: Array) -> tuple[Array, float]:
    """ReLU and its Lipschitz constant 1 (|max(a,0) - max(b,0)| <= |a - b| elementwise)."""
    return nn.relu(x), 1.0


def group_sort(x: Array, group_size: int) -> Array:
    """Sorts each consecutive group of ``group_size`` units of the last axis (GroupSort).

    On each piece of space where the order inside every group is fixed, GroupSort is a
    permutation of coordinates, an isometry; it is continuous, so it is 1-Lipschitz in L2
    (Anil, Lucas & Grosse, 2019). Unlike ReLU its Jacobian is orthogonal everywhere, so it keeps
    the gradient's norm: a network of norm-1 layers stays expressive.
    """
    features = x.shape[-1]
    if features % group_size:
        raise ValueError(f'GroupSort of groups of {group_size} needs a multiple of '
                         f'{group_size} units, got {features}')
    groups = x.reshape(*x.shape[:-1], features // group_size, group_size)
    return jnp.sort(groups, axis=-1).reshape(x.shape)


@ACTIVATIONS.register('minmax')
def minmax(x: Array) -> tuple[Array, float]:
    """MinMax: GroupSort with pairs, (a, b) -> (min(a, b), max(a, b)); Lipschitz constant 1."""
    return group_sort(x, 2), 1.0


@ACTIVATIONS.register('groupsort4')
def groupsort4(x: Array) -> tuple[Array, float]:
    """GroupSort with groups of 4 units; Lipschitz constant 1."""
    return group_sort(x, 4), 1.0
