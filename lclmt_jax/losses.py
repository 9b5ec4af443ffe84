"""Training methods by name (``config.method``): how each turns logits into a loss.

A method inflates the logits before softmax cross-entropy, so that the loss asks the true logit
f_t to beat every other f_j by the *required gap* R_j = eps·K_tj that certifies radius eps
(Tsuzuku et al., 2018, Prop. 1). Each method is a pure function
``(logits, labels, gaps) -> inflated logits`` and the certificate whose gaps it trains for
(``margins.CERTIFICATES``):

* ``global``: K_tj = sqrt(2)·L for every pair -- the papers' methods (``lmt``, ``lc_lmt``);
* ``pairwise``: K_tj = |w_t - w_j|·L_body, the tighter constants of the pairwise certificate
  (``lmt_pairwise``, ``lc_lmt_pairwise``, GloRo's ``gloro``, Leino et al. 2021, and LiResNet's
  ``emma``, Hu et al. 2023, and BRONet's ``la``, Lai et al. 2025).

A method's ``criterion`` turns the inflated logits into a per-example loss: softmax
cross-entropy for all but ``la``, whose Logit Annealing loss (``logit_annealing``) weighs the
cross-entropy of EMMA's logits by (1 - p_t)^gamma.

The training metrics (margin, required margin, ``bound_met``) check the condition the method
trains for: f_t - f_v >= R_v for the binding class v (``margins.binding_margin``).

``config.trades_lambda`` > 0 turns any method into a TRADES-style loss (Zhang et al., 2019, as
GloRo trains): cross-entropy of the clean logits plus lambda times the KL divergence from the
clean to the inflated distribution (the clean term is the method's criterion of the clean
logits). ``config.epsilon_schedule`` shapes the loss's epsilon ramp and
``config.epsilon_start_fraction`` sets where it starts.

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
Criterion = Callable[[Array, Array], Array]


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Softmax cross-entropy per example: the criterion of every method but ``la``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


class Method(NamedTuple):
    """A training method: its logit inflation, the certificate (a ``margins.CERTIFICATES`` name)
    whose required gaps it inflates by, its name in figures and tables, ``paper``: the
    registered method its paper published (``configs.paper_recipe``; None: no paper form),
    ``criterion``: the per-example loss of the inflated logits and the labels, and
    ``configured_criterion``: where the criterion has settings, the criterion a config asks for
    (``configured_method``; None: ``criterion`` as registered)."""

    inflate: Inflation
    certificate: str
    label: str
    paper: str | None = None
    criterion: Criterion = cross_entropy
    configured_criterion: Callable[[ml_collections.ConfigDict], Criterion] | None = None


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


def append_bottom_logit(logits: Array, labels: Array, gaps: Array) -> Array:
    """GloRo: a bottom class f_bot = max_{j!=t} f_j + R_j appended to the logits.

    Cross-entropy then asks f_t to beat the strongest rival raised by its gap, like LC-LMT, but
    keeps the rival's own logit too (K + 1 classes). GloRo takes the rivals of the predicted
    class; with the true one, as here, the loss is the same on correctly classified points.
    """
    rival = margins.runner_up(logits, labels, gaps)
    bottom = jnp.take_along_axis(logits + gaps, rival[:, None], axis=-1)
    return jnp.concatenate([logits, bottom], axis=-1)


def inflate_by_achieved_margin(logits: Array, labels: Array, gaps: Array) -> Array:
    """EMMA (Hu et al., 2023, LiResNet's per-class adaptive margin): f_j + e_j·R_j with
    e_j = stop_gradient(clip((f_t - f_j)/max(R_j, tiny), 0.01, 1)); the true logit unchanged.

    e_j·eps is the part of the radius eps that the point already reaches against class j (its
    margin over R_j/eps = K_tj), capped at eps and floored at 0.01·eps: each rival is pushed by
    the distance already won instead of the full gap, which keeps the loss from fighting
    classes that are hopeless at this radius. Only the scale e is stop-gradiented; R_j keeps its
    gradient through the bounds and the head. Misclassified rivals (f_j >= f_t) get the floor.
    """
    true_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    tiny = jnp.finfo(gaps.dtype).tiny
    scale = jax.lax.stop_gradient(jnp.clip((true_logit - logits) / jnp.maximum(gaps, tiny),
                                           0.01, 1.0))
    is_true = margins.true_class_mask(labels, logits.shape[-1])
    return logits + jnp.where(is_true, 0.0, scale * gaps)


def logit_annealing(gamma: float, temperature: float, offset: float) -> Criterion:
    """The Logit Annealing loss (Lai et al., BRONet, ICML 2025) as a criterion of logits z:

        z'_j = (z_j - offset·[j = t]) / T,   CE = -log softmax(z')_t,   p_t = exp(-CE),
        loss = T·(1 - p_t)^gamma·CE.

    With EMMA's logits (the ``la`` method), the offset asks the true class for a further margin
    ``offset`` beyond the gaps, the temperature T sharpens the softmax, and the annealing factor
    (1 - p_t)^gamma (a focal weight) lets points that already meet it stop pulling, so the
    network's limited capacity goes to the points near the boundary. gamma = 0, T = 1 and
    offset = 0 give plain cross-entropy. 1 - p_t is computed as -expm1(-CE), accurate when p_t
    is near 1; gamma = 0 skips the factor, whose gradient at p_t = 1 would be 0·inf.
    """
    def criterion(logits: Array, labels: Array) -> Array:
        offsets = offset * jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
        entropy = cross_entropy((logits - offsets) / temperature, labels)
        if gamma == 0:
            return temperature * entropy
        miss = jnp.maximum(-jnp.expm1(-entropy), 0.0)  # 1 - p_t, >= 0 despite rounding
        return temperature * miss ** gamma * entropy

    return criterion


# BRONet's settings for CIFAR-10/100 (configs/benchmark_reproduce): gamma 5, T 0.75, offset 2;
# the defaults of config.logit_annealing.
LOGIT_ANNEALING = {'gamma': 5.0, 'temperature': 0.75, 'offset': 2.0}

# plain inflates nothing; its certificate only decides which margin its metrics report. LMT and
# LC-LMT were published with the global constant sqrt(2)·L, so their pairwise forms' paper form
# is the global one; GloRo and EMMA were published with the pairwise constants and keep them.
METHODS.register('plain', Method(no_inflation, 'global', 'plain', paper='plain'))
METHODS.register('lmt', Method(inflate_every_rival, 'global', 'LMT', paper='lmt'))
METHODS.register('lc_lmt', Method(inflate_binding_rival, 'global', 'LC-LMT', paper='lc_lmt'))
METHODS.register('lmt_pairwise', Method(inflate_every_rival, 'pairwise', 'LMT-pw', paper='lmt'))
METHODS.register('lc_lmt_pairwise', Method(inflate_binding_rival, 'pairwise', 'LC-LMT-pw',
                                           paper='lc_lmt'))
METHODS.register('gloro', Method(append_bottom_logit, 'pairwise', 'GloRo', paper='gloro'))
METHODS.register('emma', Method(inflate_by_achieved_margin, 'pairwise', 'EMMA', paper='emma'))
# LA trains on EMMA's logits (BRONet's logit_annealing_loss with its Lipschitz regularisation).
METHODS.register('la', Method(
    inflate_by_achieved_margin, 'pairwise', 'LA', paper='la',
    criterion=logit_annealing(**LOGIT_ANNEALING),
    configured_criterion=lambda config: logit_annealing(**config.logit_annealing)))


def configured_method(config: ml_collections.ConfigDict) -> Method:
    """``config.method`` with its criterion's settings from ``config`` (``la``:
    ``config.logit_annealing``): the method the train step minimises."""
    method = METHODS.get(config.method)
    if method.configured_criterion is None:
        return method
    return method._replace(criterion=method.configured_criterion(config))


def trains_for_margin(method: Method) -> bool:
    """Whether the method asks for a margin at all (plain training does not): tables and figures
    show no epsilon or required margin for those that do not."""
    return method.inflate is not no_inflation


def required_gaps(method: Method, output: ModelOutput, labels: Array,
                  epsilon: Array | float) -> Array:
    """R_j = eps·K_tj per example (N, C) with the method's certificate, from the model's bounds."""
    return margins.CERTIFICATES.get(method.certificate).gaps(output, epsilon, labels)


def inflated_logits(method: Method, output: ModelOutput, labels: Array,
                    epsilon: Array | float) -> Array:
    """The logits the method's cross-entropy sees at radius ``epsilon`` (C or C + 1 classes)."""
    return method.inflate(output.logits, labels, required_gaps(method, output, labels, epsilon))


def trades_divergence(clean: Array, inflated: Array) -> Array:
    """KL(softmax(clean) || softmax(inflated)) per example; classes ``inflated`` adds (GloRo's
    bottom) have probability 0 under the clean logits."""
    log_q = jax.nn.log_softmax(inflated)
    log_p = jax.nn.log_softmax(clean)
    p = jnp.exp(log_p)
    return jnp.sum(p * (log_p - log_q[..., :clean.shape[-1]]), axis=-1)


def method_loss(method: Method, output: ModelOutput, labels: Array, epsilon: Array | float,
                trades_lambda: float = 0.0, temperature: float = 1.0) -> Array:
    """The loss the optimizer minimises: the mean of the method's criterion (cross-entropy for
    all but ``la``) of the inflated logits, or with ``trades_lambda`` > 0, that of the clean
    logits plus lambda·KL(clean || inflated).

    ``temperature`` T divides every logit the criterion sees and multiplies the loss (the
    offset cross-entropy of "1-Lipschitz Layers Compared", Prach et al. 2024, without the offset,
    which the inflation already is): T·CE(z/T). A network that is 1-Lipschitz by construction
    has logit gaps of the order of its inputs' distances, a few units at most, where softmax
    cross-entropy is almost flat; T < 1 sharpens it. The certificate is unchanged: it reads the
    logits themselves. T = 1 is the plain loss, bit for bit.

    The gradient flows through the bounds in the gaps too, so training also shrinks them.
    """
    logits = inflated_logits(method, output, labels, epsilon)
    clean_logits = output.logits
    if temperature != 1.0:
        logits, clean_logits = logits / temperature, clean_logits / temperature
    if not trades_lambda:
        return temperature * method.criterion(logits, labels).mean()
    clean = method.criterion(clean_logits, labels)
    return temperature * (clean + trades_lambda * trades_divergence(clean_logits, logits)).mean()


Ramp = Callable[[Array], Array]
# Shapes of the epsilon warm-up: the fraction of the final epsilon at progress t in [0, 1].
EPSILON_RAMPS: Registry[Ramp] = Registry('epsilon schedule')
EPSILON_RAMPS.register('linear', lambda t: t)
# Fast at first, slow at the end: log(1 + (e - 1)·t) goes from 0 to 1, half way at t = 0.38.
EPSILON_RAMPS.register('log', lambda t: jnp.log1p((jnp.e - 1.0) * t))


def epsilon_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The radius the loss inflates for at each step: ``config.epsilon`` after a warm-up.

    ``config.epsilon_warmup_epochs`` > 0 ramps epsilon over that many epochs, from
    ``config.epsilon_start_fraction`` s of it (default 0) to all of it, shaped by
    ``config.epsilon_schedule`` (``linear``, the LMT reference code's schedule for its SVHN
    runs, or ``log``): eps·(s + (1 - s)·ramp(t)). LiResNet and BRONet ramp their training radius
    from 0.1x to 3x of 36/255 over half the run: ``epsilon`` = 3·36/255, s = 1/30. Early in
    training the layer-wise bound L of a deep network is orders of magnitude above its true
    Lipschitz constant, so even a small sqrt(2)·L·eps makes the gradient through L dominate
    before any feature is learned, and the network collapses to constant outputs (see
    ``configs.svhn_variant``); the warm-up lets it learn first.
    Certification and the ``bound_met`` metrics always use the full epsilon.
    """
    warmup_steps = round(config.epsilon_warmup_epochs * steps_per_epoch)
    if warmup_steps <= 0:
        return optax.constant_schedule(config.epsilon)
    ramp = EPSILON_RAMPS.get(config.epsilon_schedule, 'config.epsilon_schedule')
    start = config.epsilon_start_fraction
    return lambda step: config.epsilon * (
        start + (1.0 - start) * ramp(jnp.clip(step / warmup_steps, 0.0, 1.0)))
