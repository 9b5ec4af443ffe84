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

Both are statements about the exact network f (the stored float32 parameters in real
arithmetic), whose logits are evaluated in float64. Users run the float32 network f^, whose
prediction rounding can flip near the boundary; with a rounding ``Allowance`` (``rounding``: a
guaranteed bound E_tj(r) = E0_tj + E1_tj·r on |(f^_t - f^_j)(z) - (f_t - f_j)(z)| over the ball,
the float64 evaluation's own rounding included) the radius is that of f^:

    r(x) = min_{j!=t} (f_t - f_j - E0_tj)/(K_tj + E1_tj),  capped where f^ could overflow,

never above the exact radius. Every radius is 0 where a logit is not finite (and, in
``RestoredModel.certified_radius`` and the evaluators, where a pixel is not).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lclmt_jax import margins, rounding


class SoundBounds(NamedTuple):
    """Guaranteed upper bounds: L of x -> logits and L_body of x -> head input, and head weights."""

    lipschitz: float
    body_lipschitz: float
    head_kernel: np.ndarray  # (features, classes), float64


def sound_bounds(model: nn.Module, variables: Any, input_shape: tuple[int, ...]) -> SoundBounds:
    """Evaluates every layer's sound bound on the concrete parameters (host, float64).

    The head is whatever the model declares through its output (``layers.head.lipschitz_head``).
    """
    output = model.apply(variables, jnp.zeros((1, *input_shape), jnp.float32), sound=True)
    return SoundBounds(float(output.lipschitz), float(output.body_lipschitz),
                       np.asarray(output.head_kernel, np.float64))


def logits_float64(model: nn.Module, variables: Any, images: np.ndarray,
                   batch_size: int = 1000, progress: Any = None) -> np.ndarray:
    """Logits of float images (NHWC, [0,1]) in float64, in batches, eval mode; ``progress``
    (``progress(done, total)``, e.g. ``lclmt_jax.progress.Progress``) after each batch."""
    with jax.enable_x64(True):
        variables64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        apply = _compiled_logits(model)
        chunks = []
        for start in range(0, len(images), batch_size):
            chunks.append(np.asarray(apply(variables64, jnp.asarray(
                images[start:start + batch_size], jnp.float64))))
            if progress is not None:
                progress(min(start + batch_size, len(images)), len(images))
    return np.concatenate(chunks)


@functools.partial(jax.jit, static_argnums=0)
def _logits(model: nn.Module, variables: Any, images: jax.Array) -> jax.Array:
    return model.apply(variables, images).logits


def _compiled_logits(model: nn.Module) -> Any:
    """Jitted eval-mode logits: compiled once per (model, shapes) for a hashable model, once
    per call for a model with unhashable fields (lists, as read from a config)."""
    try:
        hash(model)
    except TypeError:
        return jax.jit(lambda variables, images: model.apply(variables, images).logits)
    return functools.partial(_logits, model)


def finite_rows(values: np.ndarray) -> np.ndarray:
    """Per example (first axis): whether every value is finite."""
    values = np.asarray(values)
    return np.isfinite(values.reshape(len(values), int(np.prod(values.shape[1:])))).all(axis=1)


def rounding_allowance(model: nn.Module, variables: Any, images: np.ndarray,
                       progress: Any = None) -> rounding.Allowance:
    """The float32 rounding allowance of every image (``rounding``, recorded from the model's
    sound pass); raises ``rounding.NotAnalysable`` (one line) for a model with a layer that has
    no rounding step."""
    images = np.asarray(images)
    return rounding.analyse(rounding.network(model, variables, images.shape[1:]), images,
                            progress=progress)


def certified_radii(logits: np.ndarray, labels: np.ndarray, bounds: SoundBounds,
                    certificate: str = 'pairwise',
                    allowance: rounding.Allowance | None = None) -> np.ndarray:
    """Per-example certified radius (float64) with the named certificate; 0 where misclassified
    and where a logit is not finite.

    ``certificate`` names a ``margins.CERTIFICATES`` entry (``global``: K_tj = sqrt(2)·L;
    ``pairwise``: K_tj = |w_t - w_j|·L_body). Without ``allowance`` the radius is that of the
    exact network, min_{j!=t} (f_t - f_j)/K_tj, float64 end to end. With the ``allowance`` of
    the same images (``rounding_allowance``) it is that of the float32 network
    (``_float32_radii``), never larger.
    """
    rule = margins.CERTIFICATES.get(certificate)
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    with jax.enable_x64(True):
        bounds64 = SoundBounds(jnp.float64(bounds.lipschitz), jnp.float64(bounds.body_lipschitz),
                               jnp.asarray(bounds.head_kernel, jnp.float64))
        if allowance is None:
            radii = np.asarray(rule.radii(jnp.asarray(logits), jnp.asarray(labels), bounds64),
                               np.float64)
        else:
            radii = _float32_radii(logits, labels, np.asarray(rule.constants(bounds64)),
                                   allowance)
    return np.where(finite_rows(logits) & ~np.isnan(radii), radii, 0.0)


def _float32_radii(logits: np.ndarray, labels: np.ndarray, constants: np.ndarray,
                   allowance: rounding.Allowance) -> np.ndarray:
    """r = min_{j!=t} (m_tj - E0_tj)/(K_tj + E1_tj), capped at ``allowance.limit``; 0 if <= 0.

    f^ predicts t on the open ball of radius r because (f_t - f_j)(x) - K_tj·r - E_tj(r) > 0
    below it for every j (``rounding``, (2)). The float64 arithmetic here rounds against the
    certificate: E0 gains 2^-51·(|f_t| + |f_j|), which covers the rounding of the margin's two
    subtractions, K + E1 rounds up (K is a sound bound, E1 >= 0), and the quotient is scaled by
    1 - 2^-50. Since m - E0 <= m and K + E1 >= K, no radius exceeds the exact one.

    Refuses logits the analysis did not compute: each must be within twice the float64 rounding
    bound of the analysis' own (a walk that does not describe the model, or other images).
    """
    rows = np.arange(len(labels))
    finite = finite_rows(logits) & finite_rows(allowance.logits)
    tolerance = 4 * allowance.reference + 1e-300
    mismatch = finite[:, None] & ~(np.abs(logits - allowance.logits) <= tolerance)
    if mismatch.any():
        worst = float(np.max(np.abs(logits - allowance.logits)[mismatch]))
        raise ValueError(f'the rounding allowance does not describe these logits (off by '
                         f'{worst:.3g}, beyond the float64 rounding bound): other images, or a '
                         'rounding analysis that does not match the model')
    pairs = allowance.pairs(labels)
    target = logits[rows, labels]
    with np.errstate(all='ignore'):
        numerator = (target[:, None] - logits - pairs.const
                     - 2.0**-51 * (np.abs(target)[:, None] + np.abs(logits)))
        denominator = constants[labels] + pairs.slope
        per_class = np.where(denominator > 0, numerator / denominator,
                             np.where(numerator > 0, np.inf, 0.0))
    per_class[rows, labels] = np.inf
    radii = np.maximum(per_class.min(axis=1), 0.0) * (1.0 - 2.0**-50)
    return np.where(finite, np.minimum(radii, allowance.limit), 0.0)


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
