"""Logit inflation transforms: the only difference between plain, LMT and LC-LMT training.

Each transform is a pure function ``(logits, labels, required_margin) -> inflated logits`` where
``required_margin = sqrt(2) * L * epsilon`` is a per-batch scalar (L: the network's Lipschitz
bound).
Softmax cross-entropy on the inflated logits then asks the true logit to beat the inflated ones,
i.e. to win by the margin that certifies epsilon-robustness (Tsuzuku et al., 2018, Prop. 1).

Adding a method means adding one function here and one entry to ``INFLATIONS``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
Inflation = Callable[[Array, Array, Array], Array]

SQRT2 = 2.0**0.5


def required_margin(lipschitz: Array, epsilon: float) -> Array:
    """Margin f_t - max_{i!=t} f_i that certifies an L2 ball of radius epsilon: sqrt(2)·L·epsilon.

    Sound because |f_i(x+d) - f_j(x+d) - (f_i(x) - f_j(x))| <= sqrt(2)·L·|d| for any two logits.
    """
    return SQRT2 * lipschitz * epsilon


def runner_up(logits: Array, labels: Array) -> Array:
    """Index v = argmax_{i != t} f_i of the strongest wrong class (first index on ties)."""
    is_true = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
    return jnp.argmax(jnp.where(is_true, -jnp.inf, logits), axis=-1)


def margin(logits: Array, labels: Array) -> Array:
    """Prediction margin f_t - max_{i != t} f_i per example; negative when misclassified."""
    true_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    rival_logit = jnp.take_along_axis(logits, runner_up(logits, labels)[:, None], axis=-1)[:, 0]
    return true_logit - rival_logit


def plain(logits: Array, labels: Array, margin: Array) -> Array:
    """No inflation: ordinary softmax cross-entropy training."""
    del labels, margin
    return logits


def lmt(logits: Array, labels: Array, margin: Array) -> Array:
    """LMT (Tsuzuku et al., 2018): every non-true logit i != t is raised by the required margin."""
    not_true = 1.0 - jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return logits + margin * not_true


def lc_lmt(logits: Array, labels: Array, margin: Array) -> Array:
    """LC-LMT (Ono, Takahashi, Kakizaki): only the runner-up logit v = argmax_{i!=t} f_i is raised.

    The runner-up is the only logit the margin condition M >= sqrt(2)·L·eps is about, so the loss
    stops pushing logits that are already far below it.
    """
    rival = jax.nn.one_hot(runner_up(logits, labels), logits.shape[-1], dtype=logits.dtype)
    return logits + margin * rival


INFLATIONS: dict[str, Inflation] = {'plain': plain, 'lmt': lmt, 'lc_lmt': lc_lmt}


def get_inflation(method: str) -> Inflation:
    """Looks up an inflation transform by its config name (``config.method``)."""
    if method not in INFLATIONS:
        raise ValueError(f'unknown method {method!r}; allowed: {", ".join(INFLATIONS)}')
    return INFLATIONS[method]
