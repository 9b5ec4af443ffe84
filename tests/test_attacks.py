"""Tests of the Carlini–Wagner L2 attack against cases with known answers.

A linear classifier has a closed-form minimal untargeted perturbation: the distance to the nearest
half-space {f_j >= f_t}, i.e. min_{j != t} (f_t - f_j) / |w_t - w_j| (plus kappa in the numerator
for a confidence margin). The attack must come within a few percent of it and never below it.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lclmt_jax import attacks
from lclmt_jax.attacks import (
    CWConfig,
    accuracy_under_attack,
    cw_l2_attack,
    cw_l2_min_norms,
    settled_norms,
)

pytestmark = pytest.mark.fast

SIDE = 8  # images are SIDE x SIDE x 1: small enough to keep every compile and run short
DIM = SIDE * SIDE


def _linear_classifier(rng: np.random.Generator, num_classes: int):
    """f(x) = W^T vec(x) + b with Gaussian weights; returns (logits_fn, W, b) in float64 too."""
    kernel = rng.normal(size=(DIM, num_classes))
    bias = rng.normal(size=num_classes)
    kernel32, bias32 = jnp.asarray(kernel, jnp.float32), jnp.asarray(bias, jnp.float32)

    def logits_fn(x):
        return x.reshape((x.shape[0], -1)) @ kernel32 + bias32

    return logits_fn, kernel, bias


def _closed_form(kernel, bias, flat_x, labels, kappa=0.0):
    """Minimal L2 distance to {max_{j != t} f_j >= f_t + kappa}, ignoring the box; its class j,
    the runner-up class at x, and the minimising point (all float64)."""
    n, num_classes = flat_x.shape[0], kernel.shape[1]
    rows = np.arange(n)
    logits = flat_x @ kernel + bias
    diff = kernel.T[labels][:, None, :] - kernel.T[None, :, :]  # (n, K, D): w_t - w_j
    scale = np.linalg.norm(diff, axis=-1)
    scale[rows, labels] = np.inf  # j == t is not a competitor
    dist = (logits[rows, labels][:, None] - logits + kappa) / scale
    dist[rows, labels] = np.inf
    nearest = dist.argmin(axis=1)
    runner_up = np.where(np.eye(num_classes, dtype=bool)[labels], -np.inf, logits).argmax(axis=1)
    direction = diff[rows, nearest] / np.linalg.norm(diff[rows, nearest], axis=-1, keepdims=True)
    r_star = dist[rows, nearest]
    return r_star, nearest, runner_up, flat_x - r_star[:, None] * direction


def _linear_problem(seed: int, kappa: float, count: int = 16, num_classes: int = 4):
    """Correctly classified points whose closed-form answer is what CW must find.

    Kept only where (a) the minimiser stays well inside [0, 1] so the box does not bind, (b) the
    nearest boundary belongs to the runner-up class -- CW's loss follows the runner-up logit, and
    on this non-convex objective a local method may otherwise stop at the runner-up's (farther,
    still valid) boundary -- and (c) the distance is large next to one Adam step (~0.04 in L2
    here at the default learning rate), which would otherwise dominate the relative error.
    """
    rng = np.random.default_rng(seed)
    logits_fn, kernel, bias = _linear_classifier(rng, num_classes)
    flat_x = rng.uniform(0.35, 0.65, size=(40 * count, DIM))
    labels = (flat_x @ kernel + bias).argmax(axis=1)
    r_star, nearest, runner_up, target = _closed_form(kernel, bias, flat_x, labels, kappa)
    keep = ((target.min(axis=1) > 0.05) & (target.max(axis=1) < 0.95) & (nearest == runner_up)
            & (r_star > 0.1) & (r_star < 0.6))
    idx = np.flatnonzero(keep)[:count]
    assert idx.size == count, 'not enough usable points; change the seed'
    images = flat_x[idx].reshape(-1, SIDE, SIDE, 1).astype(np.float32)
    return logits_fn, images, labels[idx].astype(np.int32), r_star[idx]


def _mlp(seed: int, num_classes: int = 5, hidden: int = 16):
    """A small random ReLU network: nonlinear, so the attack has to search."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    init = jax.nn.initializers.lecun_normal()
    w1 = init(keys[0], (DIM, hidden))
    w2 = init(keys[1], (hidden, hidden))
    w3 = init(keys[2], (hidden, num_classes))

    def logits_fn(x):
        h = jax.nn.relu(x.reshape((x.shape[0], -1)) @ w1)
        return jax.nn.relu(h @ w2) @ w3

    return logits_fn


def _assert_genuine(logits_fn, images, labels, norms, adversarial):
    """Each finite positive norm is the distance to a point in [0, 1] that is misclassified."""
    chex.assert_shape(norms, (images.shape[0],))
    chex.assert_equal_shape([images, adversarial])
    assert not np.isnan(norms).any()
    assert (adversarial >= 0.0).all() and (adversarial <= 1.0).all()
    clean_pred = np.asarray(jnp.argmax(logits_fn(jnp.asarray(images)), axis=-1))
    adv_pred = np.asarray(jnp.argmax(logits_fn(jnp.asarray(adversarial)), axis=-1))
    found = np.isfinite(norms) & (norms > 0)
    np.testing.assert_array_equal(norms == 0, clean_pred != labels)
    assert (adv_pred[found] != labels[found]).all()
    for i in np.flatnonzero(found):  # also one example at a time: another batch size, same answer
        single = np.asarray(logits_fn(jnp.asarray(adversarial[i:i + 1])))[0]
        assert single.argmax() != labels[i] and single[labels[i]] < single.max()
    distance = np.linalg.norm((adversarial - images).reshape(len(images), -1), axis=1)
    np.testing.assert_allclose(norms[found], distance[found], rtol=1e-5)
    np.testing.assert_array_equal(adversarial[~found], images[~found])


@pytest.mark.parametrize('kappa', [0.0, 0.5])
def test_linear_classifier_closed_form(kappa):
    logits_fn, images, labels, r_star = _linear_problem(seed=1, kappa=kappa)
    # These minimal distances (~0.1) are only a few Adam steps long at the default learning rate
    # 0.1 (chosen for MNIST-scale distances), so the fine step is used to test precision.
    config = CWConfig(confidence=kappa, learning_rate=0.01)
    norms, adversarial = cw_l2_attack(logits_fn, images, labels, config)
    assert np.isfinite(norms).all()
    # Never below the true minimum (up to float32 rounding), and within 3% above it.
    assert (norms >= r_star * (1 - 1e-5) - 1e-6).all(), (norms - r_star).min()
    np.testing.assert_array_less(norms, 1.03 * r_star)
    default_norms = cw_l2_min_norms(logits_fn, images, labels, CWConfig(confidence=kappa))
    assert (default_norms >= r_star * (1 - 1e-5) - 1e-6).all()
    assert np.median(default_norms / r_star) < 1.04 and np.max(default_norms / r_star) < 1.08
    _assert_genuine(logits_fn, images, labels, norms, adversarial)
    if kappa:
        logits = np.asarray(logits_fn(jnp.asarray(adversarial)))
        true = logits[np.arange(len(labels)), labels]
        other = np.where(np.eye(logits.shape[1], dtype=bool)[labels], -np.inf, logits).max(axis=1)
        assert (other - true > kappa).all()


def test_linear_never_below_true_minimum_anywhere():
    """On arbitrary points of the box (pixels at 0 and 1 included, any runner-up, tiny distances)
    the box can only make the true minimum larger than the closed form, so no norm may be
    smaller than it."""
    rng = np.random.default_rng(7)
    logits_fn, kernel, bias = _linear_classifier(rng, num_classes=6)
    flat_x = np.clip(rng.uniform(-0.2, 1.2, size=(40, DIM)), 0.0, 1.0)
    labels = (flat_x @ kernel + bias).argmax(axis=1).astype(np.int32)
    r_star = _closed_form(kernel, bias, flat_x, labels)[0]
    images = flat_x.reshape(-1, SIDE, SIDE, 1).astype(np.float32)
    norms, adversarial = cw_l2_attack(logits_fn, images, labels, CWConfig(steps=50))
    finite = np.isfinite(norms)
    assert finite.mean() > 0.9
    assert (norms[finite] >= r_star[finite] * (1 - 1e-5) - 1e-6).all()
    _assert_genuine(logits_fn, images, labels, norms, adversarial)


def test_mlp_adversarials_are_genuine_across_padded_chunks():
    logits_fn = _mlp(seed=0)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(19, SIDE, SIDE, 1)).astype(np.float32)
    images[:3, :2] = 0.0  # pixels on the box boundary
    images[3:6, :2] = 1.0
    labels = np.array(jnp.argmax(logits_fn(jnp.asarray(images)), axis=-1), np.int32)
    labels[-4:] = (labels[-4:] + 1) % 5  # four examples misclassified from the start
    config = CWConfig(batch_size=8)  # chunks of 8, 8 and 3 (padded to 8)
    norms, adversarial = cw_l2_attack(logits_fn, images, labels, config)
    _assert_genuine(logits_fn, images, labels, norms, adversarial)
    assert (norms[-4:] == 0).all()
    assert np.isfinite(norms).all() and (norms[:-4] > 0).all()
    # Padding rows cannot influence real ones: the unchunked attack gives the same answer
    # up to float32 differences between matmuls of different batch sizes.
    whole = cw_l2_min_norms(logits_fn, images, labels, config._replace(batch_size=19))
    np.testing.assert_allclose(norms, whole, rtol=1e-3)


def test_misclassified_get_zero_and_unfoolable_get_inf():
    logits_fn, images, labels, _ = _linear_problem(seed=3, kappa=0.0, count=4)
    wrong = (labels + 1) % 4
    norms, adversarial = cw_l2_attack(logits_fn, images, wrong, CWConfig(steps=5))
    np.testing.assert_array_equal(norms, np.zeros(4, np.float32))
    np.testing.assert_array_equal(adversarial, images)

    def constant(x):  # class 0 always wins by 1: no perturbation changes the prediction
        return jnp.zeros((x.shape[0], 3)) + jnp.array([1.0, 0.0, 0.0]) + 0.0 * x.sum()

    zeros = np.zeros(4, np.int32)
    norms, adversarial = cw_l2_attack(constant, images, zeros, CWConfig(steps=5))
    np.testing.assert_array_equal(norms, np.full(4, np.inf, np.float32))
    np.testing.assert_array_equal(adversarial, images)


def test_ties():
    """A clean tie is judged by argmax (first maximal class), like accuracy; an exact tie is never
    reported as an adversarial point."""
    def tied(x):
        return jnp.zeros((x.shape[0], 2)) + 0.0 * x.sum()

    images = np.full((2, SIDE, SIDE, 1), 0.5, np.float32)
    norms = cw_l2_min_norms(tied, images, np.array([0, 1]), CWConfig(steps=5))
    np.testing.assert_array_equal(norms, np.array([np.inf, 0.0], np.float32))


def test_one_compilation_per_function_and_config():
    """Each function is traced once per batch shape: not once per step, round or call."""
    traces = []

    def logits_fn(x):
        traces.append(x.shape)
        return jnp.stack([x.mean(axis=(1, 2, 3)), 0.5 * jnp.ones(x.shape[0])], axis=-1)

    images = np.random.default_rng(0).uniform(0.52, 0.58, size=(5, SIDE, SIDE, 1))
    config = CWConfig(steps=20, binary_search_steps=2, batch_size=2)  # chunks 2, 2, 1 (padded)
    first = cw_l2_min_norms(logits_fn, images, np.zeros(5, np.int32), config)
    count = len(traces)
    assert count > 0
    second = cw_l2_min_norms(logits_fn, images, np.zeros(5, np.int32), config)
    assert len(traces) == count
    np.testing.assert_array_equal(first, second)
    assert np.isfinite(first).all()
    # the plain forward pass and the step, for the two batch shapes (2 and 1): far fewer than
    # the 2 x 20 steps of each chunk
    assert count <= 8


def test_abort_early_ends_converged_rounds_without_losing_distance(monkeypatch):
    """abort_early takes fewer example-steps than the full search on a problem whose rounds
    converge early, and finds the same distances (within 1%): it only stops optimisation that
    had stopped improving."""
    logits_fn, images, labels, r_star = _linear_problem(seed=1, kappa=0.0)
    step = attacks.cw_l2_step
    row_steps = []

    def counted(logits_fn, images, *rest, **kwargs):
        row_steps.append(images.shape[0])
        return step(logits_fn, images, *rest, **kwargs)

    monkeypatch.setattr(attacks, 'cw_l2_step', counted)
    wide = np.concatenate([images] * 4)  # 64 rows: room to shrink the batch below half
    norms = {}
    for abort in (False, True):
        row_steps.clear()
        norms[abort] = cw_l2_min_norms(logits_fn, wide, np.tile(labels, 4),
                                       CWConfig(abort_early=abort))
        norms[abort, 'cost'] = sum(row_steps)
    assert norms[True, 'cost'] < 0.9 * norms[False, 'cost'], norms
    assert np.isfinite(norms[True]).all()
    np.testing.assert_allclose(norms[True], norms[False], rtol=0.01)
    assert (norms[True] >= np.tile(r_star, 4) * (1 - 1e-5) - 1e-6).all()


def test_accuracy_under_attack():
    norms = np.array([0.0, 0.0, 0.3, 0.7, 0.7, 1.2, np.inf, 2.0], np.float32)
    radii = np.linspace(0.0, 3.0, 61)
    acc = accuracy_under_attack(norms, radii)
    chex.assert_shape(acc, radii.shape)
    assert (np.diff(acc) <= 0).all()
    assert acc[0] == pytest.approx(np.mean(norms > 0))  # clean accuracy
    assert accuracy_under_attack(norms, 0.7) == pytest.approx(3 / 8)  # norm == r is broken
    assert accuracy_under_attack(norms, 2.5) == pytest.approx(1 / 8)  # only the inf survives
    assert accuracy_under_attack(norms, 0.7).shape == ()
    finite = norms[np.isfinite(norms)]
    np.testing.assert_array_equal(accuracy_under_attack(finite, radii[radii >= finite.max()]), 0.0)
    with pytest.raises(ValueError):
        accuracy_under_attack([], radii)


def test_accuracy_under_attack_on_attack_output():
    logits_fn = _mlp(seed=1)
    images = np.random.default_rng(1).uniform(size=(10, SIDE, SIDE, 1))
    labels = np.array(jnp.argmax(logits_fn(jnp.asarray(images)), axis=-1), np.int32)
    labels[:3] = (labels[:3] + 1) % 5
    norms = cw_l2_min_norms(logits_fn, images, labels, CWConfig(steps=30, binary_search_steps=2))
    radii = np.concatenate([[0.0], np.sort(norms[np.isfinite(norms)]), [10.0]])
    acc = accuracy_under_attack(norms, radii)
    assert (np.diff(acc) <= 0).all()
    assert acc[0] == pytest.approx(0.7)
    if np.isfinite(norms).all():
        assert acc[-1] == 0.0


def test_rejects_bad_input():
    logits_fn = _mlp(seed=0)
    images = np.full((2, SIDE, SIDE, 1), 0.5, np.float32)
    labels = np.zeros(2, np.int32)
    with pytest.raises(ValueError):
        cw_l2_min_norms(logits_fn, images * 3, labels)
    with pytest.raises(ValueError):
        cw_l2_min_norms(logits_fn, images, labels[:1])
    for bad in (dict(steps=0), dict(binary_search_steps=0), dict(initial_const=0.0),
                dict(confidence=-1.0), dict(batch_size=0)):
        with pytest.raises(ValueError):
            cw_l2_min_norms(logits_fn, images, labels, CWConfig()._replace(**bad))
    empty = cw_l2_min_norms(logits_fn, images[:0], labels[:0])
    chex.assert_shape(empty, (0,))


def test_a_point_past_its_stop_norm_leaves_the_search_with_a_genuine_norm():
    logits_fn = _mlp(seed=0)
    images = np.random.default_rng(2).uniform(size=(6, SIDE, SIDE, 1)).astype(np.float32)
    labels = np.array(jnp.argmax(logits_fn(jnp.asarray(images)), axis=-1), np.int32)
    labels[0] = (labels[0] + 1) % 5  # misclassified: never attacked
    config = CWConfig(steps=30, binary_search_steps=4)
    rounds = {}
    full, _ = cw_l2_attack(logits_fn, images, labels, config,
                           progress=lambda done, total: rounds.update(full=done))
    stop = np.where(np.arange(6) < 3, np.inf, 0.0)  # 1, 2: stop at the first success
    norms, adversarial = cw_l2_attack(logits_fn, images, labels, config, stop_below=stop,
                                      progress=lambda done, total: rounds.update(stopped=done))
    _assert_genuine(logits_fn, images, labels, norms, adversarial)
    assert rounds['full'] == 5 * 4  # the misclassified point costs no round
    assert rounds['stopped'] < rounds['full']
    np.testing.assert_allclose(norms[3:], full[3:], rtol=1e-5)  # the others searched as before
    assert (norms[1:3] >= full[1:3] * (1 - 1e-6)).all()
    with pytest.raises(ValueError, match='stop_below must hold one norm per example'):
        cw_l2_attack(logits_fn, images, labels, config, stop_below=stop[:2])


def test_settled_norms_stop_certified_points_only_when_broken():
    stop = settled_norms(np.array([0.0, 0.5, 2.0]), smallest_radius=0.3)
    assert stop[0] == 0.3  # uncertified: once broken at the smallest reported radius
    assert stop[1] < 0.5 and np.nextafter(stop[1], 1.0) == 0.5  # certified: once norm < R
    assert stop[2] < 2.0
