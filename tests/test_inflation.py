"""Inflation transforms on hand-made logits."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from lclmt_jax import inflation

LOGITS = jnp.array([[3.0, 1.0, 2.0, -1.0],
                    [0.0, 5.0, 5.0, 1.0],   # tie for the runner-up of class 0: first index (1)
                    [4.0, 4.0, 0.0, 0.0]])  # true class 1 ties with class 0
LABELS = jnp.array([0, 0, 1])
MARGIN = jnp.float32(0.5)


def test_plain_leaves_logits_alone():
    chex.assert_trees_all_equal(inflation.plain(LOGITS, LABELS, MARGIN), LOGITS)


def test_lmt_raises_every_wrong_logit_and_never_the_true_one():
    out = inflation.lmt(LOGITS, LABELS, MARGIN)
    expected = LOGITS + MARGIN * (1 - jax_one_hot(LABELS))
    chex.assert_trees_all_close(out, expected)
    np.testing.assert_array_equal(out[np.arange(3), LABELS], LOGITS[np.arange(3), LABELS])


def test_lc_lmt_raises_only_the_runner_up():
    out = inflation.lc_lmt(LOGITS, LABELS, MARGIN)
    changed = np.asarray(out != LOGITS)
    np.testing.assert_array_equal(changed, [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0]])
    chex.assert_trees_all_close(out[changed], LOGITS[changed] + MARGIN)


def test_runner_up_never_the_true_class_even_when_it_is_smallest():
    logits = jnp.array([[-9.0, -1.0, -2.0]])
    assert int(inflation.runner_up(logits, jnp.array([0]))[0]) == 1


def test_margin():
    chex.assert_trees_all_close(inflation.margin(LOGITS, LABELS), jnp.array([1.0, -5.0, 0.0]))


def test_required_margin_is_sqrt2_L_eps():
    chex.assert_trees_all_close(inflation.required_margin(jnp.float32(3.0), 0.5),
                                jnp.float32(np.sqrt(2) * 1.5))


def test_unknown_method_names_allowed_ones():
    with pytest.raises(ValueError, match="unknown method 'lmtt'.*plain, lmt, lc_lmt"):
        inflation.get_inflation('lmtt')


def jax_one_hot(labels):
    return jnp.eye(LOGITS.shape[-1])[labels]
