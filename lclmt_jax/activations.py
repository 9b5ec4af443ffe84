"""Activations and their Lipschitz constants, by name (``config.<model>.activation``).

An activation is an :class:`Activation`, called as ``activation(x) -> (y, bound)`` with
``bound`` a Lipschitz constant of ``x -> y`` in L2, the same value for training and certification
(it does not depend on parameters, and 1 is exact in floating point). Its ``exact_float32``
property says whether float32 computes it exactly from its computed input (it only selects or
sorts operands): then the float32 analysis of ``lclmt_jax.rounding`` takes it as an exact step;
otherwise a network using it is certified for the exact network only. Adding one is a function
and an ``@activation(name, exact_float32=...)`` line here. ``relu`` is diagonal (what the WRN's
folded BN bounds need); ``minmax`` and ``groupsort4`` keep gradient norms (what deep certified
networks need).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lclmt_jax import rounding
from lclmt_jax.registry import Registry

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Activation:
    """A 1-Lipschitz activation ``function`` and whether float32 computes it exactly."""

    name: str
    function: Callable[[Array], Array]
    exact_float32: bool

    def __call__(self, x: Array) -> tuple[Array, float]:
        """``(function(x), 1.0)``; records its float32 rounding step (``rounding.record``)."""
        if self.exact_float32:
            rounding.record(lambda: rounding.ExactMap(self.function))
        else:
            rounding.refuse(f'activation {self.name!r} has no float32 rounding analysis (it is '
                            'not exact in float32)')
        return self.function(x), 1.0


ACTIVATIONS: Registry[Activation] = Registry('activation')


def activation(name: str, exact_float32: bool) -> Callable[[Callable[[Array], Array]], Activation]:
    """Registers the decorated 1-Lipschitz function as the activation ``name``."""
    def register(function: Callable[[Array], Array]) -> Activation:
        return ACTIVATIONS.register(name, Activation(name, function, exact_float32))
    return register


@activation('relu', exact_float32=True)
def relu(x: Array) -> Array:
    """ReLU, Lipschitz constant 1 (|max(a,0) - max(b,0)| <= |a - b| elementwise); max only
    selects an operand, so float32 computes it exactly."""
    return nn.relu(x)


def group_sort(x: Array, group_size: int) -> Array:
    """Sorts each consecutive group of ``group_size`` units of the last axis (GroupSort).

    On each piece of space where the order inside every group is fixed, GroupSort is a
    permutation of coordinates, an isometry; it is continuous, so it is 1-Lipschitz in L2
    (Anil, Lucas & Grosse, 2019). Unlike ReLU its Jacobian is orthogonal everywhere, so it keeps
    the gradient's norm: a network of norm-1 layers stays expressive. Sorting only moves
    operands: exact in floating point.
    """
    features = x.shape[-1]
    if features % group_size:
        raise ValueError(f'GroupSort of groups of {group_size} needs a multiple of '
                         f'{group_size} units, got {features}')
    groups = x.reshape(*x.shape[:-1], features // group_size, group_size)
    return jnp.sort(groups, axis=-1).reshape(x.shape)


@activation('minmax', exact_float32=True)
def minmax(x: Array) -> Array:
    """MinMax: GroupSort with pairs, (a, b) -> (min(a, b), max(a, b)); Lipschitz constant 1.

    Written with ``minimum``/``maximum`` rather than a sort of each pair: the same values (both
    only select an operand), but XLA's CPU sort and its gather-based gradient made this
    activation two thirds of the LiResNet's training step (0.33 s against 0.11 s with ReLU at
    batch 64 on the 2-core CPU)."""
    features = x.shape[-1]
    if features % 2:
        raise ValueError(f'MinMax needs an even number of units, got {features}')
    pairs = x.reshape(*x.shape[:-1], features // 2, 2)
    first, second = pairs[..., 0], pairs[..., 1]
    return jnp.stack([jnp.minimum(first, second), jnp.maximum(first, second)],
                     axis=-1).reshape(x.shape)


@activation('groupsort4', exact_float32=True)
def groupsort4(x: Array) -> Array:
    """GroupSort with groups of 4 units; Lipschitz constant 1."""
    return group_sort(x, 4)
