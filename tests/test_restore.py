"""The public API: ``lclmt_jax.restore`` gives a pure JAX model with sound host-side bounds."""

import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lclmt_jax

pytestmark = pytest.mark.fast


def test_restored_logits_are_a_pure_jax_function(trained_workdir):
    model = lclmt_jax.restore(trained_workdir)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(5, 28, 28, 1)), jnp.float32)
    logits = model.logits(x)
    chex.assert_shape(logits, (5, 10))
    chex.assert_trees_all_close(jax.jit(model.logits)(x), logits, atol=1e-5)
    chex.assert_trees_all_close(model.apply(model.variables, x).logits, logits, atol=1e-6)
    chex.assert_trees_all_close(jax.vmap(model.logits)(x), logits, atol=1e-5)  # per image
    chex.assert_trees_all_close(model.logits(np.asarray(x[0])), logits[0], atol=1e-6)
    # Differentiable in the input: the gradient matches a central finite difference.
    grad = jax.jit(jax.grad(lambda z: model.logits(z).sum()))(x)
    chex.assert_shape(grad, x.shape)
    direction = np.random.default_rng(1).normal(size=x.shape)
    direction = jnp.asarray(direction / np.linalg.norm(direction), jnp.float32)
    step = 1e-4  # in float64, too short to cross a ReLU kink here
    with jax.enable_x64(True):
        x64, d64 = jnp.asarray(x, jnp.float64), jnp.asarray(direction, jnp.float64)
        variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), model.variables)
        f = jax.jit(lambda z: model.apply(variables, z).logits.sum())  # one compile, not per op
        finite_difference = float((f(x64 + step * d64) - f(x64 - step * d64)) / (2 * step))
    np.testing.assert_allclose(float(jnp.vdot(grad, direction)), finite_difference, rtol=2e-3)


def test_restored_bounds_are_sound_and_host_side(trained_workdir):
    model = lclmt_jax.restore(trained_workdir)
    assert model.epoch == 3 and model.input_shape == (28, 28, 1) and model.num_classes == 10
    bound = model.lipschitz_upper_bound()
    norms = [np.linalg.norm(np.asarray(p['kernel'], np.float64), 2) for p in model.params.values()]
    assert bound >= np.prod(norms)
    x = np.random.default_rng(0).uniform(size=(5, 28, 28, 1)).astype(np.float32)
    radii = model.certified_radius(x, np.argmax(model.logits(x), 1))
    assert radii.dtype == np.float64 and radii.shape == (5,) and np.all(radii >= 0)


def test_restore_needs_neither_the_trainer_nor_the_optimizer(trained_workdir):
    code = ('import sys, lclmt_jax; m = lclmt_jax.restore(sys.argv[1]); '
            'm.logits(__import__("numpy").zeros((1, 28, 28, 1), "float32")); '
            'print(sorted(k for k in ("lclmt_jax.train", "lclmt_jax.optimizers", "optax", '
            '"lclmt_jax.losses") if k in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code, trained_workdir], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == '[]'
