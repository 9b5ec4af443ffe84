"""Optimizers and learning-rate schedules by name (``config.optimizer``, ``config.schedule``).

``config.optimizer`` is any optax optimizer whose first argument is the learning rate (``adam``,
``sgd``, ``adamw``, ``lion``, ...), called with ``config.optimizer_kwargs`` (e.g. SGD's
``momentum=0.9, nesterov=True``). A learning-rate schedule is a function
``(base learning rate, total steps) -> optax schedule``; adding one is a ``SCHEDULES.register``
here. A schedule laid over the whole run (``spans_run``) fixes a workdir's ``num_epochs`` once
trained: resuming with another length would change it mid-run (``lclmt_jax.resume``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

import ml_collections
import optax

from lclmt_jax.registry import Registry

OPTIMIZERS: Registry[Callable[..., optax.GradientTransformation]] = Registry('optimizer')
for _name in sorted(dir(optax)):
    _entry = getattr(optax, _name)
    if not _name.startswith(('_', 'scale_by')) and inspect.isfunction(_entry) \
            and next(iter(inspect.signature(_entry).parameters), None) == 'learning_rate':
        OPTIMIZERS.register(_name, _entry)

class Schedule(NamedTuple):
    """A learning-rate schedule: ``make(base learning rate, total steps)``, and whether its shape
    is laid over the run's length (``spans_run``: cosine, step, ...; not the constant one)."""

    make: Callable[[float, int], optax.ScalarOrSchedule]
    spans_run: bool = True

    def __call__(self, learning_rate: float, total_steps: int) -> optax.ScalarOrSchedule:
        return self.make(learning_rate, total_steps)


SCHEDULES: Registry[Schedule] = Registry('schedule')


def schedule(name: str, spans_run: bool = True) -> Callable:
    """Registers the decorated ``(learning rate, total steps) -> schedule`` as ``name``."""
    def add(make: Callable) -> Callable:
        SCHEDULES.register(name, Schedule(make, spans_run))
        return make

    return add


@schedule('constant', spans_run=False)
def constant(learning_rate: float, total_steps: int) -> optax.ScalarOrSchedule:
    """The same learning rate throughout."""
    del total_steps
    return learning_rate


@schedule('cosine')
def cosine(learning_rate: float, total_steps: int) -> optax.ScalarOrSchedule:
    """Cosine decay from the learning rate to 0 over the whole run."""
    return optax.cosine_decay_schedule(learning_rate, total_steps)


@schedule('step')
def step(learning_rate: float, total_steps: int) -> optax.ScalarOrSchedule:
    """Multiplied by 0.1 at 50% and at 75% of the run (the WRN/SVHN reference schedule)."""
    return optax.piecewise_constant_schedule(
        learning_rate, {total_steps // 2: 0.1, (3 * total_steps) // 4: 0.1})


@schedule('decay_after_half')
def decay_after_half(learning_rate: float, total_steps: int) -> optax.ScalarOrSchedule:
    """Constant for the first half of the run, then an exponential decay to 1e-6 at its end
    (GloRo's schedule for its MNIST and CIFAR-10 models)."""
    half = total_steps // 2
    final = min(1e-6, learning_rate)
    decay = optax.exponential_decay(learning_rate, max(1, total_steps - half),
                                    final / learning_rate)
    return optax.join_schedules([optax.constant_schedule(learning_rate), decay], [half])


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> optax.GradientTransformation:
    """The optax optimizer, learning-rate schedule, weight decay and clipping named by the config.

    ``config.grad_clip_norm`` (None: off) clips the loss gradient's global norm before the weight
    decay is added, so the decay is never scaled down with it (see ``configs.svhn_variant``).
    """
    total_steps = max(1, config.num_epochs * steps_per_epoch)
    learning_rate = SCHEDULES.get(config.schedule, 'config.schedule')(config.learning_rate,
                                                                       total_steps)
    kwargs = dict(config.get('optimizer_kwargs', None) or {})
    optimizer = OPTIMIZERS.get(config.optimizer, 'config.optimizer')(learning_rate, **kwargs)
    stages = []
    clip = config.get('grad_clip_norm', None)
    if clip is not None:  # on the loss gradient alone, before weight decay is added
        stages.append(optax.clip_by_global_norm(clip))
    if config.weight_decay:
        stages.append(optax.add_decayed_weights(config.weight_decay))
    return optax.chain(*stages, optimizer) if stages else optimizer
