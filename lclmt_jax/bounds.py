"""Operator norms of dense and conv maps, as pure functions, and the rules that compose bounds.

What several layer families share (``lclmt_jax.layers``: each family's own bound lives in its
module): power-iteration estimates and sound upper bounds of |W|_2 for dense kernels and for
zero-padded convs on a given input shape, and the composition rules.

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

from lclmt_jax.convolution import CONV_DIMS, ConvPadding, conv, conv_padding, pair

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


# ----------------------------------------------------------------------------- shared by families
# of layers that are 1-Lipschitz by construction (``layers.aol``, ``layers.sll``): a rescaling
# recomputed from the parameters on every call, from the Gram kernel of the conv.


def as_conv_kernel(kernel: Array) -> Array:
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
    kernel = as_conv_kernel(kernel)
    k_h, k_w = kernel.shape[:2]
    # image[i, a, b, o] = K[a, b, i, o]; filter[p, o, j] = K[p, j, o]; the correlation gives
    # out[i, y, j] = sum_p K[y + p - (k - 1)]_i · K[p]_j = (G_{(k-1) - y})_{ij}.
    out = jax.lax.conv_general_dilated(
        jnp.transpose(kernel, (2, 0, 1, 3)), jnp.transpose(kernel, (0, 1, 3, 2)), (1, 1),
        ((k_h - 1, k_h - 1), (k_w - 1, k_w - 1)), dimension_numbers=CONV_DIMS,
        precision=jax.lax.Precision.HIGHEST)
    return jnp.transpose(out, (1, 2, 0, 3))[::-1, ::-1]


def in_both_precisions(fn: Callable[..., tuple[Array, ...]], *arrays: Any
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
