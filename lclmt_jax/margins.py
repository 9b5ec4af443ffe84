"""Prediction margins and the margins a certificate requires: one home for training,
certification and attacks.

For logits f (N, C) and true labels t, the *margin* is f_t - max_{j != t} f_j (negative when
misclassified). A perturbation d changes a logit difference f_t - f_j by at most K_tj·|d|, where
K_tj is a Lipschitz constant of x -> f_t(x) - f_j(x). Two sound choices of K:

* global (Tsuzuku et al., 2018): K_tj = sqrt(2)·L for every pair, L a bound of x -> f, since
  |e_t - e_j|_2 = sqrt(2);
* pairwise: K_tj = |w_t - w_j|_2·L_body, with w the head's weight columns and L_body a bound of
  the map from the input to the head's input: f_t - f_j = (w_t - w_j)·h(x) + const. Never
  larger than the global K (|w_t - w_j| <= sqrt(2)·|W|_2, L = |W|_2·L_body).

Each choice is a registered :class:`Certificate` (``CERTIFICATES``: ``global``, ``pairwise``).
So x is certified at radius eps when f_t - f_j >= eps·K_tj for every j != t, and its certified
radius is min_{j != t} (f_t - f_j)/K_tj. The *required gaps* R_j = eps·K_tj (R_t = 0) are what
training asks for; the *binding class* v = argmax_{j != t} (f_j + R_j) is the class closest to
breaking that condition (the runner-up when R is global), LC-LMT's one inflated logit.

Every function is pure ``jnp``: inside ``jit`` for training and attacks, and in float64 (under
``jax.enable_x64``, with float64 inputs) for certification.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from lclmt_jax.registry import Registry

Array = jax.Array

SQRT2 = 2.0**0.5


def true_class_mask(labels: Array, num_classes: int) -> Array:
    """(N, C) booleans, True at each example's true class."""
    return jax.nn.one_hot(labels, num_classes, dtype=bool)


def runner_up(logits: Array, labels: Array, gaps: Array | None = None) -> Array:
    """v = argmax_{j != t} (f_j + R_j) per example (first index on ties); R = 0 when None."""
    scores = logits if gaps is None else logits + gaps
    is_true = true_class_mask(labels, logits.shape[-1])
    return jnp.argmax(jnp.where(is_true, -jnp.inf, scores), axis=-1)


def _pick(values: Array, classes: Array) -> Array:
    """values[n, classes[n]] per example."""
    return jnp.take_along_axis(values, classes[:, None], axis=-1)[:, 0]


def margin(logits: Array, labels: Array) -> Array:
    """Prediction margin f_t - max_{j != t} f_j per example; negative when misclassified."""
    return _pick(logits, labels) - _pick(logits, runner_up(logits, labels))


def global_required_margin(lipschitz: Array, epsilon: Array | float) -> Array:
    """sqrt(2)·L·eps: the margin that certifies radius eps with the global constant."""
    return SQRT2 * lipschitz * epsilon


def global_constants(bounds: NetworkBounds) -> Array:
    """K_tj = sqrt(2)·L for every pair t != j, 0 on the diagonal: (C, C)."""
    num_classes = bounds.head_kernel.shape[-1]
    off_diagonal = 1.0 - jnp.eye(num_classes, dtype=jnp.result_type(bounds.lipschitz))
    return SQRT2 * bounds.lipschitz * off_diagonal


def pairwise_constants(head_kernel: Array, body_lipschitz: Array) -> Array:
    """K_ij = |w_i - w_j|_2·L_body, (C, C), with w_i the head's columns (kernel: (F, C)).

    Exactly 0 on the diagonal; the norm is taken of max(|.|^2, tiny) off it, so its gradient is
    finite even where two columns coincide.
    """
    columns = head_kernel.T
    squared = jnp.sum(jnp.square(columns[:, None, :] - columns[None, :, :]), axis=-1)
    diagonal = jnp.eye(squared.shape[0], dtype=bool)
    tiny = jnp.finfo(squared.dtype).tiny
    distances = jnp.where(diagonal, 0.0, jnp.sqrt(jnp.where(diagonal, 1.0, jnp.maximum(squared,
                                                                                     tiny))))
    return distances * body_lipschitz


def binding_margin(logits: Array, labels: Array, gaps: Array) -> tuple[Array, Array]:
    """(f_t - f_v, R_v) with v the binding class: the condition holds iff the first >= the second.

    With global gaps v is the runner-up, so this is (margin, sqrt(2)·L·eps).
    """
    rival = runner_up(logits, labels, gaps)
    return _pick(logits, labels) - _pick(logits, rival), _pick(gaps, rival)


def radius(logits: Array, labels: Array, constants: Array) -> Array:
    """Certified radius min_{j != t} (f_t - f_j)/K_tj; 0 for misclassified points.

    A wrong class with K_tj = 0 (w_j = w_t) keeps a constant gap: it never overtakes if it is
    behind now (radius inf from it), and blocks every radius otherwise. With the global constants
    this is max(M, 0)/(sqrt(2)·L): division by one positive number is monotone, so the minimum
    of the quotients is the quotient of the minimum, to the last bit.
    """
    gaps = _pick(logits, labels)[:, None] - logits
    scale = constants[labels]
    safe = jnp.where(scale == 0, 1.0, scale)
    per_class = jnp.where(scale == 0, jnp.where(gaps > 0, jnp.inf, 0.0), gaps / safe)
    per_class = jnp.where(true_class_mask(labels, logits.shape[-1]), jnp.inf, per_class)
    return jnp.maximum(jnp.min(per_class, axis=-1), 0.0)


class NetworkBounds(Protocol):
    """What a certificate reads: a bound L of x -> logits, a bound L_body of x -> the head's
    input, and the head's kernel (F, C). ``models.ModelOutput`` (training estimates) and
    ``certify.SoundBounds`` (guaranteed upper bounds) both are."""

    lipschitz: Any
    body_lipschitz: Any
    head_kernel: Any


class Certificate(NamedTuple):
    """A sound certificate: the Lipschitz constants K_tj of the logit differences, from bounds.

    ``constants(bounds)`` maps a network's bounds (anything with ``lipschitz``,
    ``body_lipschitz`` and ``head_kernel``: a model's training output or its sound bounds) to the
    (C, C) matrix K. Everything else follows from K, so training and certification cannot
    disagree about what a certificate asks: the required gaps (training) and the radii
    (certification) below.
    """

    constants: Callable[[NetworkBounds], Array]
    label: str

    def gaps(self, bounds: NetworkBounds, epsilon: Array | float, labels: Array) -> Array:
        """R_j = eps·K_tj per example: (N, C), 0 at t."""
        return epsilon * self.constants(bounds)[labels]

    def radii(self, logits: Array, labels: Array, bounds: NetworkBounds) -> Array:
        """Per-example certified radius min_{j != t} (f_t - f_j)/K_tj (0 if misclassified)."""
        return radius(logits, labels, self.constants(bounds))


# Adding a certificate is a ``register`` line here: training (``losses.Method.certificate``),
# certification and validation all look it up by name.
CERTIFICATES: Registry[Certificate] = Registry('certificate')
CERTIFICATES.register('global', Certificate(global_constants, 'global'))
CERTIFICATES.register('pairwise', Certificate(
    lambda bounds: pairwise_constants(bounds.head_kernel, bounds.body_lipschitz), 'pairwise'))
