"""Layer families, one module each: a Flax layer that returns its own Lipschitz bound.

Every layer is called as ``layer(x, train=..., sound=...) -> (y, bound)``, ``bound`` a Lipschitz
constant of ``x -> y`` in L2:

* ``sound=False`` (training): a differentiable *estimate* (power iteration with persistent
  vectors in the ``'lipschitz'`` collection, as ``bounds.Estimator`` says; or the constant 1 of a
  layer that is 1-Lipschitz by construction). An estimate converges from *below*, so it steers
  training but certifies nothing.
* ``sound=True`` (certification): a guaranteed *upper* bound computed on the host in float64
  from the concrete parameters (never under ``jit``), and the layer's float32 rounding step,
  recorded for the analysis of ``lclmt_jax.rounding`` (``record``).

A family's module holds all it needs: its training estimate, its sound bound with the proof in
the docstring, its float32 rounding step (with the error of any kernel it computes at run time)
and its Flax module, registered here by name (``LAYERS``). Adding a family is one file in this
package plus its test file; shared operator norms live in ``lclmt_jax.bounds``.

Properties of an entry that models read: a family whose class has ``same_width(width,
kernel_size)`` (a classmethod returning a k×k layer from ``width`` to ``width`` channels, stride
1, 'SAME') can be the layer of a ``LipConvNet`` (``config.lipconvnet.layer``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from lclmt_jax import bounds, rounding
from lclmt_jax.registry import Registry

Array = jax.Array

LAYERS: Registry[type[nn.Module]] = Registry('layer', package=__name__)


def record(module: nn.Module, make_step: Callable[[], Any]) -> None:
    """Records ``module``'s float32 rounding step (built by ``make_step``, only when a rounding
    analysis is being recorded), its parameters covered by it."""
    rounding.record(make_step, module.path)


def power_iteration_vector(module: nn.Module, shape: tuple[int, ...]) -> nn.Variable:
    """The persistent unit vector of a layer's power iteration, random at init."""
    return module.variable(
        'lipschitz', 'v',
        lambda: bounds.normalize(jax.random.normal(module.make_rng('params'), shape)))


def image_vector(module: nn.Module, x: Array) -> nn.Variable:
    """``power_iteration_vector`` of one image of ``x``'s shape, checked against it: a conv's
    bound depends on the input's spatial shape, fixed at init."""
    v = power_iteration_vector(module, (1, *x.shape[1:]))
    if v.value.shape[1:] != x.shape[1:]:
        raise ValueError(f'{module.name}: initialized for inputs of shape {v.value.shape[1:]}, '
                         f'applied to {x.shape[1:]}; the bound depends on the input shape')
    return v


def keeps_vector(module: nn.Module, train: bool) -> bool:
    """Whether this call may store the updated vector (training, collection mutable)."""
    return train and module.is_mutable_collection('lipschitz') and not module.is_initializing()


# ----------------------------------------------------------------------------- parameter-free maps
# The maps a model applies between its layers, each recording its (exact) rounding step.


def flatten(x: Array) -> Array:
    """(N, ...) -> (N, features): an isometry, exact in floating point."""
    rounding.record(rounding.Flatten)
    return x.reshape((x.shape[0], -1))


def shift(x: Array, offset: float) -> Array:
    """x - ``offset`` (a scalar exact in float32, e.g. LiResNet's 1/2): a translation,
    Lipschitz 1, one rounding per element (``rounding.Shift``)."""
    rounding.record(lambda: rounding.Shift(offset))
    return x - offset


def exact_map(function: Callable[[Array], Array], x: Array) -> Array:
    """``function(x)`` for a 1-Lipschitz ``function`` that only selects, moves, drops or
    zero-pads coordinates (exact in floating point), e.g. a channel padding or a space-to-depth
    downsampling."""
    rounding.record(lambda: rounding.ExactMap(function))
    return function(x)
