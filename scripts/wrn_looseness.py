"""Why the batch-normalised WRN collapses under certified training: bound vs local Jacobian norms.

Trains a WRN config with the library's own trainer (``train.train_and_evaluate``, one epoch per
call, resuming from the previous epoch's checkpoint) and, at initialisation and after every
epoch, measures in eval mode (running BN statistics: the network the certificate is about):

* per factor of the product bound L = L_stem · prod_blocks L_block · L_final_bn · L_pool·L_head:
  the training estimate (power iteration; in train mode on a training batch, the value the loss
  uses, and in eval mode), the sound bound (float64, ``sound=True``), and for each block the
  product of its layers' bounds beside the BN-folded bound (``layers.preact_block.PreActBlock``);
* the largest local Jacobian norm of each factor at the test points' own activations (power
  iteration on J^T J with jvp/vjp), of the residual branch alone, and of every prefix
  x -> h_k of the network, so the report can say which factor is loose and how the slack
  compounds with depth;
* the whole network: training L, sound L, the exact local Jacobian norm of x -> logits and of
  x -> f_t - f_j (jacrev + SVD) at the test points, the empirical ratio |f(x + d) - f(x)|/|d|
  at |d| = eps (along the local top singular direction and random directions);
* the test set: accuracy, margins, the required margin sqrt(2)·L·eps with the training and the
  sound L, and the share certified at eps (sound bounds, exact arithmetic; the float32
  certificate is ``launch.py --mode=evaluate --evaluators=certificates``).

Local Jacobian norms are *lower* bounds on the Lipschitz constant (the sup over all inputs);
the ratio sound / local is an upper bound on how loose the certificate's L is. Writes
``looseness.json`` (every number) and ``looseness.md`` (a table per epoch) in ``--out``; the
run's workdir is ``--out``/train (resumable; evaluate it with ``launch.py --mode=evaluate``).
docs/SVHN.md ("Why the WRN collapses, measured") has the results.

  python scripts/wrn_looseness.py --out=runs/wrn_looseness/lc_lmt --method=lc_lmt \\
      --epsilon=0.1412 --epochs=4 --examples=10
  python scripts/wrn_looseness.py --out=runs/wrn_looseness/plain --method=plain --epochs=3
  python scripts/wrn_looseness.py --out=runs/wrn_looseness/lc_warm6 --epochs=4 \\
      --set=epsilon_warmup_epochs=6.0 --set=epsilon_schedule=log

Default config: ``experiments/svhn_standin.py`` (WRN-10-1 on the SVHN stand-in, Adam 1e-3,
batch 128, the WRN settings of ``configs.svhn_variant``) with LC-LMT at eps = 36/255; ``--set``
overrides any config field (``field=value``, dotted keys, Python literals).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lclmt_jax import (  # noqa: E402
    bounds,
    certify,
    compilation_cache,
    config_schema,
    data,
    margins,
    restored,
    train,
)
from lclmt_jax.activations import relu  # noqa: E402
from lclmt_jax.layers.batchnorm import LipschitzBatchNorm, batch_norm_multipliers  # noqa: E402
from lclmt_jax.layers.conv import LipschitzConv  # noqa: E402
from lclmt_jax.layers.dense import LipschitzDense  # noqa: E402
from lclmt_jax.layers.pooling import global_average_pool  # noqa: E402
from lclmt_jax.layers.preact_block import PreActBlock  # noqa: E402
from lclmt_jax.models.wrn import WideResNet  # noqa: E402

Array = jax.Array
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN_CONFIG = os.path.join(ROOT, 'experiments', 'svhn_standin.py')
EPSILON_36 = 36 / 255  # the paper's SVHN radius 36/255 = 0.1412 in [0, 1] pixel units


# ----------------------------------------------------------------------------- the factors


class FinalBNReLU(nn.Module):
    """The WRN's final BN and ReLU as one factor: bound max|D| (``LipschitzBatchNorm``) · 1."""

    @nn.compact
    def __call__(self, h: Array, *, train: bool = False, sound: bool = False):
        h, l_bn = LipschitzBatchNorm(name='final_bn')(h, train=train, sound=sound)
        h, l_relu = relu(h)
        return h, bounds.chain(l_bn, l_relu)


class PoolHead(nn.Module):
    """Global average pooling and the dense head as one factor: 1/sqrt(HW) · |W|. The map is
    linear with norm exactly |W|/sqrt(HW) (the pool's top direction is spatially constant), so
    this factor has no slack; it is kept separate from the final BN to show that."""

    num_classes: int
    estimator: bounds.Estimator = bounds.ONE_VECTOR

    @nn.compact
    def __call__(self, h: Array, *, train: bool = False, sound: bool = False):
        h, l_pool = global_average_pool(h, sound=sound)
        logits, l_head = LipschitzDense(self.num_classes, estimator=self.estimator,
                                        name='head')(h, train=train, sound=sound)
        return logits, bounds.chain(l_pool, l_head)


class Factor(NamedTuple):
    """One factor of the WRN's product bound: a standalone module holding the network's weights
    of that part (``variables``), applied as ``module.apply(variables, h, ...) -> (h', bound)``.
    ``block`` holds (strides, identity shortcut) for residual blocks, None otherwise."""

    name: str
    module: nn.Module
    variables: dict
    block: tuple[int, bool] | None = None


def sub_variables(variables: dict, name: str, keep_name: bool = False) -> dict:
    """The collections of submodule ``name`` (under the key ``name`` when ``keep_name``)."""
    return {collection: ({name: tree[name]} if keep_name else tree[name])
            for collection, tree in variables.items() if name in tree}


def factors(model: WideResNet, variables: dict) -> list[Factor]:
    """The WRN as the chain of factors its bound multiplies: stem, blocks, final BN·ReLU,
    pool·head; mirrors ``WideResNet.__call__`` (``check_factors`` verifies that it does)."""
    chain = [Factor('stem', LipschitzConv(16, 3, use_bias=False, estimator=model.estimator),
                    sub_variables(variables, 'stem'))]
    channels = 16
    for group, (base, stride) in enumerate(zip((16, 32, 64), (1, 2, 2), strict=True)):
        for index in range((model.depth - 4) // 6):
            features, strides = base * model.width, stride if index == 0 else 1
            name = f'group{group + 1}_block{index + 1}'
            chain.append(Factor(name, PreActBlock(features, strides, model.fold_bn,
                                                  model.zero_init_residual, model.estimator),
                                sub_variables(variables, name),
                                (strides, channels == features and strides == 1)))
            channels = features
    chain.append(Factor('final_bn_relu', FinalBNReLU(),
                        sub_variables(variables, 'final_bn', keep_name=True)))
    chain.append(Factor('pool_head', PoolHead(model.num_classes, model.estimator),
                        sub_variables(variables, 'head', keep_name=True)))
    return chain


def run_factors(chain: Sequence[Factor], x: Array, *, train: bool = False,
                sound: bool = False) -> tuple[list[Array], list[float]]:
    """Each factor's input (the activations h_k, h_0 = x) and bound, in order; the last entry
    of the first list is the logits."""
    activations, factor_bounds = [x], []
    for factor in chain:
        h, bound = factor.module.apply(factor.variables, activations[-1], train=train,
                                       sound=sound)
        activations.append(h)
        factor_bounds.append(float(bound))
    return activations, factor_bounds


def check_factors(model: WideResNet, variables: dict, chain: Sequence[Factor],
                  x: Array) -> None:
    """Raises AssertionError unless the factors compose to the network: the same logits, and
    products of their bounds equal to the network's training estimate and sound bound."""
    output = model.apply(variables, x)
    activations, estimate = run_factors(chain, x)
    np.testing.assert_allclose(activations[-1], output.logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.prod(estimate), float(output.lipschitz), rtol=1e-4)
    sound = certify.sound_bounds(model, variables, x.shape[1:]).lipschitz
    _, sound_factors = run_factors(chain, x, sound=True)
    np.testing.assert_allclose(np.prod(sound_factors), sound, rtol=1e-9)


def block_layer_bounds(factor: Factor, input_shape: Sequence[int]) -> dict[str, float]:
    """Sound (float64) bounds of a pre-activation block's layers and of its two compositions.

    D1, D2: the BN multipliers (running statistics) before conv1 and conv2; K1, K2, Ks: the
    convs on their actual input shapes. ``branch_product`` = max|D1|·|K1|·max|D2|·|K2| and
    ``block_product`` (1 + that, or max|D1|·(|Ks| + |K1|·max|D2|·|K2|)): the product of the
    layers' bounds (``fold_bn=False``); ``branch_folded`` = |D2 K1 D1|·|K2| and
    ``block_folded`` (1 + that, or |Ks D1| + that): the BN-folded bound
    (``PreActBlock``, ``fold_bn=True``).
    """
    params, stats = factor.variables['params'], factor.variables['batch_stats']
    strides, identity = factor.block
    epsilon = LipschitzBatchNorm.epsilon
    d1 = batch_norm_multipliers(params['bn1']['scale'], stats['bn1']['var'], epsilon)
    d2 = batch_norm_multipliers(params['bn2']['scale'], stats['bn2']['var'], epsilon)
    height, width, _ = input_shape
    kernel1, kernel2 = params['conv1']['kernel'], params['conv2']['kernel']
    middle = (-(-height // strides), -(-width // strides), kernel1.shape[-1])
    k1 = bounds.conv_upper_bound(kernel1, input_shape, strides)
    k2 = bounds.conv_upper_bound(kernel2, middle, 1)
    folded1 = bounds.conv_upper_bound(kernel1, input_shape, strides, in_scale=d1, out_scale=d2)
    out = {'bn1_max': float(d1.max()), 'bn1_median': float(np.median(d1)),
           'bn2_max': float(d2.max()), 'bn2_median': float(np.median(d2)),
           'conv1': k1, 'conv2': k2, 'conv1_folded': folded1,
           'branch_product': float(d1.max() * k1 * d2.max() * k2),
           'branch_folded': folded1 * k2}
    if identity:
        out['block_product'] = 1.0 + out['branch_product']
        out['block_folded'] = 1.0 + out['branch_folded']
    else:
        kernel_s = params['shortcut']['kernel']
        out['shortcut'] = bounds.conv_upper_bound(kernel_s, input_shape, strides)
        out['shortcut_folded'] = bounds.conv_upper_bound(kernel_s, input_shape, strides,
                                                         in_scale=d1)
        out['block_product'] = float(d1.max()) * (out['shortcut'] + k1 * d2.max() * k2)
        out['block_folded'] = out['shortcut_folded'] + out['branch_folded']
    return out


# ----------------------------------------------------------------------------- local norms


def local_norms(fn: Callable[[Any, Array], Array], variables: Any, x: Array,
                iterations: int = 100, seed: int = 0) -> np.ndarray:
    """Per example, the spectral norm of the Jacobian of ``h -> fn(variables, h)`` at ``x[i]``,
    by ``iterations`` power-iteration steps on J^T J (``jax.linearize`` and its transpose).

    ``fn`` maps a batch to a batch with each output depending only on its own input (eval
    mode), so the batch Jacobian is block diagonal and one iteration advances every example.
    |J v| for a unit v is a lower bound on |J|_2 that converges to it. ``variables`` are an
    argument of the compiled function, never a constant folded into it: XLA:CPU (jax 0.10.2)
    miscompiles a conv with an all-zero *constant* kernel (a zero-initialised residual branch)
    followed by a reduction, returning uninitialised memory.
    """
    def norms(variables, x):
        _, forward = jax.linearize(lambda h: fn(variables, h), x)
        backward = jax.linear_transpose(forward, x)
        axes = tuple(range(1, x.ndim))

        def unit(v):
            return v / (jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=True)) + 1e-30)

        def step(_, v):
            (back,) = backward(forward(v))
            return unit(back)

        v = jax.lax.fori_loop(0, iterations, step,
                              unit(jax.random.normal(jax.random.key(seed), x.shape, x.dtype)))
        image = forward(v)
        return jnp.sqrt(jnp.sum(image * image, axis=tuple(range(1, image.ndim))))

    return np.asarray(jax.jit(norms)(variables, x), np.float64)


def jacobian_norms(logits_fn: Callable[[Any, Array], Array], variables: Any, x: Array,
                   labels: np.ndarray) -> dict[str, np.ndarray]:
    """Exact local norms of the network at each example (jacrev of the (C,) logits, SVD):

    ``logits``: |J(x)|_2 of x -> logits; ``pairwise``: (N, C) |grad (f_t - f_j)(x)| (0 at t);
    ``top_direction``: the top right singular vector of J(x), shaped like x.
    """
    def jacobians(variables, x):
        return jax.vmap(jax.jacrev(lambda image: logits_fn(variables, image[None])[0]))(x)

    jac = np.asarray(jax.jit(jacobians)(variables, x), np.float64)
    jac = jac.reshape(len(x), -1, int(np.prod(x.shape[1:])))
    _, singular, right = np.linalg.svd(jac, full_matrices=False)
    true_rows = jac[np.arange(len(x)), labels][:, None, :]
    pairwise = np.linalg.norm(true_rows - jac, axis=-1)
    return {'logits': singular[:, 0], 'pairwise': pairwise,
            'top_direction': right[:, 0].reshape(x.shape)}


def empirical_ratios(logits_fn: Callable[[Any, Array], Array], variables: Any, x: Array,
                     directions: Array, radius: float, random_directions: int = 20,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """|f(x + d) - f(x)| / |d| with |d| = ``radius``: along ``directions`` (unit, per example;
    the local top singular vector) and the largest over ``random_directions`` random unit d."""
    apply = jax.jit(logits_fn)
    base = np.asarray(apply(variables, x), np.float64)

    def ratio(d):
        moved = np.asarray(apply(variables, x + radius * d), np.float64)
        return np.linalg.norm(moved - base, axis=-1) / radius

    best = np.zeros(len(x))
    for key in jax.random.split(jax.random.key(seed), random_directions):
        d = jax.random.normal(key, x.shape, x.dtype)
        best = np.maximum(best, ratio(d / jnp.sqrt(jnp.sum(d * d, axis=(1, 2, 3),
                                                           keepdims=True))))
    return {'top_direction': ratio(directions), 'random': best}


def factor_fn(factor: Factor) -> Callable[[Any, Array], Array]:
    """``(variables, h) -> h'``: the factor's map (eval mode) with its variables an argument."""
    return lambda variables, h: factor.module.apply(variables, h)[0]


def branch_fn(factor: Factor) -> Callable[[Any, Array], Array]:
    """``(variables, h) -> f(o(h))``: a block's residual branch, its output minus its
    shortcut's (``h`` itself, or the 1x1 conv of ReLU(BN1(h)))."""
    block = factor_fn(factor)
    strides, identity = factor.block
    if identity:
        return lambda variables, h: block(variables, h) - h
    bn = LipschitzBatchNorm(per_channel=factor.module.fold_bn)
    shortcut = LipschitzConv(factor.module.features, 1, strides, use_bias=False)

    def branch(variables, h):
        params, stats = variables['params'], variables['batch_stats']
        o, _ = bn.apply({'params': params['bn1'], 'batch_stats': stats['bn1']}, h)
        s, _ = shortcut.apply({'params': params['shortcut']}, nn.relu(o), with_bound=False)
        return block(variables, h) - s
    return branch


def prefix_fn(chain: Sequence[Factor]) -> Callable[[Any, Array], Array]:
    """``(list of the factors' variables, x) -> h_k``: the network up to the end of ``chain``."""
    def prefix(variables, z):
        for factor, factor_variables in zip(chain, variables, strict=True):
            z = factor.module.apply(factor_variables, z)[0]
        return z
    return prefix


def _summary(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, np.float64)
    return {'max': float(values.max()), 'median': float(np.median(values)),
            'min': float(values.min())}


def _geometric_mean(values: np.ndarray) -> float:
    return float(np.exp(np.mean(np.log(np.asarray(values, np.float64)))))


# ----------------------------------------------------------------------------- one analysis


def analyse(model: WideResNet, variables: dict, dataset: data.Dataset, epsilon: float,
            examples: int, train_batch: np.ndarray, iterations: int = 100) -> dict:
    """Every number of one state of the network (see the module docstring) as a dict."""
    variables = jax.device_get(variables)
    chain = factors(model, variables)
    x = data.to_float(dataset.test_images[:examples])
    labels = np.asarray(dataset.test_labels[:examples])
    check_factors(model, variables, chain, x)

    activations, estimate_eval = run_factors(chain, x)
    _, estimate_train = run_factors(chain, data.to_float(train_batch), train=True)
    _, sound = run_factors(chain, x, sound=True)
    record = {'factors': []}
    local_by_factor = []
    for k, factor in enumerate(chain):
        h = activations[k]
        local = local_norms(factor_fn(factor), factor.variables, h, iterations)
        local_by_factor.append(local)
        entry = {'name': factor.name, 'estimate_train': estimate_train[k],
                 'estimate_eval': estimate_eval[k], 'sound': sound[k],
                 'local': _summary(local),
                 'sound_over_local_gm': sound[k] / _geometric_mean(local)}
        if factor.block is not None:
            entry['layers'] = block_layer_bounds(factor, h.shape[1:])
            entry['branch_local'] = _summary(local_norms(branch_fn(factor), factor.variables,
                                                         h, iterations))
        record['factors'].append(entry)

    # prefixes x -> h_k: how the slack compounds with depth
    prefixes = []
    for k in range(1, len(chain) + 1):
        local = local_norms(prefix_fn(chain[:k]), [f.variables for f in chain[:k]], x,
                            iterations)
        prefixes.append({'through': chain[k - 1].name, 'sound_product': float(np.prod(sound[:k])),
                         'local_product_gm': _geometric_mean(
                             np.prod(np.stack(local_by_factor[:k]), axis=0)),
                         'local': _summary(local), 'local_gm': _geometric_mean(local)})
    record['prefixes'] = prefixes

    def logits_fn(variables, z):
        return model.apply(variables, z).logits

    jac = jacobian_norms(logits_fn, variables, x, labels)
    sound_bounds = certify.sound_bounds(model, variables, x.shape[1:])
    pairwise_k = np.asarray(margins.pairwise_constants(jnp.asarray(sound_bounds.head_kernel),
                                                       sound_bounds.body_lipschitz))
    others = ~np.eye(model.num_classes, dtype=bool)[labels]
    k_rows = pairwise_k[labels][others].reshape(len(x), -1)
    grad_rows = jac['pairwise'][others].reshape(len(x), -1)
    ratios = empirical_ratios(logits_fn, variables, x,
                              jnp.asarray(jac['top_direction'], jnp.float32), epsilon)
    output = model.apply(variables, x)
    record['network'] = {
        'lipschitz_train': float(np.prod(estimate_train)),
        'lipschitz_eval_estimate': float(output.lipschitz),
        'lipschitz_sound': sound_bounds.lipschitz,
        'body_lipschitz_sound': sound_bounds.body_lipschitz,
        'local_logits': _summary(jac['logits']),
        'local_pairwise_max': float(grad_rows.max()),
        'global_constant_sound': float(margins.SQRT2 * sound_bounds.lipschitz),
        'pairwise_constant_sound': _summary(k_rows),
        'pairwise_over_local': _summary(k_rows / np.maximum(grad_rows, 1e-30)),
        'sound_over_local_max': sound_bounds.lipschitz / float(jac['logits'].max()),
        'sound_over_local_gm': sound_bounds.lipschitz / _geometric_mean(jac['logits']),
        'alignment_gm': _geometric_mean(np.prod(np.stack(local_by_factor), axis=0))
        / _geometric_mean(jac['logits']),
        'ratio_top_direction': _summary(ratios['top_direction']),
        'ratio_random': _summary(ratios['random']),
    }
    record['test'] = test_metrics(model, variables, dataset, epsilon, sound_bounds,
                                  float(output.lipschitz))
    return record


def test_metrics(model: WideResNet, variables: dict, dataset: data.Dataset, epsilon: float,
                 sound_bounds: certify.SoundBounds, estimate: float) -> dict[str, float]:
    """Accuracy, margins and certified shares at ``epsilon`` on the whole test set (sound
    bounds, exact arithmetic: the float32 certificate is the ``certificates`` evaluator's)."""
    images = data.to_float(dataset.test_images)
    labels = np.asarray(dataset.test_labels)
    logits = certify.logits_float64(model, variables, np.asarray(images), batch_size=500)
    margin = np.asarray(margins.margin(jnp.asarray(logits), jnp.asarray(labels)))
    correct = margin > 0
    out = {'accuracy': float(correct.mean()),
           'predicted_classes': int(len(np.unique(np.argmax(logits, axis=1)))),
           'margin_median_correct': float(np.median(margin[correct])) if correct.any() else 0.0,
           'required_margin_train': float(margins.global_required_margin(estimate, epsilon)),
           'required_margin_sound': float(margins.global_required_margin(
               sound_bounds.lipschitz, epsilon))}
    for name in ('global', 'pairwise'):
        radii = certify.certified_radii(logits, labels, sound_bounds, name)
        out[f'certified_{name}'] = float(np.mean(radii >= epsilon))
        out[f'radius_median_{name}'] = float(np.median(radii))
    return out


# ----------------------------------------------------------------------------- reporting


def markdown(epoch: int, record: dict) -> str:
    """One epoch's tables: the factors, the prefixes, the network."""
    net, test = record['network'], record['test']
    lines = [f'### {"initialisation" if epoch == 0 else f"epoch {epoch}"}', '',
             f'test accuracy {test["accuracy"]:.3f} ({test["predicted_classes"]} classes '
             f'predicted), median margin (correct) {test["margin_median_correct"]:.3g}, required '
             f'sqrt(2)·L·eps {test["required_margin_train"]:.3g} (training L) / '
             f'{test["required_margin_sound"]:.3g} (sound L); certified at eps: global '
             f'{test["certified_global"]:.3f}, pairwise {test["certified_pairwise"]:.3f}.', '',
             '| factor | training est. | eval est. | sound | product of layers | local max '
             '| local median | sound / local (gm) | branch: sound / local max |',
             '|---|---|---|---|---|---|---|---|---|']
    for f in record['factors']:
        layers = f.get('layers')
        product = f'{layers["block_product"]:.3g}' if layers else '–'
        branch = (f'{layers["branch_folded"]:.3g} / {f["branch_local"]["max"]:.3g}'
                  if layers else '–')
        lines.append(f'| {f["name"]} | {f["estimate_train"]:.3g} | {f["estimate_eval"]:.3g} | '
                     f'{f["sound"]:.3g} | {product} | {f["local"]["max"]:.3g} | '
                     f'{f["local"]["median"]:.3g} | {f["sound_over_local_gm"]:.3g} | {branch} |')
    lines += ['', '| prefix x -> h through | product of sound bounds | product of factor local '
              'norms (gm) | local norm of the prefix (max / gm) |', '|---|---|---|---|']
    for p in record['prefixes']:
        lines.append(f'| {p["through"]} | {p["sound_product"]:.3g} | '
                     f'{p["local_product_gm"]:.3g} | {p["local"]["max"]:.3g} / '
                     f'{p["local_gm"]:.3g} |')
    lines += ['', f'network: training L {net["lipschitz_train"]:.3g}, sound L '
              f'{net["lipschitz_sound"]:.3g}, largest local |J| {net["local_logits"]["max"]:.3g} '
              f'(median {net["local_logits"]["median"]:.3g}); sound / local: '
              f'{net["sound_over_local_max"]:.3g} (largest), {net["sound_over_local_gm"]:.3g} '
              f'(gm) = per-factor slack x alignment {net["alignment_gm"]:.3g}; largest local '
              f'|grad(f_t - f_j)| {net["local_pairwise_max"]:.3g} vs sqrt(2)·L '
              f'{net["global_constant_sound"]:.3g}, pairwise K_tj / local min '
              f'{net["pairwise_over_local"]["min"]:.3g}; |f(x+d) - f(x)|/|d| at |d| = eps: '
              f'{net["ratio_top_direction"]["max"]:.3g} (top direction), '
              f'{net["ratio_random"]["max"]:.3g} (random).', '']
    return '\n'.join(lines)


# ----------------------------------------------------------------------------- the run


def parse_override(text: str) -> tuple[str, Any]:
    """``field=value`` -> (field, the value as a Python literal, else the string)."""
    key, sep, value = text.partition('=')
    if not sep:
        raise argparse.ArgumentTypeError(f'--set wants field=value, got {text!r}')
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def make_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
    """The stand-in's WRN config with the arguments' method, eps, data and overrides; a
    checkpoint every epoch (each epoch is analysed from it)."""
    spec = importlib.util.spec_from_file_location('svhn_standin', STANDIN_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.method = args.method
    config.epsilon = args.epsilon
    config.data.path = args.data
    config.checkpoint_every_epochs = 1
    return config_schema.apply_overrides(config, dict(args.set), '--set')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, help='output folder (the run is --out/train)')
    parser.add_argument('--method', default='lc_lmt')
    parser.add_argument('--epsilon', type=float, default=EPSILON_36)
    parser.add_argument('--epochs', type=int, default=4)
    parser.add_argument('--examples', type=int, default=10, help='test points for local norms')
    parser.add_argument('--iterations', type=int, default=100,
                        help='power-iteration steps for each local norm')
    parser.add_argument('--data', default=os.path.join(ROOT, 'runs', 'svhn_standin.npz'))
    parser.add_argument('--set', type=parse_override, action='append', default=[],
                        help='config override field=value (repeatable)')
    args = parser.parse_args()
    compilation_cache.enable()
    config = make_config(args)
    workdir = os.path.join(args.out, 'train')
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, 'looseness.json')
    result = {'command': ' '.join(sys.argv), 'config': json.loads(config.to_json_best_effort()),
              'epochs': {}}
    if os.path.exists(json_path):
        with open(json_path) as f:
            result['epochs'] = json.load(f)['epochs']
    dataset = data.load_dataset(config.data)
    steps_per_epoch = len(dataset.train_labels) // config.batch_size
    train_batch = dataset.train_images[:config.batch_size]

    def save():
        with open(json_path, 'w') as f:
            json.dump(result, f, indent=1)
        with open(os.path.join(args.out, 'looseness.md'), 'w') as f:
            f.write(f'`{result["command"]}`\n\n')
            f.write('\n'.join(markdown(int(e), r) for e, r in sorted(
                result['epochs'].items(), key=lambda item: int(item[0]))))

    for epoch in range(args.epochs + 1):
        if str(epoch) in result['epochs']:
            continue
        started = time.perf_counter()
        if epoch == 0:  # the state the first step sees: init, then the epoch-start refresh
            trainer = train.create_trainer(config, dataset.train_images.shape[1:],
                                           dataset.num_classes, steps_per_epoch)
            state = train.make_refresh(trainer, config.bound.reconverge_steps, train_batch)(
                trainer.state)
            model, variables = trainer.model, {'params': state.params, **state.model_state}
        else:
            config.num_epochs = epoch
            train.train_and_evaluate(config, workdir)
            run = restored.restore(workdir, epoch)
            model, variables = run.model, run.variables
        trained = time.perf_counter() - started
        record = analyse(model, variables, dataset, config.epsilon, args.examples, train_batch,
                         args.iterations)
        record['seconds'] = {'train': trained, 'analysis': time.perf_counter() - started - trained}
        result['epochs'][str(epoch)] = record
        save()
        print(markdown(epoch, record), flush=True)


if __name__ == '__main__':
    main()
