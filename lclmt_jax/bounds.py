"""The Lipschitz math, as pure functions: each layer's training estimate and sound upper bound,
and the rules that compose them. ``layers.py`` wraps these in Flax modules; models only compose.

Two kinds of bound per layer:

* an *estimate* (training): power iteration with persistent vectors, differentiable in the
  weights. It converges from *below*, so it steers training but certifies nothing.
* a *sound upper bound* (certification): a guaranteed upper bound computed on the host in
  float64 from concrete parameters (never under ``jit``), rounded up by ``SOUND_SLACK``.

Composition (``chain``, ``residual_sum``, and folding per-channel scales into a conv with
``scale_kernel``) is the same for both kinds, so a network's estimate and its certificate come
from one description of the network.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Relative slack added to every float64 sound bound. LAPACK's SVD is backward stable: the computed
# singular values are exact for W + E with |E|_2 <= c·n·eps64·|W|_2; for any layer here
# c·n·eps64 < 1e-9, so inflating by 1e-6 covers the rounding of the SVD and of the later products.
SOUND_SLACK = 1e-6


def normalize(x: Array) -> Array:
    """``x / |x|`` (a unit vector; 0 stays 0)."""
    return x / (jnp.linalg.norm(x) + 1e-12)


def require_concrete(value: Any, what: str) -> np.ndarray:
    """Sound bounds are computed on the host; a traced value means someone called them under jit."""
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f'the sound bound of {what} needs concrete parameters; call it outside jit')
    return np.asarray(value, dtype=np.float64)


class Estimator(NamedTuple):
    """How the training estimate of a layer's norm is computed (``config.bound``, whose defaults
    a run uses; layers built directly in Python default to ``ONE_VECTOR``).

    Attributes:
      power_iterations: iterations per update (each layer, each training step).
      subspace_size: B > 1 tracks a block of B vectors per dense layer
        (``dense_block_iteration``) instead of one vector; convs keep one.
      exact_below: dense layers whose smaller dimension is at most this (e.g. a 10-class head)
        take their norm from their small Gram matrix (``dense_gram_norm``): exact, no state.
      rayleigh_ritz: set only by ``models.refresh_estimates``: dense blocks take one
        Rayleigh-Ritz step (``dense_rayleigh_ritz``) instead of their power iterations.
    """

    power_iterations: int
    subspace_size: int
    exact_below: int
    rayleigh_ritz: bool = False


# The papers' estimator (Tsuzuku et al.; Ono et al.): one vector per layer, one step per update.
ONE_VECTOR = Estimator(power_iterations=1, subspace_size=1, exact_below=0)


# ----------------------------------------------------------------------------- composition


def chain(*bounds: Any) -> Any:
    """Bound of the composition f_n ∘ ... ∘ f_1 from the bounds of its maps: their product.

    |g(f(x)) - g(f(y))| <= L_g·|f(x) - f(y)| <= L_g·L_f·|x - y|. Works on floats (sound, float64
    on the host) and on traced estimates alike; ``chain()`` is 1, the identity's bound.
    """
    return functools.reduce(operator.mul, bounds, 1.0)


def residual_sum(branch: Any, shortcut: Any = 1.0) -> Any:
    """Bound of x -> s(x) + f(x) from the bounds of s and f: their sum (triangle inequality).

    ``shortcut`` defaults to 1, the identity shortcut of a residual block: 1 + L_f.
    """
    return shortcut + branch


# ----------------------------------------------------------------------------- dense


def dense_power_iteration(kernel: Array, v: Array, steps: int = 1) -> tuple[Array, Array]:
    """``steps`` power-iteration steps for the spectral norm of ``x -> x @ kernel``.

    ``v`` is the persistent right singular vector estimate (input space); each step maps
    v -> u = normalize(v K) -> v' = normalize(K u). Returns the estimate sigma = u^T K^T v' of the
    last step (differentiable in ``kernel``; u and v' are stop-gradiented, as in spectral
    normalization) and the updated vector v'. sigma <= |K|_2 always: it is a Rayleigh-type
    quotient of unit vectors, so it is a lower bound that tightens as v' converges; more steps
    per update keep it closer to |K|_2 while the weights move.
    """
    w = jax.lax.stop_gradient(kernel)

    def step(_, v):
        return normalize(w @ normalize(v @ w))

    v = jax.lax.fori_loop(0, steps - 1, step, jax.lax.stop_gradient(v))
    u = normalize(v @ w)
    v_new = normalize(w @ u)
    sigma = jnp.dot(v_new @ kernel, u)
    return sigma, v_new


# The squarings that find the top Ritz direction of a block (``dense_block_advance``): on the paper
# MLP under LC-LMT, 4 (a 16th power) left the estimate ~1% behind in bunched tops, 8 about 0.3%.
RITZ_SQUARINGS = 8


def dense_block_advance(kernel: Array, block: Array) -> tuple[Array, Array]:
    """One step of subspace iteration for ``x -> x @ kernel``, matrix products only: the block
    advanced, and its top Ritz vector.

    ``block`` (in, B) is a persistent, nearly orthonormal V spanning the estimate of the top-B
    right singular subspace of K. Why a block: training pushes down only the direction an
    estimate tracks, so the top singular values of LMT-trained layers bunch together and the top
    direction keeps switching between them; one vector cannot follow that, a block holding them
    all can. No decomposition (so the step costs the same kinds of kernels on any device):

    * the top Ritz vector: with M = V^T K K^T V (B x B), q = the dominant column of M^256 (eight
      rescaled squarings: a bunched top with ratios 0.98 still separates), returned as
      normalize(V q);
    * the update (Oja's subspace rule): V <- V + (K K^T V - V M)/s, s = max_i M_ii (the
      largest column quotient, <= sigma_1^2). The step is orthogonal to span(V) when V is
      orthonormal, so it turns the span towards K's top right singular subspace and changes
      V^T V only to second order; one Newton-Schulz step V <- V (3 I - V^T V)/2 removes that
      (after a rescaling that keeps every singular value of V below sqrt(3), where the step is
      a contraction towards 1: the Gershgorin bound max_i sum_j |(V^T V)_ij|). The block
      neither collapses onto the top direction nor drifts off orthonormality, whatever the
      spectrum (tests/test_bounds.py).

    Everything is stop-gradiented: ``dense_block_iteration`` turns the vector into the
    differentiable estimate. ``dense_rayleigh_ritz`` re-orthonormalises exactly once per epoch
    (``models.refresh_estimates``). A zero kernel leaves the block as it was.
    """
    w = jax.lax.stop_gradient(kernel)
    block = jax.lax.stop_gradient(block)
    rows = block.T @ w  # (B, out): v_i K
    ritz = rows @ rows.T  # M = V^T K K^T V
    power = ritz
    for _ in range(RITZ_SQUARINGS):  # M^256, rescaled to stay finite
        power = power @ power
        power = power / jnp.maximum(jnp.max(jnp.abs(power)), jnp.finfo(power.dtype).tiny)
    top = normalize(block @ power[:, jnp.argmax(jnp.linalg.norm(power, axis=0))])
    scale = jnp.max(jnp.diagonal(ritz))
    moved = block + (w @ rows.T - block @ ritz) / jnp.where(scale > 0, scale, 1.0)
    gram = moved.T @ moved
    moved = moved / jnp.sqrt(jnp.maximum(jnp.max(jnp.sum(jnp.abs(gram), axis=1)), 1.0))
    identity = jnp.eye(block.shape[1], dtype=block.dtype)
    return moved @ (1.5 * identity - 0.5 * moved.T @ moved), top


def dense_block_iteration(kernel: Array, block: Array, steps: int = 1) -> tuple[Array, Array]:
    """The training estimate of |K|_2 from a persistent block (``dense_block_advance``, ``steps``
    times) and the advanced block: sigma = normalize(K u)·(K u) = |K u| with u = normalize(v K)
    for the block's top Ritz vector v, both vectors stop-gradiented, so d sigma / d K is the top
    singular pair's outer product once converged. sigma = |K u| <= |K|_2 for a unit u: a lower
    bound, like every estimate here."""
    block = jax.lax.fori_loop(0, steps - 1, lambda _, b: dense_block_advance(kernel, b)[0],
                              block)
    block, top = dense_block_advance(kernel, block)
    u = normalize(top @ jax.lax.stop_gradient(kernel))
    image = kernel @ u
    return jnp.dot(normalize(jax.lax.stop_gradient(image)), image), block


def dense_gram_norm(kernel: Array, squarings: int = RITZ_SQUARINGS) -> Array:
    """|K|_2 of a thin ``x -> x @ kernel`` (e.g. a 10-class head) from its small Gram matrix,
    matrix products only, no state.

    G = K^T K (or K K^T, whichever is smaller, m x m); G^(2^k) by k squarings (rescaled); its
    dominant column is the top eigenvector of G up to a mixture weighted by
    (lambda_i/lambda_1)^(2^k), so sigma = |K u| (u the unit top vector of the output side,
    stop-gradiented as in ``dense_power_iteration``) is exact to float32 when
    lambda_2/lambda_1 <= 0.9 (0.9^256 ~ 2e-12) and within the spread of a bunched top otherwise.
    Always <= |K|_2.
    """
    w = jax.lax.stop_gradient(kernel)
    wide = w.shape[0] <= w.shape[1]
    gram = w @ w.T if wide else w.T @ w
    for _ in range(squarings):
        gram = gram @ gram
        gram = gram / jnp.maximum(jnp.max(jnp.abs(gram)), jnp.finfo(gram.dtype).tiny)
    top = normalize(gram[:, jnp.argmax(jnp.linalg.norm(gram, axis=0))])
    u = normalize(top @ w) if wide else top  # a unit vector of the output side
    image = kernel @ u
    return jnp.dot(normalize(jax.lax.stop_gradient(image)), image)


def dense_rayleigh_ritz(kernel: Array, basis: Array) -> Array:
    """The block ``basis`` (in, B) advanced one step and re-orthonormalised by Rayleigh-Ritz.

    Z = K K^T V; Q an orthonormal basis of its span (QR, completed by arbitrary orthonormal
    directions where the block had collapsed onto fewer); V' = Q E with E the eigenvectors of
    Q^T K K^T Q: orthonormal columns, the Ritz vectors of K K^T in span(Q), the largest last. For
    a block as wide as the layer's smaller side, Z spans the layer's
    whole row space, so the top Ritz vector is the top singular vector: the estimate is exact
    after this step. A QR and a B x B eigendecomposition per layer, run once per epoch outside
    the training step (``models.refresh_estimates``).
    """
    w = jax.lax.stop_gradient(kernel)
    z = w @ (jax.lax.stop_gradient(basis).T @ w).T
    q, _ = jnp.linalg.qr(z)
    projected = q.T @ w  # (B, out)
    _, vectors = jnp.linalg.eigh(projected @ projected.T)
    return q @ vectors


def dense_exact_norm(kernel: Array) -> Array:
    """|K|_2 of ``x -> x @ kernel`` through the smaller Gram matrix, differentiable in ``kernel``.

    ``eigh`` gives the top singular vector on the smaller side (v of K K^T, or u of K^T K);
    with both vectors of the pair stop-gradiented, sigma = (v K)·u = |v K| and its gradient is
    the exact v u^T. Computed in float32 under ``jit``: a training value, never a certificate.
    An eigendecomposition per call: fine on a CPU, slow on accelerators, where training uses
    ``dense_gram_norm`` instead.
    """
    w = jax.lax.stop_gradient(kernel)
    if w.shape[0] <= w.shape[1]:
        _, vectors = jnp.linalg.eigh(w @ w.T)
        v = vectors[:, -1]
        return jnp.dot(v @ kernel, normalize(v @ w))
    _, vectors = jnp.linalg.eigh(w.T @ w)
    u = vectors[:, -1]
    return jnp.dot(kernel @ u, normalize(w @ u))


def dense_upper_bound(kernel: Array) -> float:
    """Guaranteed upper bound on |K|_2: the exact largest singular value in float64, rounded up."""
    matrix = require_concrete(kernel, 'a dense layer')
    return float(np.linalg.norm(matrix, ord=2) * (1.0 + SOUND_SLACK))


# ----------------------------------------------------------------------------- convolution

ConvPadding = str | int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]]
_CONV_DIMS = ('NHWC', 'HWIO', 'NHWC')


def pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    """``value`` as a pair of positive ints (an int means the same on both spatial axes)."""
    values = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != 2 or any(int(v) < 1 for v in values):
        raise ValueError(f'{what} must be a positive int or a pair of them, got {value!r}')
    return int(values[0]), int(values[1])


def conv_padding(padding: ConvPadding, input_hw: Sequence[int], kernel_hw: Sequence[int],
                 strides: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit zero padding ``((top, bottom), (left, right))`` of a conv on an H×W input.

    ``'SAME'`` follows XLA (output size ceil(n/s), total padding max((out-1)·s + k - n, 0), the
    odd pixel at the end), ``'VALID'`` is no padding, an int p pads p on every side, ``(ph, pw)``
    pads ph rows and pw columns on both sides, and ``((t, b), (l, r))`` is taken as is. Every conv
    in this file is run with the explicit padding returned here, so the forward pass, the power
    iteration and the sound bound all see the same linear map.
    """
    if isinstance(padding, str):
        if padding.upper() == 'VALID':
            pads = ((0, 0), (0, 0))
        elif padding.upper() == 'SAME':
            pads = []
            for n, k, s in zip(input_hw, kernel_hw, strides, strict=True):
                total = max((-(-n // s) - 1) * s + k - n, 0)
                pads.append((total // 2, total - total // 2))
            pads = tuple(pads)
        else:
            raise ValueError(f"padding must be 'SAME', 'VALID' or ints, got {padding!r}")
    elif isinstance(padding, (int, np.integer)):
        pads = ((int(padding),) * 2,) * 2
    elif len(padding) == 2 and all(isinstance(p, (int, np.integer)) for p in padding):
        pads = ((int(padding[0]),) * 2, (int(padding[1]),) * 2)
    else:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(pads) != 2 or any(p < 0 for side in pads for p in side):
        raise ValueError(f'conv padding must be non-negative, got {padding!r}')
    for n, k, (lo, hi) in zip(input_hw, kernel_hw, pads, strict=True):
        if n + lo + hi < k:
            raise ValueError(f'a {tuple(kernel_hw)} kernel does not fit the padded input '
                             f'{tuple(input_hw)} with padding {padding!r}')
    return pads


def conv(x: Array, kernel: Array, strides: tuple[int, int],
          pads: tuple[tuple[int, int], tuple[int, int]]) -> Array:
    """Bias-free cross-correlation (what ``lax.conv`` computes), NHWC input, HWIO kernel."""
    return jax.lax.conv_general_dilated(x, kernel, window_strides=strides, padding=pads,
                                        dimension_numbers=_CONV_DIMS)


def scale_kernel(kernel: Any, in_scale: Any = None, out_scale: Any = None) -> Any:
    """The HWIO kernel of x -> diag(out_scale)·conv(diag(in_scale)·x, kernel).

    ``in_scale`` (C_in,) and ``out_scale`` (C_out,) are per-channel factors, repeated over
    positions; None means 1. Works on jax and numpy arrays alike.
    """
    if in_scale is not None:
        kernel = kernel * in_scale[:, None]
    if out_scale is not None:
        kernel = kernel * out_scale
    return kernel


def conv_power_iteration(kernel: Array, v: Array, stride: int | Sequence[int] = 1,
                         padding: ConvPadding = 'SAME', in_scale: Array | None = None,
                         out_scale: Array | None = None, steps: int = 1) -> tuple[Array, Array]:
    """``steps`` power-iteration steps for the operator norm of the bias-free conv on ``v``'s shape.

    The conv ``A: x -> conv(x, kernel)`` is a linear map on inputs of shape ``v.shape`` = (1, H,
    W, C_in), stride and zero padding included. With the persistent unit vector v, each step is
    u = A v/|A v|, v' = A^T u/|A^T u| (A^T by ``jax.vjp``), and the returned estimate is
    sigma = <u, A v'> of the last step with u, v' stop-gradiented, so d sigma/d kernel is the
    gradient of the top singular value once v has converged. sigma = |A^T u| <= |A|_2 for every v
    (Cauchy-Schwarz on unit vectors), so it is a lower bound that tightens as v' converges.
    Returns (sigma, v').

    With ``in_scale``/``out_scale`` the map is diag(out_scale)·A·diag(in_scale) (see
    ``scale_kernel``), and sigma is differentiable in the scales too.
    """
    kernel = scale_kernel(kernel, in_scale, out_scale)
    strides = pair(stride, 'stride')
    pads = conv_padding(padding, v.shape[1:3], kernel.shape[:2], strides)
    w = jax.lax.stop_gradient(kernel)

    def step(v):
        image, transpose = jax.vjp(lambda z: conv(z, w, strides, pads), v)
        u = normalize(image)
        (back,) = transpose(u)
        # A zero kernel (e.g. a residual branch initialised to zero) maps everything to 0: keep
        # the old vector then, or the iteration would be stuck at v = 0 once the kernel grows.
        norm = jnp.linalg.norm(back)
        return u, jnp.where(norm > 0, back / jnp.where(norm > 0, norm, 1.0), v)

    v = jax.lax.fori_loop(0, steps - 1, lambda _, v: step(v)[1], jax.lax.stop_gradient(v))
    u, v_new = step(v)
    sigma = jnp.sum(u * conv(v_new, kernel, strides, pads))
    return sigma, v_new


def circular_conv_norm(kernel: np.ndarray, grid: Sequence[int], strides: Sequence[int]) -> float:
    """Exact operator norm of the stride-s *circular* cross-correlation on an N_h×N_w grid.

    The map is z[i, j] = sum_{p,q} K[p, q]^T x[(s_h·i + p) mod N_h, (s_w·j + q) mod N_w] for
    0 <= i < N_h/s_h, 0 <= j < N_w/s_w (each N divisible by its stride, each N >= kernel size).
    Proof that the value returned is its norm: the unitary 2-D DFT (Parseval) turns the stride-1
    circular correlation into x^(w) -> M(w) x^(w) with M(w) = conj(F(w))^T, F = DFT of the
    zero-extended kernel, F(w) a C_in×C_out matrix. Keeping every s-th sample aliases the
    s_h·s_w frequencies w' + a·N/s onto w' of the N/s grid: y^(w') = (1/(s_h s_w)) sum_a
    z^(w' + a·N/s), and with both grids' unitary scalings the strided map is unitarily equivalent
    to the block diagonal of B(w') = (s_h s_w)^(-1/2)·[M(w' + a·N/s)]_a, each block C_out ×
    (s_h s_w·C_in). A block-diagonal operator's norm is the largest block norm, so the norm is
    max_w' sigma_max(B(w')) -- computed here by a batched float64 SVD of conj(B(w'))^T, which has
    the same singular values. The kernel is real, so F(-w) = conj(F(w)) and B(-w') is B(w') with
    its blocks permuted and conjugated (same singular values): the columns w'_w <= N'_w/2 cover
    every block up to this symmetry, which halves the work.
    """
    kernel = np.asarray(kernel, np.float64)
    (n_h, n_w), (s_h, s_w) = grid, strides
    c_in, c_out = kernel.shape[2:]
    if n_h % s_h or n_w % s_w or n_h < kernel.shape[0] or n_w < kernel.shape[1]:
        raise ValueError(f'grid {tuple(grid)} must be multiples of the strides {tuple(strides)} '
                         f'and at least the kernel size {kernel.shape[:2]}')
    spectrum = np.fft.fft2(kernel, s=(n_h, n_w), axes=(0, 1))  # (N_h, N_w, C_in, C_out)
    spectrum = spectrum.reshape(s_h, n_h // s_h, s_w, n_w // s_w, c_in, c_out)
    spectrum = spectrum[:, :, :, :n_w // s_w // 2 + 1]
    blocks = spectrum.transpose(1, 3, 0, 2, 4, 5).reshape(-1, s_h * s_w * c_in, c_out)
    top = np.linalg.svd(blocks, compute_uv=False)[:, 0].max()
    return float(top / np.sqrt(s_h * s_w))


def conv_upper_bound(kernel: Array, input_shape: Sequence[int], stride: int | Sequence[int] = 1,
                     padding: ConvPadding = 'SAME', in_scale: Any = None,
                     out_scale: Any = None) -> float:
    """Guaranteed upper bound on the operator norm of the bias-free, zero-padded, strided conv.

    With ``in_scale``/``out_scale`` (per-channel factors, float64 on the host) the bound is that
    of diag(out_scale)·conv·diag(in_scale): the same conv with the float64 kernel of
    ``scale_kernel``, so the proof below applies unchanged.

    ``input_shape`` is the input's (H, W), (H, W, C_in) or (N, H, W, C_in); the bound is for the
    conv as a linear map on exactly that spatial shape. Proof, per spatial axis with input size
    n, kernel size k, stride s and padding (lo, hi); m = n + lo + hi, N = the least multiple of
    s with N >= m:

    1. Zero padding embeds x in a length-m signal and that in a length-N circular grid (zeros
       after m): an isometry E, |E x| = |x|.
    2. The conv's outputs are i = 0..out-1, out = (m - k)//s + 1, and read positions
       s·i + p <= s·(out-1) + k - 1 <= m - 1 < N: none wraps around, so
       conv = crop ∘ C ∘ E with C the stride-s circular correlation on the N grid (see
       ``circular_conv_norm``) and crop keeping the first ``out`` outputs, |crop|_2 <= 1.
    3. Hence |conv|_2 <= |crop|_2·|C|_2·|E|_2 <= |C|_2 = max_w sigma_max(B(w)) (exact, computed
       in float64 by ``circular_conv_norm``).

    The FFT and SVD are backward stable: their absolute error is below ~1e-12 of the result for
    any layer here (c·log2(N)·eps64·sqrt(N_h N_w·min(C_in, C_out)) relative), so multiplying by
    (1 + SOUND_SLACK) makes the float a guaranteed upper bound.
    """
    matrix = require_concrete(kernel, 'a conv layer')
    matrix = scale_kernel(matrix, *(None if scale is None else require_concrete(scale, 'a scale')
                                    for scale in (in_scale, out_scale)))
    input_shape = tuple(input_shape)
    if len(input_shape) not in (2, 3, 4) or (len(input_shape) > 2
                                             and input_shape[-1] != matrix.shape[2]):
        raise ValueError(f'input shape {input_shape} is not (H, W), (H, W, C_in) or '
                         f'(N, H, W, C_in) for a kernel of shape {matrix.shape}')
    spatial = input_shape[:2] if len(input_shape) < 4 else input_shape[1:3]
    strides = pair(stride, 'stride')
    pads = conv_padding(padding, spatial, matrix.shape[:2], strides)
    grid = [-(-(n + lo + hi) // s) * s for n, (lo, hi), s in zip(spatial, pads, strides,
                                                                  strict=True)]
    return circular_conv_norm(matrix, grid, strides) * (1.0 + SOUND_SLACK)

# ----------------------------------------------------------------------------- batch norm


def batch_norm_multipliers(scale: Array, var: Array, epsilon: float) -> np.ndarray:
    """|gamma_c|/sqrt(var_c + eps) per channel in float64: |D| of BN with fixed statistics.

    eps is taken as the smaller of its float64 and float32 values so the multipliers are at least
    those of the network evaluated in either precision. Not rounded up: a bound built from them
    adds ``SOUND_SLACK`` itself.
    """
    gamma = require_concrete(scale, 'a batch norm layer')
    variance = require_concrete(var, 'a batch norm layer')
    eps = min(float(epsilon), float(np.float32(epsilon)))
    return np.abs(gamma) / np.sqrt(variance + eps)


def batch_norm_upper_bound(scale: Array, var: Array, epsilon: float) -> float:
    """Guaranteed bound max_c |gamma_c|/sqrt(var_c + eps) of BN with fixed statistics, float64.

    BN with fixed (mean, var) is x -> D x + const with D diagonal (per channel, repeated over
    positions), so its L2 Lipschitz constant is exactly max |D| (a diagonal matrix's spectral norm
    is its largest absolute entry). eps as in ``batch_norm_multipliers``; SOUND_SLACK covers
    rounding.
    """
    return float(np.max(batch_norm_multipliers(scale, var, epsilon)) * (1.0 + SOUND_SLACK))



# ----------------------------------------------------------------------------- pooling


def average_pool_bound(height: int, width: int, sound: bool = False) -> float:
    """Lipschitz constant 1/sqrt(H·W) of the mean over an H×W grid (per channel).

    Per channel, |mean_i x_i|^2 <= (1/(HW))·sum_i x_i^2 by Cauchy-Schwarz; summed over channels
    |pool(x)| <= |x|/sqrt(HW), with equality for spatially constant x: the bound is exact. The
    sound value is rounded up by SOUND_SLACK.
    """
    bound = 1.0 / float(np.sqrt(height * width))
    return bound * (1.0 + SOUND_SLACK) if sound else bound


# ----------------------------------------------------------------------------- 1-Lipschitz layers
#
# AOL (Prach & Lampert, 2022) and SLL (Araujo et al., 2023, in the corrected form of their
# repository's commit 1abe5e1) are 1-Lipschitz by construction: a rescaling recomputed from the
# parameters on every call makes the layer's norm <= 1 whatever the parameters are. Training uses
# the constant 1; the sound bound does not assume it but measures, in float64, the operator the
# forward pass really applies (``_in_both_precisions``), so rounding that broke the construction
# would show as a bound above 1.

# AOL's epsilon: it only shrinks the rescaling, so any value >= 0 keeps the layer 1-Lipschitz.
AOL_EPSILON = 1e-6
# SLL's guard against an all-zero Gram row (a dead inner unit); in the denominator only, where it
# only shrinks t.
SLL_TINY = 1e-12


def _as_conv_kernel(kernel: Array) -> Array:
    """A dense kernel (in, out) as the HWIO kernel of the equal 1×1 conv; a conv kernel as is."""
    return kernel.reshape((1, 1, *kernel.shape)) if kernel.ndim == 2 else kernel


def gram_kernel(kernel: Array) -> Array:
    """The blocks G_Δ = sum_p K_p K_{p+Δ}^T of C^T C, C the stride-1 conv with ``kernel`` on the
    whole plane; shape (2k_h - 1, 2k_w - 1, C_in, C_in), offset Δ at index Δ + (k - 1).

    ``kernel`` is HWIO (K_p the C_in×C_out tap at offset p) or a dense (in, out) kernel, a 1×1
    conv (then G = K K^T). With (C x)[i] = sum_p K_p^T x[i + p] and (C^T z)[l] = sum_p K_p z[l - p],
    (C^T C x)[l] = sum_Δ G_Δ x[l + Δ]: C^T C is block Toeplitz with these blocks, the same in
    every block row. Computed as one correlation of the kernel with itself (input channels as the
    batch, zero padding k - 1 so every overlapping offset is counted), at full precision.
    """
    kernel = _as_conv_kernel(kernel)
    k_h, k_w = kernel.shape[:2]
    # image[i, a, b, o] = K[a, b, i, o]; filter[p, o, j] = K[p, j, o]; the correlation gives
    # out[i, y, j] = sum_p K[y + p - (k - 1)]_i · K[p]_j = (G_{(k-1) - y})_{ij}.
    out = jax.lax.conv_general_dilated(
        jnp.transpose(kernel, (2, 0, 1, 3)), jnp.transpose(kernel, (0, 1, 3, 2)), (1, 1),
        ((k_h - 1, k_h - 1), (k_w - 1, k_w - 1)), dimension_numbers=_CONV_DIMS,
        precision=jax.lax.Precision.HIGHEST)
    return jnp.transpose(out, (1, 2, 0, 3))[::-1, ::-1]


def gram_row_sums(kernel: Array) -> Array:
    """r_i = sum_Δ sum_j |(G_Δ)_ij| (``gram_kernel``): the absolute row sums of C^T C at input
    channel i, the same at every position. G_{-Δ} = G_Δ^T, so summing over all Δ makes rows and
    columns alike."""
    return jnp.sum(jnp.abs(gram_kernel(kernel)), axis=(0, 1, 3))


def aol_scale(kernel: Array, epsilon: float = AOL_EPSILON) -> Array:
    """AOL's per-input-channel rescaling d_i = (r_i + eps)^(-1/2), r = ``gram_row_sums``.

    Why C·diag(d) is 1-Lipschitz (the Schur test; Gershgorin on diag(r) - C^T C): M = C^T C is
    symmetric, so for every x
        x^T M x <= sum_ab |M_ab|·|x_a|·|x_b| <= sum_ab |M_ab|·(x_a² + x_b²)/2 = sum_a r_a x_a²,
    i.e. M <= diag(r) (Loewner order; r_a is r_i for a = (position, channel i), as the block rows
    are alike). With D = diag(d) repeated over positions, |C D|² = λ_max(D M D) and
    D M D <= D diag(r) D = diag(r/(r + eps)) <= I, so |C D|_2 <= 1. For a dense kernel C is
    the matrix itself. For a conv on a finite input with zero padding and any stride the layer is
    x -> S R C E D x (E: zero extension to the plane, an isometry that commutes with D; R: the
    restriction to the computed outputs; S: keeping every s-th one), so its norm is at most
    |S|·|R|·|C D|·|E| <= 1. Equality holds for orthogonal columns (and for the identity conv).
    """
    return jax.lax.rsqrt(gram_row_sums(kernel) + epsilon)


def aol_kernel(kernel: Array, epsilon: float = AOL_EPSILON) -> Array:
    """The kernel AOL applies: ``kernel`` with input channel i scaled by d_i (``aol_scale``); the
    same for a dense (in, out) and an HWIO kernel. Its norm is <= 1 for every ``kernel``."""
    return kernel * aol_scale(kernel, epsilon)[:, None]


def sll_scale(kernel: Array, q_raw: Array, tiny: float = SLL_TINY) -> Array:
    """SLL's per-inner-unit factor t_j = q_j / (sum_k R_jk q_k + tiny), q = exp(q_raw - max q_raw).

    ``kernel`` maps the features to the inner units (dense (n, m) or HWIO (k, k, n, m)); A is that
    map, R_jk = sum_Δ |(H_Δ)_jk| with H the blocks of A A^T on the plane (``gram_kernel`` of the
    kernel with its channel axes swapped: H_Δ = sum_p K_p^T K_{p+Δ}). Why |diag(√t) A|_2 <= 1
    (the weighted Schur test, Araujo et al.'s condition T - A A^T >= 0 with T = diag(1/t)): for
    N = A A^T and any x, with q_a > 0 the weight of a's unit,
        x^T N x <= sum_ab |N_ab|·|x_a|·|x_b| <= sum_ab |N_ab|·(x_a² q_b/q_a + x_b² q_a/q_b)/2
                 = sum_a x_a² (R q)_a / q_a,
    so N <= diag((R q)/q) <= diag(1/t) and diag(√t) N diag(√t) <= I. Zero padding and strides make
    A a compression S R C E of the plane conv C, and S R commutes with diag(√t), so
    |diag(√t) A|² <= |diag(√t) C C^T diag(√t)| <= 1. A unit whose q underflows to 0 gets t = 0
    and drops out; the rest keep positive weights and the argument applies to them. T depends on
    q only through ratios, so subtracting max q_raw changes nothing and keeps exp from overflowing.
    This is the corrected form: the original had an eps added to q_i on one side only, which
    made T too small and the layer not 1-Lipschitz.
    """
    swapped = jnp.swapaxes(_as_conv_kernel(kernel), 2, 3)
    weights = jnp.exp(q_raw - jax.lax.stop_gradient(jnp.max(q_raw)))
    row_sums = jnp.sum(jnp.abs(gram_kernel(swapped)), axis=(0, 1))
    return weights / (jnp.dot(row_sums, weights, precision=jax.lax.Precision.HIGHEST) + tiny)


def conv_with_adjoint(x: Array, kernel: Array, strides: tuple[int, int],
                      pads: tuple[tuple[int, int], tuple[int, int]]
                      ) -> tuple[Array, Callable[[Array], Array]]:
    """``A x`` for the bias-free zero-padded conv A (``conv``) and A^T as a function.

    A^T is the transpose of the same linear map (``jax.vjp``), so <A x, y> = <x, A^T y> exactly
    in exact arithmetic, whatever the stride and padding: what SLL's 1-Lipschitz proof needs.
    """
    image, pullback = jax.vjp(lambda z: conv(z, kernel, strides, pads), x)
    return image, lambda y: pullback(y)[0]


def _in_both_precisions(fn: Callable[..., tuple[Array, ...]], *arrays: Any
                        ) -> list[tuple[np.ndarray, ...]]:
    """``fn`` of concrete ``arrays`` computed in float32 and in float64, as float64 numpy arrays.

    A layer whose operator is recomputed from its parameters applies the float32 result in a
    float32 network and the float64 one where ``certify`` evaluates logits in float64; a sound
    bound is the larger of the two operators' bounds. (A differently compiled float32 forward pass
    may round the rescaling differently by a few float32 ulps, ~1e-7 relative, inside
    ``SOUND_SLACK``.)
    """
    concrete = [require_concrete(a, 'a 1-Lipschitz layer') for a in arrays]
    results = [tuple(np.asarray(out, np.float64)
                     for out in fn(*(jnp.asarray(a, jnp.float32) for a in concrete)))]
    with jax.enable_x64(True):
        results.append(tuple(np.asarray(out, np.float64)
                             for out in fn(*(jnp.asarray(a, jnp.float64) for a in concrete))))
    return results


def aol_upper_bound(kernel: Array, input_shape: Sequence[int] | None = None,
                    stride: int | Sequence[int] = 1, padding: ConvPadding = 'SAME',
                    epsilon: float = AOL_EPSILON) -> float:
    """Guaranteed upper bound on the norm of an AOL layer with raw parameter ``kernel``.

    Not the constant 1 of ``aol_scale``'s proof: the exact norm of the rescaled kernel as the
    float32 and the float64 forward passes compute it (``aol_kernel``), in float64: a dense
    (in, out) kernel's by SVD (``dense_upper_bound``), a conv's on ``input_shape`` with its stride
    and zero padding by the circular embedding (``conv_upper_bound``, sound for zero padding as
    its grid holds the padded input). It is <= 1 + 1e-6 unless rounding broke the construction,
    and then it says so.
    """
    kernels = [k for (k,) in _in_both_precisions(lambda k: (aol_kernel(k, epsilon),), kernel)]
    if np.ndim(kernels[0]) == 2:
        return max(dense_upper_bound(k) for k in kernels)
    return max(conv_upper_bound(k, input_shape, stride, padding) for k in kernels)


def sll_residual_bound(inner_norm: float) -> float:
    """Bound max(1, 2β² - 1) on the Jacobians of x -> x - 2 A^T(t ⊙ relu(A x + b)), given
    β >= |diag(√t) A|_2.

    The map is piecewise affine and continuous, so its Lipschitz constant is the largest norm of
    its Jacobians J = I - 2 A^T diag(t) S A, S = diag(relu') with entries in {0, 1} (in [0, 1]
    for any slope-in-[0, 1] activation). Diagonal matrices commute, so with B = diag(√t) A,
    J = I - 2 B^T S B: symmetric, and 0 <= B^T S B <= B^T B <= β² I, so J's eigenvalues lie in
    [1 - 2β², 1] and |J|_2 <= max(1, 2β² - 1). When t meets the SLL condition (``sll_scale``)
    β <= 1 and the bound is 1; a β above 1 (rounding) gives a larger but still sound bound.
    Increasing in β, so an upper bound on β gives an upper bound here.
    """
    return max(1.0, 2.0 * inner_norm * inner_norm - 1.0)


def sll_upper_bound(kernel: Array, q_raw: Array, input_shape: Sequence[int] | None = None,
                    stride: int | Sequence[int] = 1, padding: ConvPadding = 'SAME',
                    tiny: float = SLL_TINY) -> float:
    """Guaranteed upper bound on the Lipschitz constant of an SLL layer (``sll_residual_bound``)
    from its raw parameters: β = |diag(√t) A|_2 computed in float64 for the t of the float32 and
    of the float64 forward pass (``sll_scale``), by SVD for a dense (n, m) kernel, by
    ``conv_upper_bound`` with ``out_scale=√t`` for a conv on ``input_shape`` with its stride and
    zero padding. Rounded up by ``SOUND_SLACK``, as every sound bound here."""
    pairs = _in_both_precisions(lambda k, q: (k, sll_scale(k, q, tiny)), kernel, q_raw)
    if np.ndim(pairs[0][0]) == 2:
        betas = [dense_upper_bound(scale_kernel(k, out_scale=np.sqrt(t))) for k, t in pairs]
    else:
        betas = [conv_upper_bound(k, input_shape, stride, padding, out_scale=np.sqrt(t))
                 for k, t in pairs]
    return sll_residual_bound(max(betas)) * (1.0 + SOUND_SLACK)
