"""The configuration schema: every field the trainer reads, with its default, the values it may
take and whether it binds a workdir's training.

Experiment files in ``experiments/`` start from ``default_config()`` and override fields (the
recipes they share are ``lclmt_jax.configs``); the field names ``method``, ``epsilon``,
``num_epochs``, ``batch_size``, ``data.source`` and ``data.path`` are the public interface.
Every default is written here, once, as a :class:`lclmt_jax.fields.Field` (each evaluator's
section ``config.evals.<name>`` is declared by the evaluator's own file and collected here); the
code reads fields directly, ``lclmt_jax.validation`` runs each field's check and
``lclmt_jax.resume`` asks ``binds_training``. This module needs ml_collections only, so a config
can be read and printed without JAX or the model code.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from typing import Any

import ml_collections

from lclmt_jax import evaluators
from lclmt_jax.fields import (
    CheckedByUser,
    Field,
    Flag,
    Integer,
    Name,
    Number,
    Radii,
    Schema,
    Text,
    build,
    field_of,
)


def _unbound(default: Any, kind: Any) -> Field:
    """A field that may change between invocations on one workdir (``Field.binds_training``)."""
    return Field(default, kind, binds_training=False)


def schema() -> Schema:
    """Every field of the config, sections nested: LC-LMT on MNIST with the paper's 4-layer MLP."""
    return {
        # A training method of lclmt_jax.losses.METHODS. Pairwise LC-LMT: the runner-up chosen
        # and raised with the constants the pairwise certificate uses (docs/CERTIFIED.md).
        'method': Field('lc_lmt_pairwise', Name('lclmt_jax.losses:METHODS')),
        # L2 radius in [0,1] pixel scale that training aims to certify
        'epsilon': Field(1.0, Number()),
        # the loss's epsilon ramps up from 0 over these epochs
        'epsilon_warmup_epochs': Field(0.0, Number()),
        # the ramp's shape: linear | log (lclmt_jax.losses)
        'epsilon_schedule': Field('linear', Name('lclmt_jax.losses:EPSILON_RAMPS')),
        # the ramp starts at this fraction of epsilon (LiResNet, BRONet: 0.1x -> 3x = 1/30)
        'epsilon_start_fraction': Field(0.0, Number(maximum=1.0)),
        # > 0: TRADES-style loss, clean CE + lambda·KL(clean || inflated)
        'trades_lambda': Field(0.0, Number()),
        # the loss sees logits / T and is multiplied by T (losses.method_loss); < 1 sharpens the
        # cross-entropy of networks 1-Lipschitz by construction (1LipschitzLayersCompared: 1/4)
        'logit_temperature': Field(1.0, Number(strict=True)),
        # method 'la' only: the Logit Annealing loss's focal exponent, temperature and true-class
        # offset (losses.logit_annealing; BRONet's 5, 0.75, 2). Its temperature acts inside the
        # criterion, on top of logit_temperature (which divides the logits before it): keep one
        # of the two at 1.
        'logit_annealing': {
            'gamma': Field(5.0, Number()),
            'temperature': Field(0.75, Number(strict=True)),
            'offset': Field(2.0, Number()),
        },
        'seed': Field(0, Integer(minimum=0)),
        # The training estimate of the bound (lclmt_jax.bounds.Estimator) and how it is watched
        # (docs/CERTIFIED.md measures one vector against a block of 16).
        'bound': {
            'power_iterations': Field(1, Integer()),  # iterations per training step, every layer
            'subspace_size': Field(16, Integer()),  # > 1: a block of this many vectors per dense
            'exact_below': Field(16, Integer(minimum=0)),  # smaller side <= this: exact norm
            'reconverge_steps': Field(0, Integer(minimum=0)),  # extra iterations at epoch starts
            # log the sound L and sound/training L every this many epochs (0: never)
            'sound_every_epochs': _unbound(1, Integer(minimum=0)),
        },
        'data': {
            'source': Field('tfds', Name('lclmt_jax.data:SOURCES')),  # lclmt_jax.data.SOURCES
            'name': Field('mnist', Text()),  # TFDS dataset name (source=tfds)
            'path': _unbound('', Text()),  # directory (idx) or file (npz)
            # TFDS manual_dir holding the original files, for offline use
            'manual_dir': _unbound('', Text()),
            'data_dir': _unbound('', Text()),  # TFDS data_dir; '' means TFDS's default
            # device (dataset on device) | host (process-local batches) | auto
            'pipeline': _unbound('auto', Name('lclmt_jax.input_pipeline:PIPELINES')),
            # Extra training images mixed into every batch (lclmt_jax.data.extra): a source and
            # path as above whose train split fills the fraction `share` of each batch (the
            # references' 768 generated + 256 real). share 0 or no source: off.
            'extra': {
                'source': Field('', Name('lclmt_jax.data:SOURCES', empty_ok=True)),
                'path': _unbound('', Text()),  # npy: directory; npz: file
                'share': Field(0.0, Number(below=1.0)),
            },
        },
        # Augmentation in the train step (lclmt_jax.augment), drawn from (seed, step). Off:
        # digits must not be flipped; natural images (CIFAR-10) turn on both.
        'augment': {
            # random shifts of up to this many pixels, zeros filled in
            'crop_padding': Field(0, Integer(minimum=0)),
            'flip': Field(False, Flag()),  # random horizontal flips
            # RandAugment-style colour ops per image (0: off; lclmt_jax.augment.colour_jitter),
            # applied with this probability, at this magnitude (torchvision's 0..30 scale)
            'colour_ops': Field(0, Integer(minimum=0)),
            'colour_probability': Field(0.5, Number(maximum=1.0)),
            'colour_magnitude': Field(9.0, Number(maximum=30.0)),
        },
        # A model of lclmt_jax.models.MODELS; config.<model> sets its fields (absent: its
        # defaults), checked by the model (an activation of lclmt_jax.activations.ACTIVATIONS).
        'model': Field('mlp', Name('lclmt_jax.models:MODELS')),
        'mlp': Field({'hidden_sizes': (100, 100, 100), 'activation': 'relu'}, CheckedByUser()),
        'num_epochs': _unbound(100, Integer(minimum=0)),
        'batch_size': Field(100, Integer()),  # global batch, split evenly over all devices
        'eval_batch_size': _unbound(1000, Integer()),
        # an optax optimizer, called with the learning rate and optimizer_kwargs
        'optimizer': Field('adam', Name('lclmt_jax.optimizers:OPTIMIZERS')),
        'optimizer_kwargs': Field({}, CheckedByUser()),
        'learning_rate': Field(1e-3, Number(strict=True)),
        # constant | cosine | step (x0.1 at 50% and 75% of training) | decay_after_half
        'schedule': Field('constant', Name('lclmt_jax.optimizers:SCHEDULES')),
        # > 0: the learning rate rises linearly over these epochs before the schedule starts
        'learning_rate_warmup_epochs': Field(0.0, Number()),
        # Lookahead around the optimizer (lclmt_jax.optimizers.lookahead); sync_period 0: off.
        # timm's defaults, which LiResNet and BRONet use: every 6 steps, half way.
        'lookahead': {
            'sync_period': Field(0, Integer(minimum=0)),
            'slow_step_size': Field(0.5, Number(strict=True, maximum=1.0)),
            # also sync after each epoch, so the weights evaluated and certified are the slow ones
            'sync_each_epoch': Field(True, Flag()),
        },
        'weight_decay': Field(0.0, Number()),  # L2 penalty coefficient, added to the gradient
        # Clip the loss gradient (before weight decay) to this global L2 norm; None: off. A
        # typed placeholder, so --config.grad_clip_norm=10 works on the command line.
        'grad_clip_norm': Field(None, Number(strict=True, optional=True)),
        'checkpoint_every_epochs': _unbound(10, Integer()),
        # --mode=evaluate: the evaluators of lclmt_jax.evaluators, in order, on the test set;
        # each one's settings are its section of config.evals (declared in its file).
        'evaluators': _unbound(('certificates', 'cw_l2'),
                               Name('lclmt_jax.evaluators:EVALUATORS', many=True,
                                    what='evaluator')),
        'evals': evaluators.settings_schema(),
        # The headline certificate (lclmt_jax.margins.CERTIFICATES): tables, the attack's
        # self-check, RestoredModel.certified_radius.
        'certificate': _unbound('pairwise', Name('lclmt_jax.margins:CERTIFICATES')),
        'evaluation': {
            # radii every evaluator reports at
            'epsilons': _unbound((0.1, 0.3, 0.5, 1.0, 1.58), Radii()),
        },
    }


def default_config() -> ml_collections.ConfigDict:
    """LC-LMT on MNIST with the paper's 4-layer MLP: every field the trainer reads, defaulted."""
    return build(schema())


def binds_training(key: str) -> bool:
    """Whether the dotted field ``key`` binds a workdir's training (``Field.binds_training``);
    a key the schema does not know (a model's setting, an optimizer argument) does."""
    field = field_of(schema(), key)
    return True if field is None else field.binds_training


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
