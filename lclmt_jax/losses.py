"""Training methods by name (``config.method``): how each turns logits into a loss.

A method inflates the logits before softmax cross-entropy, so that the loss asks the true logit
f_t to beat every other f_j by the *required gap* R_j = eps·K_tj that certifies radius eps
(``lclmt_jax.margins``; Tsuzuku et al., 2018, Prop. 1). Each method is a pure function
``(logits, labels, gaps) -> inflated logits`` and the kind of constants K it uses:

* ``global``: K_tj = sqrt(2)·L for every pair -- the papers' methods;
* ``pairwise``: K_tj = |w_t - w_j|·L_body, the tighter constants the pairwise certificate uses.

The training metrics (margin, required margin, ``bound_met``) check the condition the method
trains for: f_t - f_v >= R_v for the binding class v (``margins.binding_margin``).

Adding a method is one function and one ``METHODS.register`` line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lclmt_jax import margins
from lclmt_jax.models import ModelOutput
from lclmt_jax.registry import Registry

Array = jax.Array
Inflation = Callable[[Array, Array, Array], Array]

CONSTANTS = ('global', 'pairwise')


class Method(NamedTuple):
    """A training method: its logit inflation and which constants K_tj set its gaps."""

    inflate: Inflation
    constants: str = 'global'


METHODS: Registry[Method] = Registry('method')


def no_inflation(logits: Array, labels: Array, gaps: Array) -> Array:
    """Plain softmax cross-entropy: the logits unchanged."""
    del labels, gaps
    return logits


def inflate_every_rival(logits: Array, labels: Array, gaps: Array) -> Array:
    """LMT (Tsuzuku et al., 2018): every non-true logit f_j is raised by its gap R_j (R_t = 0)."""
    del labels
    return logits + gaps


def inflate_binding_rival(logits: Array, labels: Array, gaps: Array) -> Array:
    """LC-LMT (Ono, Takahashi, Kakizaki): only the binding class v = argmax_{j!=t} f_j + R_j.

    With global gaps v is the runner-up argmax_{j!=t} f_j: the only logit the condition
    M >= sqrt(2)·L·eps is about, so the loss stops pushing logits already far below it.
    """
    rival = margins.runner_up(logits, labels, gaps)
    gap = jnp.take_along_axis(gaps, rival[:, None], axis=-1)
    return logits + gap * jax.nn.one_hot(rival, logits.shape[-1], dtype=logits.dtype)


METHODS.register('plain', Method(no_inflation))
METHODS.register('lmt', Method(inflate_every_rival))
METHODS.register('lc_lmt', Method(inflate_binding_rival))


def required_gaps(method: Method, output: ModelOutput, labels: Array,
                  epsilon: Array | float) -> Array:
    """R_j = eps·K_tj per example (N, C) with the method's constants, from the model's bounds."""
    if method.constants == 'pairwise':
        constants = margins.pairwise_constants(output.head_kernel, output.body_lipschitz)
        return margins.pairwise_gaps(constants, epsilon, labels)
    return margins.global_gaps(output.lipschitz, epsilon, labels, output.logits.shape[-1])


def method_loss(method: Method, output: ModelOutput, labels: Array,
                epsilon: Array | float) -> Array:
    """Mean softmax cross-entropy of the inflated logits: the loss the optimizer minimises.

    The gradient flows through the bounds in the gaps too, so training also shrinks them.
    """
    gaps = required_gaps(method, output, labels, epsilon)
    logits = method.inflate(output.logits, labels, gaps)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def epsilon_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The radius the loss inflates for at each step: ``config.epsilon`` after a linear warm-up.

    ``config.epsilon_warmup_epochs`` > 0 ramps epsilon from 0 over that many epochs (the LMT
    reference code's schedule for its SVHN runs). Early in training the layer-wise bound L of a
    deep network is orders of magnitude above its true Lipschitz constant, so even a small
    sqrt(2)·L·eps makes the gradient through L dominate before any feature is learned, and the
    network collapses to constant outputs (see ``configs.svhn_variant``); the warm-up lets it
    learn first. Certification and the ``bound_met`` metrics always use the full epsilon.
    """
    warmup_steps = round(config.get('epsilon_warmup_epochs', 0) * steps_per_epoch)
    if warmup_steps <= 0:
        return optax.constant_schedule(config.epsilon)
    return optax.linear_schedule(0.0, config.epsilon, warmup_steps)
