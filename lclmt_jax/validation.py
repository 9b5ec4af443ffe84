"""Checks a config before any data is read or anything is compiled: one line per problem.

Names (model, method, optimizer, schedule, data source, evaluators, pipeline, certificate) are
looked up in the registries that define them, so the allowed values listed in an error are
always the ones that exist. Numbers are checked for type and range here.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections

from lclmt_jax import certify, data, evaluators, input_pipeline, losses, models, optimizers


def _number(value: Any, name: str, minimum: float = 0.0, strict: bool = False) -> None:
    """A finite int or float (not a bool) >= minimum (> when strict)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < minimum or (strict and value == minimum):
        relation = '>' if strict else '>='
        raise ValueError(f'{name} must be a finite number {relation} {minimum:g}, got {value!r}')


def _positive_int(value: Any, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = 'a positive integer' if minimum == 1 else f'an integer >= {minimum}'
        raise ValueError(f'{name} must be {kind}, got {value!r}')


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raises ValueError with one line naming the bad value and what is allowed."""
    losses.METHODS.get(config.method, 'config.method')
    _number(config.epsilon, 'epsilon')
    _number(config.get('epsilon_warmup_epochs', 0), 'epsilon_warmup_epochs')
    models.create_model(config, num_classes=2)  # the model's name and settings
    optimizers.SCHEDULES.get(config.schedule, 'config.schedule')
    optimizer = optimizers.OPTIMIZERS.get(config.optimizer, 'config.optimizer')
    _number(config.learning_rate, 'learning_rate', strict=True)
    kwargs = dict(config.get('optimizer_kwargs', None) or {})
    try:
        optimizer(config.learning_rate, **kwargs)
    except TypeError as error:
        raise ValueError(f'config.optimizer_kwargs {kwargs} do not fit optax.{config.optimizer}: '
                         f'{error}') from None
    _number(config.weight_decay, 'weight_decay')
    clip = config.get('grad_clip_norm', None)
    if clip is not None:
        _number(clip, 'grad_clip_norm', strict=True)
    if config.certificate not in certify.CERTIFICATES:
        raise ValueError(f'unknown certificate {config.certificate!r}; allowed: '
                         f'{", ".join(certify.CERTIFICATES)}')
    for name in config.get('evaluators', ()):
        evaluators.EVALUATORS.get(name, 'evaluator')
    _positive_int(config.num_epochs, 'num_epochs', minimum=0)
    _positive_int(config.batch_size, 'batch_size')
    _positive_int(config.eval_batch_size, 'eval_batch_size')
    _positive_int(config.checkpoint_every_epochs, 'checkpoint_every_epochs')
    num_devices = num_devices or jax.device_count()
    for field in ('batch_size', 'eval_batch_size'):
        if config[field] % num_devices:
            raise ValueError(
                f'{field}={config[field]} is not divisible by the device count {num_devices}')
    if config.data.pipeline not in input_pipeline.PIPELINES:
        raise ValueError(f'unknown config.data.pipeline {config.data.pipeline!r}; allowed: '
                         f'{", ".join(input_pipeline.PIPELINES)}')
    data.validate_data_config(config.data)
