"""The measurements of scripts/wrn_looseness.py against exact computations on a small WRN.

The factor chain must compose to the network (logits and bounds); the power-iteration local
norms must match the SVD of brute-force Jacobians; no local norm may exceed its sound bound; and
zero-initialised residual branches (all-zero conv kernels, which XLA:CPU miscompiles when they are
compile-time constants) must measure exactly.
"""

import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lclmt_jax import bounds
from lclmt_jax.models.wrn import WideResNet

SCRIPT = os.path.join(os.path.dirname(__file__), '..', 'scripts', 'wrn_looseness.py')


@pytest.fixture(scope='module')
def looseness():
    spec = importlib.util.spec_from_file_location('wrn_looseness', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules['wrn_looseness'] = module  # flax modules defined there need their module
    spec.loader.exec_module(module)
    return module


def _perturbed(variables, seed=1):
    """Every parameter and BN statistic moved off its initial value (a trained-like state):
    nonzero residual branches, scales and variances far from 1."""
    keys = iter(jax.random.split(jax.random.key(seed), 200))

    def move(path, leaf):
        names = [getattr(p, 'key', '') for p in path]
        noise = jax.random.normal(next(keys), leaf.shape)
        if 'var' in names:
            return jnp.exp(noise)
        if 'scale' in names:
            return leaf * jnp.exp(0.5 * noise)
        if 'kernel' in names:
            return leaf + 0.2 * noise / np.sqrt(np.prod(leaf.shape[:-1]))
        return leaf + 0.1 * noise

    moved = {c: jax.tree_util.tree_map_with_path(move, t)
             for c, t in variables.items() if c != 'lipschitz'}
    return {**moved, 'lipschitz': variables['lipschitz']}


@pytest.fixture(scope='module')
def small_wrn():
    model = WideResNet(depth=10, width=1, num_classes=5, zero_init_residual=True,
                       estimator=bounds.Estimator(3, 1, 0))
    variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    x = jax.random.uniform(jax.random.key(2), (3, 8, 8, 3))
    return model, variables, x


@pytest.fixture(scope='module')
def perturbed_chain(looseness, small_wrn):
    """The small WRN in a trained-like state (``_perturbed``), its factor chain, test points."""
    model, variables, x = small_wrn
    trained = _perturbed(variables)
    return model, trained, looseness.factors(model, trained), x


def test_factors_compose_to_the_network(looseness, perturbed_chain):
    model, trained, chain, x = perturbed_chain
    assert [f.name for f in chain] == ['stem', 'group1_block1', 'group2_block1',
                                       'group3_block1', 'final_bn_relu', 'pool_head']
    looseness.check_factors(model, trained, chain, x)  # raises on any mismatch
    # a chain that drops a factor is caught
    with pytest.raises(AssertionError):
        looseness.check_factors(model, trained, chain[:1] + chain[2:], x)


def test_block_layer_bounds_match_the_model(looseness, perturbed_chain):
    model, trained, chain, x = perturbed_chain
    activations, sound = looseness.run_factors(chain, x, sound=True)
    for k, factor in enumerate(chain):
        if factor.block is None:
            continue
        layers = looseness.block_layer_bounds(factor, activations[k].shape[1:])
        np.testing.assert_allclose(layers['block_folded'], sound[k], rtol=1e-9)
        assert layers['block_folded'] <= layers['block_product'] * (1 + 1e-9)
        assert layers['branch_folded'] <= layers['branch_product'] * (1 + 1e-9)


def test_local_norms_match_the_exact_jacobian(looseness, perturbed_chain):
    model, trained, chain, x = perturbed_chain
    labels = np.zeros(len(x), int)

    def logits_fn(v, z):
        return model.apply(v, z).logits

    exact = looseness.jacobian_norms(logits_fn, trained, x, labels)
    # brute force: the dense Jacobian of each image, float64 SVD
    for i in range(len(x)):
        jac = jax.jacrev(lambda z: model.apply(trained, z[None]).logits[0])(x[i])
        matrix = np.asarray(jac, np.float64).reshape(5, -1)
        np.testing.assert_allclose(exact['logits'][i], np.linalg.norm(matrix, 2), rtol=1e-5)
        differences = matrix[labels[i]] - matrix
        np.testing.assert_allclose(exact['pairwise'][i], np.linalg.norm(differences, axis=1),
                                   rtol=1e-5, atol=1e-7)
    iterated = looseness.local_norms(looseness.prefix_fn(chain), [f.variables for f in chain],
                                     x, iterations=300)
    np.testing.assert_allclose(iterated, exact['logits'], rtol=1e-3)
    sound = looseness.certify.sound_bounds(model, trained, x.shape[1:]).lipschitz
    assert exact['logits'].max() <= sound


def test_every_local_norm_is_below_its_sound_bound(looseness, perturbed_chain):
    model, trained, chain, x = perturbed_chain
    activations, sound = looseness.run_factors(chain, x, sound=True)
    for k, factor in enumerate(chain):
        local = looseness.local_norms(looseness.factor_fn(factor), factor.variables,
                                      activations[k], iterations=50)
        assert np.all(local > 0) and local.max() <= sound[k], factor.name
        if factor.block is not None:
            branch = looseness.local_norms(looseness.branch_fn(factor), factor.variables,
                                           activations[k], iterations=50)
            layers = looseness.block_layer_bounds(factor, activations[k].shape[1:])
            assert branch.max() <= layers['branch_folded'], factor.name
    # the stem is linear: its local norm is its operator norm, which the sound bound covers
    stem = chain[0]
    matrix = np.asarray(jax.jacrev(lambda z: stem.module.apply(stem.variables, z[None])[0][0])(
        x[0]), np.float64).reshape(-1, x[0].size)
    local = looseness.local_norms(looseness.factor_fn(stem), stem.variables, x[:1], 300)
    np.testing.assert_allclose(local[0], np.linalg.norm(matrix, 2), rtol=1e-3)


def test_zero_residual_branches_measure_exactly(looseness):
    # 32x32 inputs: at the stand-in's shapes, a compiled conv with an all-zero *constant* kernel
    # returned uninitialised memory (1e7 to inf here); the variables must stay arguments
    model = WideResNet(depth=10, width=1, num_classes=5, zero_init_residual=True,
                       estimator=bounds.Estimator(3, 1, 0))
    variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    x = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3))
    chain = looseness.factors(model, variables)
    activations, sound = looseness.run_factors(chain, x, sound=True)
    for k in (1, 2, 3):  # the identity block and both projection blocks
        block = chain[k]
        local = looseness.local_norms(looseness.factor_fn(block), block.variables,
                                      activations[k], iterations=5)
        assert np.all(local > 0.5) and local.max() <= sound[k], (block.name, local)
        branch = looseness.local_norms(looseness.branch_fn(block), block.variables,
                                       activations[k], iterations=5)
        np.testing.assert_array_equal(branch, 0.0)
    np.testing.assert_allclose(sound[1], 1.0, rtol=1e-5)  # 1 + 0: the identity block
