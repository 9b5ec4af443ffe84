"""Sound certificates: per-example certified L2 radii from guaranteed upper Lipschitz bounds.

Every bound here comes from the layers' ``sound=True`` path (float64, rounded up), never from the
power-iteration estimates used in training, which are lower bounds and certify nothing.

The certificates are those of ``margins.CERTIFICATES``, both sound:

* global (Tsuzuku et al., 2018): r(x) = M(x) / (sqrt(2)·L), M = f_t - max_{i!=t} f_i. Each logit
  difference f_t - f_j is sqrt(2)·L-Lipschitz, since |e_t - e_j|_2 = sqrt(2).
* pairwise: r(x) = min_{j!=t} (f_t - f_j) / (|w_t - w_j|_2 · L_body), with w the head's weight
  columns and L_body the bound of the map from the input to the head. f_t - f_j =
  (w_t - w_j)·h(x) + const, so it is |w_t - w_j|·L_body-Lipschitz; since
  |w_t - w_j| <= sqrt(2)·|W|_2 and L = |W|_2·L_body, this radius is never below the global one.

Logits for certification are evaluated in float64 so that rounding in f itself is negligible
next to the margins being certified.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lclmt_jax import margins


class SoundBounds(NamedTuple):
    """Guaranteed upper bounds: L of x -> logits and L_body of x -> head input, and head weights."""

    lipschitz: float
    body_lipschitz: float
    head_kernel: np.ndarray  # (features, classes), float64


def sound_bounds(model: nn.Module, variables: Any, input_shape: tuple[int, ...]) -> SoundBounds:
    """Evaluates every layer's sound bound on the concrete parameters (host, float64).

    The head is whatever the model declares through its output (``models.lipschitz_head``).
    """
    output = model.apply(variables, jnp.zeros((1, *input_shape), jnp.float32), sound=True)
    return SoundBounds(float(output.lipschitz), float(output.body_lipschitz),
                       np.asarray(output.head_kernel, np.float64))


def logits_float64(model: nn.Module, variables: Any, images: np.ndarray,
                   batch_size: int = 1000) -> np.ndarray:
    """Logits of float images (NHWC, [0,1]) in float64, in batches, eval mode."""
    with jax.enable_x64(True):
        variables64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        apply = jax.jit(lambda v, x: model.apply(v, x).logits)
        chunks = [np.asarray(apply(variables64, jnp.asarray(images[i:i + batch_size], jnp.float64)))
                  for i in range(0, len(images), batch_size)]
    return np.concatenate(chunks)


def certified_radii(logits: np.ndarray, labels: np.ndarray, bounds: SoundBounds,
                    certificate: str = 'pairwise') -> np.ndarray:
    """Per-example certified radius (float64) with the named certificate; 0 where misclassified.

    ``certificate`` names a ``margins.CERTIFICATES`` entry (``global``: max(M, 0)/(sqrt(2)·L);
    ``pairwise``: min_{j!=t} (f_t - f_j)/K_tj with K_tj = |w_t - w_j|·L_body), computed in
    float64 end to end.
    """
    rule = margins.CERTIFICATES.get(certificate)
    with jax.enable_x64(True):
        bounds64 = SoundBounds(jnp.float64(bounds.lipschitz), jnp.float64(bounds.body_lipschitz),
                               jnp.asarray(bounds.head_kernel, jnp.float64))
        radii = rule.radii(jnp.asarray(logits, jnp.float64), jnp.asarray(labels), bounds64)
        return np.asarray(radii, np.float64)


def certified_accuracy(radii: np.ndarray, correct: np.ndarray, epsilons) -> np.ndarray:
    """Fraction of examples correctly classified with certified radius >= eps, per eps.

    Non-increasing in eps: the certified-accuracy-vs-radius curve.
    """
    epsilons = np.atleast_1d(np.asarray(epsilons, np.float64))
    certified = correct[None, :] & (radii[None, :] >= epsilons[:, None])
    return certified.mean(axis=1)


def broken_certificates(radii: np.ndarray, correct: np.ndarray,
                        attack_norms: np.ndarray) -> np.ndarray:
    """Indices of certified points where an attack found an adversarial example inside the radius.

    Must always be empty; anything else is a bug in a bound.
    """
    return np.flatnonzero(correct & (radii > 0) & (attack_norms < radii))
