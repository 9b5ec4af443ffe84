"""Checks a config before any data is read or anything is compiled: one line per problem.

Every field of ``configs.default_config`` is checked here. Names (model, method, certificate,
epsilon ramp, optimizer, schedule, data source, evaluators, pipeline) are looked up in the
registries that define them, so the allowed values listed in an error are always the ones that
exist; numbers are checked for type and range; a field the schema does not know (a typo in an
experiment file) is refused with the closest known name.
"""

from __future__ import annotations

import math
from typing import Any

import flax
import jax
import ml_collections

from lclmt_jax import (
    configs,
    data,
    evaluators,
    input_pipeline,
    losses,
    margins,
    models,
    optimizers,
)

# Sections whose fields are free-form: passed on as keyword arguments and checked by their user.
FREE_FORM = ('optimizer_kwargs',)


def _number(value: Any, name: str, minimum: float = 0.0, strict: bool = False) -> None:
    """A finite int or float (not a bool) >= minimum (> when strict)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < minimum or (strict and value == minimum):
        relation = '>' if strict else '>='
        raise ValueError(f'{name} must be a finite number {relation} {minimum:g}, got {value!r}')


def _integer(value: Any, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = 'a positive integer' if minimum == 1 else f'an integer >= {minimum}'
        raise ValueError(f'{name} must be {kind}, got {value!r}')


def check_known_fields(config: ml_collections.ConfigDict) -> None:
    """Refuses fields the schema lacks (model sections and ``FREE_FORM`` ones excepted)."""
    known = configs.default_config()
    for key in flax.traverse_util.flatten_dict(config.to_dict(), sep='.'):
        section = key.split('.')[0]
        if section in FREE_FORM or (section in models.MODELS and section != key):
            continue
        configs.check_field(known, key, 'the config')


def check_training(config: ml_collections.ConfigDict) -> None:
    """The training method, its radius and ramp, the bound estimator."""
    losses.METHODS.get(config.method, 'config.method')
    _number(config.epsilon, 'epsilon')
    _number(config.epsilon_warmup_epochs, 'epsilon_warmup_epochs')
    losses.EPSILON_RAMPS.get(config.epsilon_schedule, 'config.epsilon_schedule')
    _number(config.trades_lambda, 'trades_lambda')
    _integer(config.seed, 'seed', minimum=0)
    _integer(config.bound.power_iterations, 'bound.power_iterations')
    _integer(config.bound.subspace_size, 'bound.subspace_size')
    for field in ('exact_below', 'reconverge_steps', 'sound_every_epochs'):
        _integer(config.bound[field], f'bound.{field}', minimum=0)
    models.create_model(config, num_classes=2)  # the model's name and settings


def check_optimizer(config: ml_collections.ConfigDict) -> None:
    """The optax optimizer, its arguments, the schedule, decay and clipping."""
    optimizers.SCHEDULES.get(config.schedule, 'config.schedule')
    optimizer = optimizers.OPTIMIZERS.get(config.optimizer, 'config.optimizer')
    _number(config.learning_rate, 'learning_rate', strict=True)
    kwargs = dict(config.optimizer_kwargs)
    try:
        optimizer(config.learning_rate, **kwargs)
    except TypeError as error:
        raise ValueError(f'config.optimizer_kwargs {kwargs} do not fit optax.{config.optimizer}: '
                         f'{error}') from None
    _number(config.weight_decay, 'weight_decay')
    if config.grad_clip_norm is not None:
        _number(config.grad_clip_norm, 'grad_clip_norm', strict=True)


def check_evaluation(config: ml_collections.ConfigDict) -> None:
    """The certificate, the evaluators and their sections, the radii."""
    margins.CERTIFICATES.get(config.certificate, 'config.certificate')
    for name in config.evaluators:
        evaluators.EVALUATORS.get(name, 'evaluator')
    epsilons = config.evaluation.epsilons
    if not isinstance(epsilons, (tuple, list)) or not epsilons:
        raise ValueError(f'evaluation.epsilons must be a non-empty tuple of radii, got '
                         f'{epsilons!r}')
    for epsilon in epsilons:
        _number(epsilon, 'evaluation.epsilons')


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raises ValueError with one line naming the bad value and what is allowed."""
    check_known_fields(config)
    check_training(config)
    check_optimizer(config)
    check_evaluation(config)
    _integer(config.num_epochs, 'num_epochs', minimum=0)
    _integer(config.batch_size, 'batch_size')
    _integer(config.eval_batch_size, 'eval_batch_size')
    _integer(config.checkpoint_every_epochs, 'checkpoint_every_epochs')
    num_devices = num_devices or jax.device_count()
    for field in ('batch_size', 'eval_batch_size'):
        if config[field] % num_devices:
            raise ValueError(
                f'{field}={config[field]} is not divisible by the device count {num_devices}')
    if config.data.pipeline not in input_pipeline.PIPELINES:
        raise ValueError(f'unknown config.data.pipeline {config.data.pipeline!r}; allowed: '
                         f'{", ".join(input_pipeline.PIPELINES)}')
    data.validate_data_config(config.data)
    _integer(config.augment.crop_padding, 'augment.crop_padding', minimum=0)
    if not isinstance(config.augment.flip, bool):
        raise ValueError(f'augment.flip must be True or False, got {config.augment.flip!r}')
