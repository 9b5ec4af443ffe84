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
from collections.abc import Sequence
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
      subspace_size: B > 1 tracks a block of B vectors per dense layer (block power iteration
        with Rayleigh-Ritz, ``dense_subspace_iteration``) instead of one vector; convs keep one.
      exact_below: dense layers whose smaller dimension is at most this use their exact norm
        (``dense_exact_norm``), e.g. a 10-class head, where that is the cheapest.
    """

    power_iterations: int
    subspace_size: int
    exact_below: int


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


def dense_subspace_iteration(kernel: Array, basis: Array,
                             steps: int = 1) -> tuple[Array, Array]:
    """Block power iteration with Rayleigh-Ritz for the spectral norm of ``x -> x @ kernel``.

    ``basis`` (in, B) has orthonormal columns spanning the persistent estimate of the top-B right
    singular subspace. Each step maps V -> Z = K K^T V and re-orthonormalises by Rayleigh-Ritz:
    with Z^T Z = Q diag(lam) Q^T, V' = Z Q diag(lam)^(-1/2) (orthonormal, the Ritz vectors, the
    largest last). Why a block: training pushes down only the direction the estimate tracks, so
    the top singular values of LMT-trained layers bunch together and the top direction keeps
    switching between them; one vector cannot follow that, a block containing them all can.

    Returns the estimate sigma = |v K| for the top Ritz vector v (differentiable in ``kernel``
    with v and u = normalize(v K) stop-gradiented, as in ``dense_power_iteration``) and V'.
    sigma <= |K|_2 for every v: a lower bound, like every estimate here.
    """
    w = jax.lax.stop_gradient(kernel)

    def step(_, basis):
        z = w @ (basis.T @ w).T
        lam, q = jnp.linalg.eigh(z.T @ z)
        lam = jnp.maximum(lam, 1e-30 + 1e-12 * lam[-1])
        return (z @ q) / jnp.sqrt(lam)

    basis = jax.lax.fori_loop(0, steps, step, jax.lax.stop_gradient(basis))
    v = basis[:, -1]
    u = normalize(v @ w)
    return jnp.dot(v @ kernel, u), basis


def dense_exact_norm(kernel: Array) -> Array:
    """|K|_2 of ``x -> x @ kernel`` through the smaller Gram matrix, differentiable in ``kernel``.

    ``eigh`` gives the top singular vector on the smaller side (v of K K^T, or u of K^T K);
    with both vectors of the pair stop-gradiented, sigma = (v K)·u = |v K| and its gradient is
    the exact v u^T. One eigendecomposition of a min(in, out)-square matrix per call: the
    cheapest estimate for thin layers such as a 10-class head. Computed in float32 under
    ``jit``: a training value, never a certificate.
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
