"""BRO, block reflector orthogonal convs (Lai et al., ICML 2025, BRONet): a reflector per frequency.

*The construction.* A kernel V (k×k, from C channels to r < C) has the DFT symbol V(w) (C×r,
complex) on an N_h×N_w torus, the kernel centred on tap 0 (``kernel_symbol``). Per frequency

    W(w) = I - 2 V (V^H V + eps I)^-1 V^H,     eps = BRO_EPSILON·tr(V^H V)/r + BRO_FLOOR

(``reflector``; BRONet's own eps is relative too, and the floor keeps V(w) = 0 solvable), and the
layer applies the circular conv T with symbol W: y = Re(F^-1 W F x) + b, F the 2-D DFT
(``bro_apply``). With ``padding='zero'`` (the default, as BRONet's LipConvNet layer) x is first
zero-padded by k//2 on every side, T acts on the (H + 2p)×(W + 2p) torus, and the output is
cropped back to H×W; with ``'circular'`` T acts on the H×W torus itself. W(w) is a rational
function of e^{iw}, so T's spatial kernel fills the whole torus: a BRO conv is a global conv
whose parameters are a k×k kernel.

*Sound bound (proof).* (1) The exact symbol: with V = U S Q^H (thin SVD, singular values s_i),
W = I - U diag(2 s_i²/(s_i² + eps)) U^H is Hermitian with eigenvalues 1 (on range(V)^perp, of
dimension >= C - r >= 1) and (eps - s_i²)/(s_i² + eps) in (-1, 1); eps > 0, so V^H V + eps I is
invertible for every V, and |W(w)|_2 = 1 exactly. It is unitary only when eps = 0: each
direction of V(w) loses 2·eps/(s_i² + eps) of its length. (2) T = F^-1 diag(W(w)) F is
block-diagonalised by the unitary DFT, so |T|_2 = max_w |W(w)|_2; for a *computed* symbol W^,
Hermitian-symmetric or not, the layer applies x -> Re(F^-1 W^ F x), and |Re z| <= |z| makes that
real map's norm <= max_w |W^(w)|_2 (for real V, W(-w) = conj(W(w)) and Re changes nothing).
(3) Zero padding: the layer is R T E, E the zero embedding into the larger torus (an isometry)
and R the crop (a coordinate projection), so |R T E|_2 <= |T|_2; circular padding is T. The
bias is a translation. Hence the layer's Lipschitz constant is at most max_w |W(w)|_2 for the
exact, the float64 and the float32 symbol alike, and ``bro_upper_bound`` is
max(1, |W^32|, |W^64|)·(1 + SOUND_SLACK) with the two computed symbols' exact per-frequency
singular values (float64 SVD of the symbol the float32 and the float64 forward pass compute
from the stored kernel, ``computed_symbols``): the 1 covers the exact network by (1),
the others the networks that run (a float32 symbol can exceed 1 where V^H V + eps I is
ill-conditioned; the bound then says so).

*Orthogonality.* Circular: T is orthogonal iff every |eps - s_i²|/(s_i² + eps) = 1, which eps > 0
always breaks a little and an ill-conditioned V(w) breaks a lot. Zero padding: R T E is not an
isometry (T E x leaks onto the padding ring that R drops); BRONet's backbone keeps that ring
(its maps grow by 2p per layer), its LipConvNet layer crops it. Measured in docs/CERTIFIED.md
("The BRO layer: orthogonality measured", ``scripts/bro_orthogonality.py``).

*Rounding: refused.* The float32 layer is an FFT, a per-frequency solve and an inverse FFT:
assumption A2 of ``lclmt_jax.rounding`` excludes FFT convolutions, and the solve's error grows
with the condition number of V^H V + eps I, which nothing bounds. A BRO network certifies the
exact network (``arithmetic='exact'``). The alternative, *not* used by any certificate:
``float32_deviation`` bounds |BRO32(x) - BRO(x)|_2 <= delta·|x|_2 + rounding of the bias, under
a stated FFT error assumption (A5 there) and the float32 symbol measured on the host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lclmt_jax import bounds, rounding
from lclmt_jax.layers import LAYERS

Array = jax.Array

# eps = BRO_EPSILON·(mean eigenvalue of V^H V) + BRO_FLOOR: BRONet's LipConvNet layer uses the
# relative 1e-5 (its backbone 1e-7); the floor (a float32 normal number) keeps V(w) = 0 solvable.
BRO_EPSILON = 1e-5
BRO_FLOOR = 1e-30
PADDINGS = ('zero', 'circular')


def reflector(v: Array, epsilon: float = BRO_EPSILON) -> Array:
    """W = I - 2 V (V^H V + eps I)^-1 V^H for every matrix V (..., C, r), r <= C, real or
    complex, eps = epsilon·tr(V^H V)/r + BRO_FLOOR (module docstring: |W|_2 = 1 exactly for
    r < C, every singular value |eps - s_i²|/(s_i² + eps) or 1). A dense BRO layer is this of
    its (features, r) kernel."""
    c, r = v.shape[-2:]
    vh = jnp.conj(jnp.swapaxes(v, -1, -2))
    gram = jnp.matmul(vh, v, precision=jax.lax.Precision.HIGHEST)
    trace = jnp.real(jnp.trace(gram, axis1=-2, axis2=-1))
    eps = (epsilon * trace / r + BRO_FLOOR)[..., None, None]
    solved = jnp.linalg.solve(gram + eps * jnp.eye(r, dtype=gram.dtype), vh)
    return jnp.eye(c, dtype=gram.dtype) - 2 * jnp.matmul(v, solved,
                                                         precision=jax.lax.Precision.HIGHEST)


def kernel_symbol(kernel: Array, grid: Sequence[int]) -> Array:
    """V(w) (N_h, N_w, C, r): the 2-D DFT of the HWIO ``kernel`` placed on the N_h×N_w torus
    with its centre tap (k//2, k//2) at position 0, so that an identity centre tap is the
    identity map at every frequency (and the crop of zero padding keeps the pixels the kernel
    is centred on)."""
    k_h, k_w = kernel.shape[:2]
    if grid[0] < k_h or grid[1] < k_w:
        raise ValueError(f'a BRO conv needs a torus at least its kernel, got {tuple(grid)} for '
                         f'{k_h}×{k_w}')
    placed = jnp.pad(kernel, ((0, grid[0] - k_h), (0, grid[1] - k_w), (0, 0), (0, 0)))
    placed = jnp.roll(placed, (-(k_h // 2), -(k_w // 2)), axis=(0, 1))
    return jnp.fft.fft2(placed, axes=(0, 1))


def bro_symbol(kernel: Array, grid: Sequence[int], epsilon: float = BRO_EPSILON) -> Array:
    """W(w) (N_h, N_w, C, C): the reflector of ``kernel_symbol`` at every frequency."""
    return reflector(kernel_symbol(kernel, grid), epsilon)


def torus(input_hw: Sequence[int], kernel_size: int, padding: str) -> tuple[int, int]:
    """The torus T acts on: the input zero-padded by k//2 on every side, or the input itself."""
    pad = kernel_size // 2 if padding == 'zero' else 0
    return (input_hw[0] + 2 * pad, input_hw[1] + 2 * pad)


def bro_apply(x: Array, symbol: Array, kernel_size: int, padding: str) -> Array:
    """Re(F^-1 W F x) on NHWC ``x`` (zero-padded by k//2 and cropped back for 'zero'), in x's
    precision (complex64 for float32, complex128 for float64)."""
    pad = kernel_size // 2 if padding == 'zero' else 0
    h, w = x.shape[1:3]
    if pad:
        x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    spectrum = jnp.fft.fft2(x, axes=(1, 2))
    mixed = jnp.einsum('hwoc,nhwc->nhwo', symbol.astype(spectrum.dtype), spectrum,
                       precision=jax.lax.Precision.HIGHEST)
    y = jnp.real(jnp.fft.ifft2(mixed, axes=(1, 2))).astype(x.dtype)
    return y[:, pad:pad + h, pad:pad + w]


def computed_symbols(kernel: Any, grid: Sequence[int], epsilon: float = BRO_EPSILON
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The symbol W^(w) as the float32 forward pass computes it from the concrete ``kernel`` and
    as the float64 one does (``certify.logits_float64``), both as complex128 arrays."""
    kernel = bounds.require_concrete(kernel, 'a BRO conv')
    w32 = np.asarray(bro_symbol(jnp.asarray(kernel, jnp.float32), grid, epsilon), np.complex128)
    with jax.enable_x64(True):
        w64 = np.asarray(bro_symbol(jnp.asarray(kernel, jnp.float64), grid, epsilon))
    return w32, w64


def spectral_norms(symbol: np.ndarray) -> np.ndarray:
    """|W(w)|_2 per frequency: the largest singular value, float64 SVD."""
    return np.linalg.svd(symbol, compute_uv=False)[..., 0]


def bro_upper_bound(kernel: Any, input_hw: Sequence[int], padding: str = 'zero',
                    epsilon: float = BRO_EPSILON) -> float:
    """Guaranteed upper bound on the Lipschitz constant of a BRO conv on inputs of spatial shape
    ``input_hw``: max(1, max_w |W^32(w)|_2, max_w |W^64(w)|_2)·(1 + SOUND_SLACK) (the module
    docstring's proof). The float64 SVD is backward stable (error ~1e-15 of |W| for these
    sizes), far inside the slack."""
    kernel = bounds.require_concrete(kernel, 'a BRO conv')
    grid = torus(input_hw, kernel.shape[0], padding)
    worst = max(float(spectral_norms(w).max()) for w in computed_symbols(kernel, grid, epsilon))
    return max(1.0, worst) * (1.0 + bounds.SOUND_SLACK)


# ----------------------------------------------------------------------------- float32: assumed

def fft_error(length: int, arithmetic: rounding.Arithmetic = rounding.FLOAT32) -> float:
    """eta_n: the assumed normwise relative error of a computed length-n DFT (A5 of
    ``float32_deviation``): log2(n)·eta0/(1 - log2(n)·eta0), eta0 = mu + gamma_4(sqrt(2) + mu),
    mu = u the twiddle factors' error, log2 rounded up (Higham, Accuracy and Stability, 2nd ed.,
    Thm 24.2, proved for radix-2 Cooley-Tukey; assumed for XLA's mixed-radix FFTs)."""
    u = arithmetic.unit
    eta0 = u + rounding.gamma(4, arithmetic) * (math.sqrt(2) + u)
    levels = max(1, math.ceil(math.log2(max(length, 2))))
    return levels * eta0 / (1 - levels * eta0)


def float32_deviation(kernel: Any, input_hw: Sequence[int], padding: str = 'zero',
                      epsilon: float = BRO_EPSILON) -> float:
    """delta with |BRO32(x) - BRO(x)|_2 <= delta·|x|_2 before the bias (whose addition adds
    u·|y^ + b| per element), BRO the exact layer; *not* a certificate, an estimate under:

    A5. A computed 2-D DFT of size N_h×N_w (forward or inverse, before its 1/N scaling) has
        normwise relative error <= eta = (1 + eta_h)(1 + eta_w) - 1 (``fft_error``).
    A6. The network's run-time float32 symbol W^ is the host's float32 evaluation
        (``computed_symbols``; the same XLA ops, though a different compilation may round the
        solve differently).

    With |W^| = max_w |W^(w)|_2, d_W = max_w |W^(w) - W(w)|_2 (float64 SVD against the float64
    symbol, itself within ~1e-12 of the exact one), the per-frequency complex products of C
    terms with error <= kappa·|X^(w)|, kappa = sqrt(2)·gamma_{C+2}·max_w | |W^(w)| |_2 (entrywise
    magnitudes; Higham §3.6), and the inverse DFT's error eta plus the 1/N scaling's u:
        |y^ - y| <= d_W + eta·|W^| + kappa(1 + eta) + (eta + u)(1 + eta)(|W^| + kappa)
    times |x| (the unitary-normalised DFT has norm 1; crop and Re are contractions).
    """
    grid = torus(input_hw, np.shape(kernel)[0], padding)
    w32, w64 = computed_symbols(kernel, grid, epsilon)
    arithmetic = rounding.FLOAT32
    u = arithmetic.unit
    eta = (1 + fft_error(grid[0])) * (1 + fft_error(grid[1])) - 1
    norm32, d_w, abs_norm = (float(spectral_norms(w).max())
                             for w in (w32, w32 - w64, np.abs(w32)))
    kappa = math.sqrt(2) * rounding.gamma(w32.shape[-1] + 2, arithmetic) * abs_norm
    delta = d_w + eta * norm32 + kappa * (1 + eta) + (eta + u) * (1 + eta) * (norm32 + kappa)
    return delta * (1 + bounds.SOUND_SLACK)


# ----------------------------------------------------------------------------- the layer

def identity_init(std: float | None = None) -> nn.initializers.Initializer:
    """V = [I_r; 0] at the centre tap plus N(0, std²) noise (std None: 1/(k²·C), LiResNet's
    block scale): W starts near the channel reflection diag(-I_r, I_{C-r}) at every frequency,
    BRONet's identity-like start."""
    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        k_h, k_w, c, r = shape
        scale = 1.0 / (k_h * k_w * c) if std is None else std
        noise = scale * jax.random.normal(key, shape, dtype)
        return noise.at[k_h // 2, k_w // 2].add(jnp.eye(c, r, dtype=dtype))
    return init


@LAYERS.register('bro')
class BROConv(nn.Module):
    """A BRO conv on NHWC inputs (module docstring), stride 1, C channels in and out, returning
    ``(y, bound)``.

    Parameters: ``kernel`` V (k, k, C, rank), ``identity_init``; ``bias`` (C,), zeros.
    ``rank`` None: C//2 (BRONet's backbone ratio 0.5); it must be in [1, C). ``padding``
    'zero' (pad k//2, crop back) or 'circular'. Bound: 1 in training (the construction),
    ``bro_upper_bound`` on the input's spatial shape when ``sound``; the float32 rounding
    analysis is refused (module docstring).
    """

    rank: int | None = None
    kernel_size: int = 3
    padding: str = 'zero'
    epsilon: float = BRO_EPSILON
    use_bias: bool = True
    kernel_init: Any = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False):
        channels, size = x.shape[-1], self.kernel_size
        rank = channels // 2 if self.rank is None else self.rank
        if self.padding not in PADDINGS:
            raise ValueError(f'a BRO conv pads {" or ".join(PADDINGS)}, got {self.padding!r}')
        if size % 2 == 0 or not 1 <= rank < channels:
            raise ValueError(f'a BRO conv needs an odd kernel size and 1 <= rank < C, got size '
                             f'{size}, rank {rank}, C = {channels}')
        kernel = self.param('kernel', self.kernel_init or identity_init(),
                            (size, size, channels, rank))
        grid = torus(x.shape[1:3], size, self.padding)
        symbol = bro_symbol(kernel.astype(x.dtype), grid, self.epsilon)
        y = bro_apply(x, symbol, size, self.padding)
        if self.use_bias:
            y = y + self.param('bias', nn.initializers.zeros, (channels,)).astype(x.dtype)
        if not sound:
            return y, 1.0
        rounding.refuse('BRO convs have no float32 rounding analysis: they compute an FFT '
                        '(outside assumption A2) and a per-frequency solve whose error grows '
                        'with the condition number of VᴴV + eps·I; certify the exact network '
                        "with arithmetic='exact' (layers.bro.float32_deviation estimates the "
                        'float32 error under a stated FFT assumption)', self.path)
        return y, bro_upper_bound(kernel, x.shape[1:3], self.padding, self.epsilon)

    @classmethod
    def same_width(cls, width: int, kernel_size: int) -> BROConv:
        """A k×k BRO conv on ``width`` channels (``LipConvNet``'s layer; rank width//2)."""
        del width  # a BRO conv keeps its input's channels
        return cls(kernel_size=kernel_size)
