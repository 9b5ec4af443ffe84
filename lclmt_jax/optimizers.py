"""Optimizers and learning-rate schedules by name (``config.optimizer``, ``config.schedule``).

``config.optimizer`` is any optax optimizer whose first argument is the learning rate (``adam``,
``nadam``, ``sgd``, ``adamw``, ``lion``, ...), called with ``config.optimizer_kwargs`` (e.g.
SGD's ``momentum=0.9, nesterov=True``); ``config.lookahead.sync_period`` > 0 wraps it, with the
clipping and weight decay, in Lookahead (``lookahead``), and
``config.learning_rate_warmup_epochs`` > 0 puts a linear warm-up before any schedule. A
learning-rate schedule is a function ``(base learning rate, total steps) -> optax schedule``;
adding one is a ``SCHEDULES.register`` here. A schedule laid over the whole run (``spans_run``)
fixes a workdir's ``num_epochs`` once trained: resuming with another length would change it
mid-run (``lclmt_jax.resume``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lclmt_jax.registry import Registry

OPTIMIZERS: Registry[Callable[..., optax.GradientTransformation]] = Registry('optimizer')
for _name in sorted(dir(optax)):
    _entry = getattr(optax, _name)
    # functions and partials (optax.nadam is adam with nesterov=True)
    if not _name.startswith(('_', 'scale_by')) and (
            inspect.isfunction(_entry) or isinstance(_entry, functools.partial)) \
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


def warmed_up(schedule: Schedule, learning_rate: float, total_steps: int,
              warmup_steps: int) -> optax.Schedule:
    """``learning_rate``·(step + 1)/``warmup_steps`` for the first ``warmup_steps`` steps (the
    first update is not wasted on a rate of 0), then ``schedule`` laid over the remaining steps
    from their start: LiResNet's and BRONet's 20-epoch warm-up before their cosine decay."""
    after = schedule(learning_rate, max(1, total_steps - warmup_steps))
    after = after if callable(after) else optax.constant_schedule(after)

    def rate(step):
        return jnp.where(step < warmup_steps, learning_rate * (step + 1) / warmup_steps,
                         after(jnp.maximum(step - warmup_steps, 0)))

    return rate


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           steps_per_epoch: int) -> optax.ScalarOrSchedule:
    """``config.schedule`` over the run's ``num_epochs``, after ``learning_rate_warmup_epochs``
    of linear warm-up when > 0."""
    total_steps = max(1, config.num_epochs * steps_per_epoch)
    schedule = SCHEDULES.get(config.schedule, 'config.schedule')
    warmup_steps = round(config.learning_rate_warmup_epochs * steps_per_epoch)
    if warmup_steps <= 0:
        return schedule(config.learning_rate, total_steps)
    return warmed_up(schedule, config.learning_rate, total_steps, warmup_steps)


class LookaheadState(NamedTuple):
    """The inner optimizer's state, the slow weights and the number of updates so far."""

    inner: optax.OptState
    slow: optax.Params
    count: jax.Array


def lookahead(inner: optax.GradientTransformation, sync_period: int, slow_step_size: float,
              steps_per_epoch: int = 0) -> optax.GradientTransformation:
    """Lookahead (Zhang et al., 2019) around ``inner`` on plain parameters: the trainer's
    parameters are the fast weights and the slow ones live in the optimizer state.

    Every ``sync_period``-th update (and, ``steps_per_epoch`` > 0, at the last update of each
    epoch, as LiResNet and BRONet call timm's ``sync_lookahead`` after every epoch) the slow
    weights move ``slow_step_size`` of the way to the fast ones and the fast weights are set to
    them; between syncs the fast weights take ``inner``'s steps. optax's ``lookahead`` holds
    both sets as ``LookaheadParams`` and asks the caller to evaluate the slow ones; here, with the
    epoch-end sync, the parameters the trainer holds at every epoch's end, which it evaluates,
    checkpoints and certifies, *are* the slow weights: at a sync the stored slow weights are set
    to exactly the parameters the update produces (``optax.apply_updates`` of it), so the
    certified weights and the slow ones are the same numbers. Without it they are the fast
    weights, which is what a certificate then covers (it is computed from the held parameters
    whatever they are). The slow weights start at the initial parameters.
    """
    def init(params: optax.Params) -> LookaheadState:
        slow = jax.tree.map(jnp.array, params)  # a copy: the caller may donate its params
        return LookaheadState(inner.init(params), slow, jnp.zeros((), jnp.int32))

    def update(updates: optax.Updates, state: LookaheadState,
               params: optax.Params | None = None) -> tuple[optax.Updates, LookaheadState]:
        if params is None:
            raise ValueError('lookahead needs the parameters in update()')
        steps, inner_state = inner.update(updates, state.inner, params)
        count = state.count + 1
        sync = count % sync_period == 0
        if steps_per_epoch > 0:
            sync = sync | (count % steps_per_epoch == 0)
        fast = optax.apply_updates(params, steps)
        target = jax.tree.map(lambda slow, new: slow + slow_step_size * (new - slow),
                              state.slow, fast)
        deltas = jax.tree.map(lambda p, f, t: jnp.where(sync, t - p, f - p), params, fast, target)
        held = optax.apply_updates(params, deltas)  # what the trainer will hold, bit for bit
        slow = jax.tree.map(lambda s, h: jnp.where(sync, h, s), state.slow, held)
        return deltas, LookaheadState(inner_state, slow, count)

    return optax.GradientTransformation(init, update)


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> optax.GradientTransformation:
    """The optax optimizer, learning-rate schedule, weight decay, clipping and Lookahead named by
    the config.

    ``config.grad_clip_norm`` (None: off) clips the loss gradient's global norm before the weight
    decay is added, so the decay is never scaled down with it (see ``configs.svhn_variant``).
    ``config.lookahead.sync_period`` > 0 wraps the whole chain in ``lookahead`` (timm's
    Lookahead wraps the optimizer with its weight decay the same way).
    """
    learning_rate = learning_rate_schedule(config, steps_per_epoch)
    kwargs = dict(config.get('optimizer_kwargs', None) or {})
    optimizer = OPTIMIZERS.get(config.optimizer, 'config.optimizer')(learning_rate, **kwargs)
    stages = []
    clip = config.get('grad_clip_norm', None)
    if clip is not None:  # on the loss gradient alone, before weight decay is added
        stages.append(optax.clip_by_global_norm(clip))
    if config.weight_decay:
        stages.append(optax.add_decayed_weights(config.weight_decay))
    chain = optax.chain(*stages, optimizer) if stages else optimizer
    settings: Any = config.lookahead
    if not settings.sync_period:
        return chain
    return lookahead(chain, settings.sync_period, settings.slow_step_size,
                     steps_per_epoch if settings.sync_each_epoch else 0)
