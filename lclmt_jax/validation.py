"""Checks a config before any data is read or anything is compiled: one line per problem.

Driven by the schema (``lclmt_jax.config_schema``): every field is checked by the kind its
declaration gives (``lclmt_jax.fields``), names against the registries that define them, so
the allowed values listed in an error are always the ones that exist; a field the schema does not
know (a typo in an experiment file) is refused with the closest known name. What one field alone
cannot say is checked after: the model's settings, the optimizer's arguments, batch sizes against
the device count, the data source's files, the extra training data's (``config.data.extra``).
"""

from __future__ import annotations

import flax
import jax
import ml_collections

from lclmt_jax import config_schema, data, fields, models, optimizers
from lclmt_jax.data import extra


def check_known_fields(config: ml_collections.ConfigDict) -> None:
    """Refuses fields the schema lacks; a free-form field's entries and a model's section (its
    settings, checked by the model) are the user's."""
    known, schema = config_schema.default_config(), config_schema.schema()
    for key in flax.traverse_util.flatten_dict(config.to_dict(), sep='.'):
        section = key.split('.')[0]
        field = fields.field_of(schema, key)
        if (field is not None and isinstance(field.kind, fields.CheckedByUser)) or (
                section in models.MODELS and section != key):
            continue
        config_schema.check_field(known, key, 'the config')


def check_fields(config: ml_collections.ConfigDict, under: str = '') -> None:
    """Each field of the schema (those below the section ``under``, e.g. ``'evals'``, when
    given) against its kind (range, type, registry name)."""
    for key, field in fields.flat(config_schema.schema()).items():
        if under and not key.startswith(f'{under}.'):
            continue
        value = config
        for part in key.split('.'):
            value = value[part]
        field.kind.check(value.to_dict() if isinstance(value, ml_collections.ConfigDict)
                         else value, key)


def check_optimizer(config: ml_collections.ConfigDict) -> None:
    """The optimizer's keyword arguments fit the optax optimizer it names."""
    optimizer = optimizers.OPTIMIZERS.get(config.optimizer, 'config.optimizer')
    kwargs = dict(config.optimizer_kwargs)
    try:
        optimizer(config.learning_rate, **kwargs)
    except TypeError as error:
        raise ValueError(f'config.optimizer_kwargs {kwargs} do not fit optax.{config.optimizer}: '
                         f'{error}') from None


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raises ValueError with one line naming the bad value and what is allowed."""
    check_known_fields(config)
    check_fields(config)
    models.create_model(config, num_classes=2)  # the model's settings
    check_optimizer(config)
    num_devices = num_devices or jax.device_count()
    for field in ('batch_size', 'eval_batch_size'):
        if config[field] % num_devices:
            raise ValueError(
                f'{field}={config[field]} is not divisible by the device count {num_devices}')
    data.validate_data_config(config.data)
    extra.validate(config)
