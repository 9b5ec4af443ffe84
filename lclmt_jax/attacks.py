"""Carlini–Wagner L2 attack (untargeted), used as the empirical side of robustness evaluation.

Certificates give a *lower* bound on the distance from an input to the nearest misclassified point;
an attack gives an *upper* bound. Plotting the fraction of test points whose smallest adversarial
perturbation exceeds a budget r (paper Figure 2) therefore brackets the true robust accuracy from
above, and every certified radius must stay below the attack's norm for that example -- which is
only a meaningful soundness check if each norm returned here belongs to a point that really is
misclassified. The implementation below is built around that requirement.

Algorithm (Carlini & Wagner 2017, untargeted form), per example:

* change of variables x' = (tanh(w) + 1) / 2 keeps the candidate inside the [0, 1] box without
  clipping; w starts at arctanh of the clean image squeezed by ``_BOX_SHRINK`` so that pixels
  exactly at 0 or 1 give finite values;
* minimise ``|x' - x|^2 + c * max(Z_t(x') - max_{i != t} Z_i(x'), -kappa)`` with Adam for
  ``steps`` iterations, restarting from the clean image with fresh Adam moments for every
  constant c;
* binary search on c: after each round, success lowers the upper bound, failure raises the lower
  bound (or multiplies c by 10 while no upper bound is known);
* the smallest successful perturbation seen at *any* iteration of *any* round is kept;
* (``abort_early``) an example's round ends early once its objective and its closest success
  have stopped improving.

Each Adam step of a round over a batch is one jitted call (``cw_l2_step``, from the host loop
of ``cw_l2_round``); the host runs the binary search between rounds, so an example whose answer
is settled (misclassified from the start, or past a caller's ``stop_below``) leaves the batch and
costs nothing more, and the rounds of the examples still searched fill the batches at the
model's full width. Batches are padded to a few sizes, each compiled once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lclmt_jax import margins
from lclmt_jax.progress import ProgressFn

Array = jax.Array
LogitsFn = Callable[[Array], Array]

# arctanh(+-1) is infinite: squeeze 2x - 1 into (-1, 1) before inverting (moves a pixel <= 5e-7).
_BOX_SHRINK = 0.999999
# Binary-search bookkeeping: the upper bound starts "unknown" (1e10); below 1e9 it is a real bound.
_UPPER_UNKNOWN = 1e10
_UPPER_KNOWN_BELOW = 1e9
# Relative float32 guard on the success test: during the search a point counts only if another
# logit wins by more than 1e-5 * (1 + max|Z|). Forward passes compiled differently (another batch
# size, eager vs. jit) can disagree in the last bits, and a point accepted with a margin of a few
# ulps could then be classified correctly by the caller's own check. The cost in distance is about
# guard / |grad margin|, i.e. ~1e-5 of the norm, far below the attack's own optimisation error.
_MARGIN_GUARD = 1e-5
# abort_early: an example's round ends when its lowest objective and its closest success each fell
# by less than this fraction (CW's 0.9999 test) over a window of steps // 10 steps ...
_ABORT_TOLERANCE = 1e-4
# ... in this many windows in a row (Adam at the default step oscillates about the boundary for
# windows and then refines again: with 2, one of 16 closed-form points ended 2% farther).
_ABORT_PATIENCE = 3


class CWConfig(NamedTuple):
    """Hyper-parameters of the attack. Hashable, so it is a static argument of the jitted batch.

    Attributes:
      steps: Adam iterations per binary-search round (100, the paper's setting).
      binary_search_steps: rounds of the search over the trade-off constant c. Five rounds let c
        move from ``initial_const`` by 10**3 upwards or 2**-4 downwards and still refine a
        bracket, and keep the default attack on the full MNIST test set (10,000 images, paper
        MLP) at about 18 s on a 2-core CPU, a third of the one-minute budget, leaving room for
        slower or shared machines; every round costs the same (~3.6 s there). Nine rounds (the
        original CW default) measured ~1% tighter mean norms at ~1.8x the time.
      confidence: kappa; a point counts as adversarial only if some other logit beats the true
        one by more than kappa (0 = plain misclassification, which is what norms are reported for).
      learning_rate: Adam step size in tanh space, 0.1. 0.01 is the original CW value, tuned for
        10,000 iterations. Each Adam step moves w by at most about this much per pixel, so with
        100 steps w moves by <= 1: pixels at exactly 0 or 1 (arctanh(+-0.999999) = +-7.25, most
        of an MNIST digit) cannot move at all and mid-range pixels by <= ~0.4. On real MNIST
        digits and a standard MLP this setting found no adversarial point for 30% of the test
        examples that a 1000-step attack breaks, and norms ~2x too large for the rest, whereas
        0.1 came within ~2% of the 1000-step norms for every example. 0.1 is worse, though, when
        the minimal perturbation is only a few Adam steps long (tiny images, tiny distances).
      initial_const: starting c. For [0, 1] images the squared-distance term at the minimal
        perturbation is O(1) and the margin's gradient norm is O(1)-O(10) (smaller for the
        Lipschitz-margin-trained networks this project produces), so c = 1 starts near the
        break-even point instead of spending rounds climbing up from the original 1e-3.
        Too large a c is the costlier mistake (each round only halves it, and Adam's step
        normalisation then barely pulls the point back towards x), too small is cheap (x10 per
        round).
      batch_size: examples per jitted call; the last chunk is padded to this size (or the whole
        input is one chunk if it is smaller), so all chunks share one compilation.
      abort_early: end an example's round once it has stopped improving (CW's own option, per
        example here): every ``steps // 10`` steps, an example whose lowest objective and
        closest success both improved by less than ``_ABORT_TOLERANCE`` (relative) over each
        of the last ``_ABORT_PATIENCE`` windows is done for this round, and leaves the batch
        once the rest fit a batch of half the size (``cw_l2_round``). Its best success is
        kept, so this only ends optimisation that had converged. False: every example takes
        every step.
    """

    steps: int = 100
    binary_search_steps: int = 5
    confidence: float = 0.0
    learning_rate: float = 0.1
    initial_const: float = 1.0
    batch_size: int = 10000
    abort_early: bool = True


def _check_config(config: CWConfig) -> None:
    """Rejects settings for which the search is meaningless, before anything is compiled."""
    if config.steps < 1 or config.binary_search_steps < 1 or config.batch_size < 1:
        raise ValueError(f'steps, binary_search_steps and batch_size must be >= 1: {config}')
    if not config.learning_rate > 0 or not config.initial_const > 0:
        raise ValueError(f'learning_rate and initial_const must be > 0: {config}')
    if not config.confidence >= 0:
        raise ValueError(f'confidence must be >= 0: {config}')


def _margin(logits: Array, labels: Array) -> tuple[Array, Array]:
    """Z_t - max_{i != t} Z_i per example (negative iff another class strictly wins) and the
    numerical guard ``_MARGIN_GUARD * (1 + max_i |Z_i|)`` that a success must clear."""
    logits = logits.astype(jnp.float32)
    guard = _MARGIN_GUARD * (1.0 + jnp.max(jnp.abs(logits), axis=-1))
    return margins.margin(logits, labels), jax.lax.stop_gradient(guard)


class RoundState(NamedTuple):
    """One round's optimisation state per example: the point ``w`` in tanh space, Adam's moments,
    the best success so far (squared distance, inf: none; and its point), whether this round
    succeeded yet, and the lowest objective of this round (for ``abort_early``)."""

    w: Array
    opt_state: optax.OptState
    best_dist2: Array
    best_adv: Array
    found: Array
    lowest_loss: Array


@functools.partial(jax.jit, static_argnames='config')
def _start_round(images: Array, best_dist2: Array, best_adv: Array,
                 config: CWConfig) -> RoundState:
    """Every round restarts from the clean image with fresh Adam moments."""
    w = jnp.arctanh((2.0 * images - 1.0) * _BOX_SHRINK)
    return RoundState(w, optax.adam(config.learning_rate).init(w), best_dist2, best_adv,
                      jnp.zeros(images.shape[:1], bool), jnp.full(images.shape[:1], jnp.inf))


@functools.partial(jax.jit, static_argnames=('logits_fn', 'config'))
def cw_l2_step(logits_fn: LogitsFn, images: Array, labels: Array, const: Array,
               state: RoundState, config: CWConfig = CWConfig()) -> RoundState:
    """One Adam step of the attack on a batch, at each example's own trade-off constant ``const``.

    Minimises ``|x' - x|^2 + c * max(Z_t(x') - max_{i != t} Z_i(x'), -kappa)`` over
    ``x' = (tanh(w) + 1) / 2`` and keeps the closest success. ``logits_fn`` must treat rows
    independently (no batch statistics): the per-example objectives are summed into one scalar
    to get all per-example gradients from a single backward pass. It is a static argument: pass
    the same function object on every call to reuse the compilation.

    Success test: a candidate counts only if ``max_{i != t} Z_i > Z_t + kappa + g``
    *strictly*, with a tiny float32 guard ``g = 1e-5 * (1 + max|Z|)``. With kappa = 0 this means
    the true class is not among the maximal logits, so ``argmax != label`` holds whatever rule
    breaks ties, with room for rounding differences between forward passes; an exact tie is never
    reported as an adversarial example. ``cw_l2_attack`` re-checks every kept point with a plain
    forward pass at the end.
    """
    x = images
    pixel_axes = tuple(range(1, x.ndim))
    per_example = (-1,) + (1,) * (x.ndim - 1)
    kappa = jnp.float32(config.confidence)

    def objective(w: Array) -> tuple[Array, tuple[Array, Array, Array]]:
        candidate = (jnp.tanh(w) + 1.0) * 0.5
        dist2 = jnp.sum(jnp.square(candidate - x), axis=pixel_axes)
        margin, guard = _margin(logits_fn(candidate), labels)
        loss = dist2 + const * jnp.maximum(margin, -kappa)
        # Rows are independent, so the gradient of the sum is the per-example gradient.
        return jnp.sum(loss), (candidate, dist2, margin + guard, loss)

    grads, (candidate, dist2, guarded_margin, loss) = jax.grad(objective, has_aux=True)(state.w)
    # The point judged is the one the gradient was taken at (before this update).
    success = guarded_margin < -kappa
    improved = success & (dist2 < state.best_dist2)
    updates, opt_state = optax.adam(config.learning_rate).update(grads, state.opt_state, state.w)
    return RoundState(optax.apply_updates(state.w, updates), opt_state,
                      jnp.where(improved, dist2, state.best_dist2),
                      jnp.where(improved.reshape(per_example), candidate, state.best_adv),
                      state.found | success, jnp.minimum(state.lowest_loss, loss))


def cw_l2_round(
    logits_fn: LogitsFn, images, labels, const, best_dist2, best_adv,
    config: CWConfig = CWConfig()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One binary-search round on one batch: ``config.steps`` Adam steps (``cw_l2_step``) from
    the clean image, at each example's constant ``const``; returns ``(found, best_dist2,
    best_adv)`` as numpy arrays -- whether the round succeeded per example (which moves its
    binary search) and the best success so far, updated where this round came closer.

    The steps are jitted calls from a host loop, not a ``lax.scan``: XLA:CPU runs a conv
    network's gradient 1.6x slower inside a loop than as a call of its own (4C3F, batch 200:
    10.8 against 6.7 ms per image and step), and the dispatch of a call costs microseconds
    beside a step's milliseconds. With ``config.abort_early`` the host looks at the examples'
    lowest objectives every ``steps // 10`` steps; once the examples still improving fit a batch
    of half the size or less (a power of two, at least ``_SMALLEST_BATCH``), the converged ones
    are done and the rest go on in that smaller batch (``_compacted_size``, ``_gather_rows``), so
    a round costs what its slowest examples need, not ``steps`` full batches.
    """
    images = jnp.asarray(images, jnp.float32)
    labels, const = jnp.asarray(labels), jnp.asarray(const, jnp.float32)
    state = _start_round(images, jnp.asarray(best_dist2, jnp.float32),
                         jnp.asarray(best_adv, jnp.float32), config)
    size = images.shape[0]
    window = max(config.steps // 10, 1) if config.abort_early else config.steps
    found = np.zeros((size,), bool)
    dist2 = np.array(best_dist2, np.float32).reshape(size)
    adv = np.array(best_adv, np.float32)
    rows = np.arange(size)  # the input row of each batch row
    # each batch row's lowest objective and closest success a window ago
    previous = np.full((2, size), np.inf)
    stalls = np.zeros((size,), int)  # windows in a row without improvement
    step = 0
    while True:
        for _ in range(min(window, config.steps - step)):
            state = cw_l2_step(logits_fn, images, labels, const, state, config)
        step += min(window, config.steps - step)
        if step >= config.steps:
            break
        lowest = np.stack([np.asarray(state.lowest_loss, np.float64),
                           np.asarray(state.best_dist2, np.float64)])
        with np.errstate(invalid='ignore'):  # inf - inf before the first window: improving
            improved = (~(lowest >= previous - _ABORT_TOLERANCE * np.abs(previous))).any(0)
        stalls = np.where(improved, 0, stalls + 1)
        previous = lowest
        improving = stalls < _ABORT_PATIENCE
        smaller = _compacted_size(int(np.count_nonzero(improving)), rows.size)
        if smaller is None:
            continue
        _write_rows(state, rows, found, dist2, adv)
        if smaller == 0:
            return found, dist2, adv
        keep = np.flatnonzero(improving)
        take = np.concatenate([keep, np.full((smaller - keep.size,), keep[0])])
        state, images, labels, const = _gather_rows((state, images, labels, const), take)
        rows, previous, stalls = rows[take], previous[:, take], stalls[take]
    _write_rows(state, rows, found, dist2, adv)
    return found, dist2, adv


# abort_early never shrinks a round's batch below this many rows: smaller batches save little
# and each new size is one more compilation.
_SMALLEST_BATCH = 16


def _compacted_size(improving: int, size: int) -> int | None:
    """The batch size a round goes on with when ``improving`` of its ``size`` rows still
    improve: 0 when none does, the smallest power of two >= ``improving`` (and >=
    ``_SMALLEST_BATCH``) when that is at most half of ``size``, None (keep the batch as it is)
    otherwise. Powers of two keep the compiled shapes few."""
    if improving == 0:
        return 0
    target = max(_SMALLEST_BATCH, 1 << max(improving - 1, 0).bit_length())
    return target if 2 * target <= size else None


def _gather_rows(tree, take: np.ndarray):
    """Rows ``take`` of every per-example array in ``tree`` (scalars, like Adam's step count,
    are shared by all rows and kept)."""
    return jax.tree_util.tree_map(lambda leaf: leaf[take] if leaf.ndim else leaf, tree)


def _write_rows(state: RoundState, rows: np.ndarray, found: np.ndarray, dist2: np.ndarray,
                adv: np.ndarray) -> None:
    """Copies the batch's per-example results into the round's output rows ``rows`` (a batch
    row repeated as padding carries the same values, so its copies agree)."""
    found[rows] = np.asarray(state.found)
    dist2[rows] = np.asarray(state.best_dist2)
    adv[rows] = np.asarray(state.best_adv)


@functools.partial(jax.jit, static_argnames='logits_fn')
def _plain_margins(logits_fn: LogitsFn, images: Array, labels: Array) -> Array:
    """``Z_t - max_{i != t} Z_i`` of a plain forward pass, and whether argmax misses the label."""
    logits = logits_fn(images.astype(jnp.float32))
    return _margin(logits, labels)[0], jnp.argmax(logits, axis=-1) != labels


def _bucket(count: int, limit: int) -> int:
    """The padded batch size for ``count`` rows: ``count`` rounded up to an eighth of its
    power-of-two octave (at most 1/8 of padding), at most ``limit``. Shapes repeat from round
    to round and run to run, so each is compiled once (and cached on disk)."""
    granule = 2 ** max(int(count).bit_length() - 4, 0)
    return min(limit, -(-count // granule) * granule)


def _balanced_chunks(indices: np.ndarray, limit: int) -> list[np.ndarray]:
    """``indices`` split into the fewest chunks of at most ``limit``, all of one size."""
    if indices.size == 0:
        return []
    count = -(-indices.size // limit)
    size = -(-indices.size // count)
    return [indices[start:start + size] for start in range(0, indices.size, size)]


def _padded(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` with zero rows appended up to ``size`` rows. Rows never interact (per-example
    loss, elementwise Adam, per-example constants), so the padding cannot affect real rows; its
    results are sliced off."""
    missing = size - array.shape[0]
    return np.concatenate([array, np.zeros((missing,) + array.shape[1:], array.dtype)]) \
        if missing else array


def _batched(function: Callable, limit: int, indices: np.ndarray, *arrays: np.ndarray) -> list:
    """``function`` on the rows ``indices`` of ``arrays``, in balanced padded chunks of at most
    ``limit`` rows; the outputs (a tuple per call) gathered back as numpy arrays of len(indices).
    All chunks are dispatched before any result is read, so the device never waits on the
    host."""
    chunks = _balanced_chunks(indices, limit)
    outputs = [function(*(_padded(array[chunk], _bucket(chunk.size, limit)) for array in arrays))
               for chunk in chunks]
    return [np.concatenate([np.asarray(output[k])[:chunk.size]
                            for output, chunk in zip(outputs, chunks, strict=True)])
            for k in range(len(outputs[0]))] if outputs else []


def cw_l2_attack(
    logits_fn: LogitsFn, images, labels, config: CWConfig = CWConfig(),
    stop_below=None, progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Attacks every example; returns the minimal norms found and the points realising them.

    The binary search runs round by round on the host, each round batched and jitted
    (``cw_l2_round``) over the examples still searched, in chunks of at most
    ``config.batch_size`` padded to a few fixed sizes (one compilation each). An example leaves
    the search when nothing more can change its answer:

    * it is misclassified already (norm 0: never attacked);
    * its best norm is at most ``stop_below[i]`` (a caller's rule, e.g. a point broken at every
      radius it reports, or a certificate already broken); None: every example runs every round.

    Args:
      logits_fn: pure JAX map from float32 images (N, H, W, C) in [0, 1] to logits (N, K),
        row-independent, typically closing over trained parameters. Reuse the same object across
        calls to avoid recompiling.
      images: array-like (N, ...) with values in [0, 1].
      labels: array-like (N,) of true class indices.
      config: attack settings.
      stop_below: optional array-like (N,) of norms: the search of example i ends once it has a
        verified-in-loop success of norm <= stop_below[i]. A stopped norm is still a genuine
        upper bound, only not the smallest this search could have found.
      progress: optional ``progress(done, total)`` callback (``lclmt_jax.progress``), called after
        each chunk with the example-rounds done and the most there can be.

    Returns:
      ``(min_norms, adversarial_images)`` as numpy arrays: min_norms (N,) float32 as described in
      :func:`cw_l2_min_norms`; adversarial_images (N, ...) float32, the point realising each
      finite positive norm (the clean image where the norm is 0 or inf), so callers can verify
      ``argmax logits_fn(adv) != label`` and ``|adv - x|_2 == norm`` themselves.

    Every reported point is re-evaluated with ``logits_fn`` at the end and dropped (norm ``inf``)
    unless it is still strictly misclassified, so numerical drift between the in-loop forward pass
    and a plain forward pass cannot produce a bogus norm. The clean image is judged with
    ``jnp.argmax`` (first maximal index), i.e. the same rule as ordinary accuracy, so the
    fraction of positive norms equals clean accuracy.
    """
    _check_config(config)
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int32)
    if images.ndim < 2 or labels.shape != images.shape[:1]:
        raise ValueError(
            f'need images (N, ...) and labels (N,); got {images.shape} and {labels.shape}')
    if images.size and (images.min() < 0.0 or images.max() > 1.0):
        raise ValueError('images must lie in [0, 1] (the tanh change of variables assumes it)')
    n = images.shape[0]
    if stop_below is not None:
        stop_below = np.asarray(stop_below, np.float64)
        if stop_below.shape != (n,):
            raise ValueError(f'stop_below must hold one norm per example ({n}), got shape '
                             f'{stop_below.shape}')
    if n == 0:
        return np.zeros((0,), np.float32), images.copy()

    limit = config.batch_size
    everything = np.arange(n)
    predict = functools.partial(_plain_margins, logits_fn)
    _, clean_wrong = _batched(predict, limit, everything, images, labels)
    const = np.full((n,), config.initial_const, np.float32)
    lower = np.zeros((n,), np.float32)
    upper = np.full((n,), _UPPER_UNKNOWN, np.float32)
    best_dist2 = np.full((n,), np.inf, np.float32)
    best_adv = images.copy()
    searching = ~clean_wrong
    search_round = functools.partial(cw_l2_round, logits_fn, config=config)
    done = 0  # example-rounds finished
    for round_index in range(config.binary_search_steps):
        indices = np.flatnonzero(searching)
        # at most: this round's examples, and all of them again in every later round
        total = done + indices.size * (config.binary_search_steps - round_index)
        for chunk in _balanced_chunks(indices, limit):
            size = _bucket(chunk.size, limit)
            found, dist2, adv = (a[:chunk.size] for a in search_round(
                *(_padded(a[chunk], size) for a in (images, labels, const, best_dist2,
                                                    best_adv))))
            best_dist2[chunk], best_adv[chunk] = dist2, adv
            upper[chunk] = np.where(found, np.minimum(upper[chunk], const[chunk]), upper[chunk])
            lower[chunk] = np.where(found, lower[chunk], np.maximum(lower[chunk], const[chunk]))
            const[chunk] = np.where(upper[chunk] < _UPPER_KNOWN_BELOW,
                                    np.float32(0.5) * (lower[chunk] + upper[chunk]),
                                    np.float32(10.0) * const[chunk])
            done += chunk.size
            if progress is not None:
                progress(done, total)
        if stop_below is not None:
            searching &= ~(np.sqrt(best_dist2.astype(np.float64)) <= stop_below)

    # Re-check the kept points with a plain forward pass and report their true distance.
    final_margin, _ = _batched(predict, limit, everything, best_adv, labels)
    verified = np.isfinite(best_dist2) & (final_margin < 0.0) & ~clean_wrong
    found_norm = np.sqrt(np.sum(np.square(best_adv - images).reshape(n, -1), axis=1,
                                dtype=np.float32))
    norms = np.where(clean_wrong, 0.0, np.where(verified, found_norm, np.inf)).astype(np.float32)
    adversarial = np.where(verified.reshape((-1,) + (1,) * (images.ndim - 1)), best_adv, images)
    return norms, adversarial


def settled_norms(certified_radii, smallest_radius: float) -> np.ndarray:
    """Per example, the norm at which its search may stop (``cw_l2_attack``'s ``stop_below``)
    without changing what an evaluation at radii >= ``smallest_radius`` reports.

    * A certified point (radius R > 0) stops once the attack breaks its certificate (a norm
      below R): the evaluation fails on it whatever a longer search finds. Until then it runs
      every round, so the soundness self-check loses nothing.
    * An uncertified point stops once it is broken at ``smallest_radius`` (a norm <= it): it
      then counts as broken at every reported radius, and a longer search could only lower a
      norm that already counts as broken. Its norm is still a genuine upper bound, but may lie
      above the smallest this search would have found (the median norm and the curve below
      ``smallest_radius`` see that).
    """
    radii = np.asarray(certified_radii, np.float64)
    return np.where(radii > 0, np.nextafter(radii, 0.0), float(smallest_radius))


def cw_l2_min_norms(
    logits_fn: LogitsFn, images, labels, config: CWConfig = CWConfig(), stop_below=None,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Per example: the smallest ``|delta|_2`` found with ``argmax logits_fn(x + delta) != label``.

    ``x + delta`` stays in [0, 1] through the tanh change of variables. Returns a float32 array
    (N,): 0.0 for examples the model already misclassifies, ``np.inf`` where no adversarial point
    was found, otherwise the exact distance to a point re-verified to be misclassified (strictly:
    the true logit is below some other logit). Being found by an attack, each value is an *upper*
    bound on the example's true minimal adversarial distance, so certified radii must not exceed
    it. See :func:`cw_l2_attack` for arguments and :func:`cw_l2_round` for tie handling.
    """
    return cw_l2_attack(logits_fn, images, labels, config, stop_below, progress)[0]


def accuracy_under_attack(min_norms, radii) -> np.ndarray:
    """Fraction of examples still correctly classified at each L2 budget r (paper Figure 2).

    An example survives budget r iff its smallest adversarial perturbation is strictly larger
    than r (a perturbation of norm exactly r is within budget), so the value is
    ``mean(min_norms > r)``: at r = 0 it is the clean accuracy (misclassified examples have norm
    0), it never increases with r, and examples with norm ``inf`` survive every budget. Returns
    float64 values with the shape of ``radii``.
    """
    norms = np.asarray(min_norms, dtype=np.float64).reshape(-1)
    radii = np.asarray(radii, dtype=np.float64)
    if norms.size == 0:
        raise ValueError('accuracy_under_attack needs at least one example')
    if np.isnan(norms).any() or np.isnan(radii).any():
        raise ValueError('min_norms and radii must not contain NaN')
    survived = norms[:, None] > radii.reshape(-1)[None, :]
    return survived.mean(axis=0).reshape(radii.shape)
