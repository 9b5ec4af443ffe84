"""The end of the float32 analysis: the dense (or LLN) head's rule, and the per-example
``Allowance`` E_tj(r) the certificates subtract (module docstring of ``lclmt_jax.rounding``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from lclmt_jax.rounding.arithmetic import (
    FLOAT32,
    FLOAT64,
    UP,
    Affine,
    Arithmetic,
    NotAnalysable,
    State,
    f64,
    gamma,
    norms,
    overflow_limit,
)


class Allowance(NamedTuple):
    """Per example: the rounding allowance E_tj(r) of (1), and what checks it.

    Attributes:
      logits: the analysis' own float64 logits, (N, C).
      body: e_body(r) + rho_body, (N,): multiplied by |w_t - w_j|_2.
      logit: eps_c(r) of each logit, both precisions, (N, C).
      reference: >= |float64 logits - exact logits| per class, (N, C).
      limit: the radius below which nothing overflows, (N,) (0: not certifiable at all).
      distances: |w_t - w_j|_2 of the head's columns, rounded up, (C, C).
    """

    logits: np.ndarray
    body: Affine
    logit: Affine
    reference: np.ndarray
    limit: np.ndarray
    distances: np.ndarray

    def pairs(self, labels: np.ndarray) -> Affine:
        """E_tj(r) for t = ``labels``: (N, C), rounded up (the j = t column is meaningless)."""
        rows = np.arange(len(labels))
        allowance = (self.distances[labels] * self.body[:, None] + self.logit
                     + self.logit[rows, labels][:, None])
        return UP * allowance

    @staticmethod
    def concatenate(parts: Sequence[Allowance]) -> Allowance:
        join = lambda values: np.concatenate(values)  # noqa: E731
        affine = lambda values: Affine(join([v.const for v in values]),  # noqa: E731
                                       join([v.slope for v in values]))
        return Allowance(join([p.logits for p in parts]), affine([p.body for p in parts]),
                         affine([p.logit for p in parts]), join([p.reference for p in parts]),
                         join([p.limit for p in parts]), parts[0].distances)


def normalisation_error(kernel: Any, arithmetic: Arithmetic) -> np.ndarray:
    """Per column c of ``kernel``, kappa_c >= |computed w_c/|w_c| - exact|/|exact| entrywise
    (besides an absolute 2·tau per entry), for the normalisation ``w / sqrt(sum(w·w))`` of
    ``layers.head.NormalizedHead`` (LLN) computed in ``arithmetic``.

    The sum S of n squares (non-negative terms) is computed within S·gamma_n + 4(n + 1)·tau
    (A1, A2); sqrt and the division add one rounding each, so the computed norm is
    N·(1 + nu) with sqrt(1 - gamma_n - 4(n + 1)·tau/S)·(1 - u) <= 1 + nu <=
    sqrt(1 + gamma_n + 4(n + 1)·tau/S)·(1 + u), and each entry w_i/N·(1 + d)/(1 + nu).
    A column whose sum of squares may underflow to 0 or overflow (A4) is refused.
    """
    w = f64(kernel)
    n = w.shape[0]
    squares = np.sum(np.square(w), axis=0)
    u, g = arithmetic.unit, gamma(n, arithmetic)
    with np.errstate(divide='ignore', invalid='ignore'):
        underflow = 4.0 * (n + 1) * arithmetic.tiny / squares
        lower = np.sqrt(np.maximum(1.0 - g - underflow, 0.0)) * (1 - u)
        upper = np.sqrt(1.0 + g + underflow) * (1 + u)
        kappa = np.maximum((1 + u) / lower - 1, 1 - (1 - u) / upper)
    if not np.all(np.isfinite(kappa)):
        raise NotAnalysable('a normalised head column is too small for a rounding bound')
    if np.any((1 + g) * squares + underflow * squares >= arithmetic.largest):
        raise NotAnalysable(f'a normalised head column is too large: its squared norm overflows '
                            f'{arithmetic.name}')
    return kappa * UP


class Head:
    """The dense head f = h @ kernel + bias that ends every network (recorded by
    ``layers.head.lipschitz_head``).

    ``normalized``: LLN (``layers.head.NormalizedHead``), f = h @ (w_c/|w_c|)_c + bias with the
    normalisation computed by the network: ``kernel`` is the stored one, the analysis uses its
    float64 normalisation and adds each arithmetic's ``normalisation_error`` kappa_c to logit c,
    |h^·(w^_c computed - w^_c)| <= kappa_c·|h^|·|w^_c| + 2·tau·sqrt(n)·|h^|_2.
    """

    def __init__(self, kernel: Any, bias: Any = None, normalized: bool = False):
        self.kernel = f64(kernel)
        self.normalized = normalized
        self.kappa = {arithmetic.name: normalisation_error(self.kernel, arithmetic) if normalized
                      else np.zeros(self.kernel.shape[1]) for arithmetic in (FLOAT32, FLOAT64)}
        if normalized:
            self.kernel = self.kernel / np.linalg.norm(self.kernel, axis=0, keepdims=True)
        self.bias = np.zeros(self.kernel.shape[1]) if bias is None else f64(bias)
        self.abs_kernel = np.abs(self.kernel)
        self.column_norms = np.linalg.norm(self.kernel, axis=0) * UP
        self.column_l1 = self.abs_kernel.sum(0) * UP
        columns = self.kernel.T
        self.distances = np.sqrt(np.sum(np.square(columns[:, None] - columns[None]), -1)) * UP

    def finish(self, state: State) -> Allowance:
        """The allowance from the body's final state (the module docstring's head rule)."""
        a = state.center
        logits = a @ self.kernel + self.bias
        fan_in = self.kernel.shape[0]
        weighted = (np.abs(a) @ self.abs_kernel) * UP  # |a|·|w_c|
        inputs = norms(a)[:, None]
        limit = state.limit
        rounding = {}
        for arithmetic, spread in ((FLOAT32, state.spread[:, None]),
                                   (FLOAT64, Affine.zeros(len(a))[:, None])):
            g = gamma(fan_in + 1, arithmetic)
            features = self.column_norms * spread + weighted  # >= |h^|·|w_c| on the ball
            terms = features + np.abs(self.bias)
            underflow = arithmetic.tiny * (8.0 * (fan_in + 1) * (1 + g) + self.column_l1
                                           + np.sqrt(fan_in) * (spread + inputs))
            if self.normalized:
                underflow = underflow + 2 * arithmetic.tiny * np.sqrt(fan_in) * (spread + inputs)
            kappa = self.kappa[arithmetic.name]
            # (3) on the computed columns (magnitudes up to 1 + kappa), then their error
            rounding[arithmetic.name] = g * (terms + kappa * features) + kappa * features \
                + underflow
            limit = np.minimum(limit, overflow_limit((1 + g) * (1 + kappa) * terms + underflow,
                                                     arithmetic).min(axis=1))
        reference = rounding['float64'].const
        return Allowance(logits, state.error + state.reference,
                         rounding['float32'] + reference,
                         self.column_norms * state.reference[:, None] + reference,
                         limit, self.distances)
