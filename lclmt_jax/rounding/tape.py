"""The float32 analysis recorded from the sound forward pass (``lclmt_jax.rounding``).

``network`` runs a model's sound pass with a *recording* active: a context-local list that the
layers' sound branches append their steps to (``record``), that a residual block redirects into
lists of its own for its branches (``capture``), and where a layer without an analysis leaves its
reason (``refuse``). Outside ``network`` nothing is recorded and these calls do nothing, so the
sound pass of ``certify.sound_bounds`` and every jitted pass are untouched.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lclmt_jax.rounding.arithmetic import (
    FLOAT32,
    Affine,
    NotAnalysable,
    State,
    norms,
    overflow_limit,
)
from lclmt_jax.rounding.head import Allowance, Head
from lclmt_jax.rounding.steps import Step, walk

Path = tuple[str, ...]


class _Recording:
    """What one sound pass recorded: the steps (``target`` is the list being appended to), the
    module paths of the layers that recorded themselves, and refusals."""

    def __init__(self):
        self.steps: list[Any] = []
        self.target: list[Any] = self.steps
        self.covered: set[Path] = set()
        self.refusals: list[str] = []


_RECORDING: contextvars.ContextVar[_Recording | None] = contextvars.ContextVar(
    'lclmt_jax_rounding_recording', default=None)


def record(make_step: Callable[[], Any], path: Sequence[str] | None = None) -> None:
    """Appends ``make_step()`` to the recording, if one is active (else does nothing, and
    ``make_step`` is not called: building a step costs float64 work).

    ``path``: the Flax module path of the layer recording itself; its parameters count as
    covered. Composites (a residual block) pass None: their layers cover themselves.
    """
    recording = _RECORDING.get()
    if recording is None:
        return
    if path is not None:
        recording.covered.add(tuple(path))
    recording.target.append(make_step())


def refuse(reason: str, path: Sequence[str] | None = None) -> None:
    """Records that this layer's float32 rounding cannot be bounded (``network`` raises
    ``NotAnalysable(reason)``)."""
    recording = _RECORDING.get()
    if recording is not None:
        recording.refusals.append(reason)
        if path is not None:
            recording.covered.add(tuple(path))


@contextlib.contextmanager
def capture() -> Iterator[list[Any]]:
    """Collects the steps recorded inside the block into the list it yields instead of the
    network's (a residual branch; or a bound-only second call of a layer, whose steps the caller
    drops). Coverage and refusals still count. Yields an empty list when nothing is recorded."""
    recording = _RECORDING.get()
    steps: list[Any] = []
    if recording is None:
        yield steps
        return
    outer, recording.target = recording.target, steps
    try:
        yield steps
    finally:
        recording.target = outer


class Network(NamedTuple):
    """A model as the analysis sees it: steps, then the head."""

    steps: tuple[Step, ...]
    head: Head


def _parameter_paths(params: Any) -> list[Path]:
    """The module path of every parameter leaf (its key path without the leaf's own name)."""
    paths = []
    for key_path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = tuple(str(getattr(key, 'key', key)) for key in key_path)
        paths.append(keys[:-1])
    return paths


def network(model: Any, variables: Any, input_shape: Sequence[int]) -> Network:
    """The float32 analysis of ``model`` on its concrete ``variables``, recorded from one sound
    forward pass on inputs of ``input_shape``.

    Raises ``NotAnalysable`` (one line) when a layer refused, when a parameter belongs to no
    layer that recorded itself (a layer without a rounding step), or when the pass does not end
    in a head.
    """
    recording = _Recording()
    token = _RECORDING.set(recording)
    try:
        model.apply(variables, jnp.zeros((1, *input_shape), jnp.float32), sound=True)
    finally:
        _RECORDING.reset(token)
    if recording.refusals:
        raise NotAnalysable(recording.refusals[0])
    uncovered = sorted({'/'.join(path) for path in _parameter_paths(variables.get('params', {}))
                        if not any(path[:len(owner)] == owner for owner in recording.covered)})
    if uncovered:
        raise NotAnalysable(
            f'the float32 rounding analysis of {type(model).__name__} does not cover '
            f'params/{", params/".join(uncovered[:3])}{" ..." if len(uncovered) > 3 else ""}: '
            'a layer without a rounding step (see lclmt_jax/rounding/__init__.py), or certify '
            "the exact network with arithmetic='exact'")
    *steps, head = recording.steps or [None]
    if not isinstance(head, Head):
        raise NotAnalysable(f'the sound pass of {type(model).__name__} does not end in a recorded '
                            'head (layers.head.lipschitz_head)')
    return Network(tuple(steps), head)


def analyse(net: Network, images: np.ndarray, batch_size: int = 256,
            progress: Callable[[int, int], None] | None = None) -> Allowance:
    """The allowance of every image (NHWC, any float dtype), in batches; ``progress(done,
    total)`` after each batch (the certificates' progress line)."""
    images = np.asarray(images)
    if not len(images):
        classes = net.head.kernel.shape[1]
        none = Affine(np.zeros((0, classes)), np.zeros((0, classes)))
        return Allowance(np.zeros((0, classes)), none[:, 0], none, np.zeros((0, classes)),
                         np.zeros(0), net.head.distances)
    parts = []
    for start in range(0, len(images), batch_size):
        x = np.asarray(images[start:start + batch_size], np.float64)
        count, size = len(x), x[0].size
        inputs = norms(x)
        finite = np.isfinite(x.reshape(count, -1)).all(axis=1)
        error = Affine(FLOAT32.unit * inputs + FLOAT32.tiny * np.sqrt(size),
                       np.full(count, FLOAT32.unit))
        spread = error + Affine(np.zeros(count), np.ones(count))
        limit = np.where(finite, overflow_limit(Affine(inputs, np.ones(count)), FLOAT32), 0.0)
        with np.errstate(all='ignore'):
            state = walk(net.steps, State(x, np.zeros(count), error, spread, limit))
            parts.append(net.head.finish(state))
        if progress is not None:
            progress(min(start + batch_size, len(images)), len(images))
    return Allowance.concatenate(parts)
