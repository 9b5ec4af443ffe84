"""Float32 rounding: a guaranteed bound on how far the network users run is from the exact one.

The certificates of ``certify`` are proofs about the *exact* network f: the stored float32
parameters in real arithmetic. Users run the *float32* network f^ (``RestoredModel.logits``),
whose prediction can differ from f's where the margin is small. This module bounds, for every
example x and radius r, affinely in r,

    E_tj(r) >= sup_{|z - x|_2 <= r} |(f^_t - f^_j)(z) - (f_t - f_j)(z)|,          (1)

so that f^ predicts t on the whole (open) ball when, for every j != t,

    (f_t - f_j)(x) - K_tj·r - E_tj(r) > 0                                           (2)

(K_tj the certificate's Lipschitz constants, ``margins``); ``certify.certified_radii`` solves (2)
for the largest r in closed form, since E_tj(r) = E0_tj + E1_tj·r.

Assumptions (the arithmetic model)
----------------------------------
A1. IEEE 754 binary32 with round-to-nearest: every correctly rounded operation returns
    (a op b)(1 + d) + h with |d| <= u = 2^-24 and |h| <= 2·tau, tau = 2^-126 the smallest normal
    number. h covers gradual underflow (<= 2^-150), flush-to-zero of results (< tau) and
    denormals-are-zero on intermediate operands (< tau); XLA:CPU flushes subnormals (FTZ/DAZ),
    so these terms are needed, although they are ~1e-38. Operands that are parameters or inputs
    read as zero move by less than tau each.
A2. Every output of a dense or conv layer is the bias plus a sum of its n products w_i·x_i,
    in any order or tree, with or without FMA, or accumulated in higher precision: true of
    XLA:CPU (Eigen/oneDNN GEMM, im2col and direct convolutions) and of GEMM-based GPU
    kernels -- at ``Precision.HIGHEST``: a TF32 or bfloat16 pass has u = 2^-11 or 2^-8 and
    voids the bound. ``RestoredModel.logits`` traces the network under
    ``jax.default_matmul_precision('highest')``, which sets ``precision=HIGHEST`` on every
    ``dot_general`` and convolution it emits. Not covered: Winograd or FFT convolution
    algorithms (a GPU autotuner may pick them) and fast-math reassociation (off by default in
    XLA).
A3. +, -, ×, ÷, sqrt are correctly rounded; rsqrt (batch norm) has relative error at most
    2^-18 (XLA lowers it to 1/sqrt or to a 2-ulp library rsqrt).
A4. Nothing overflows. Not assumed but checked: every step bounds the magnitude of every value
    it computes on the whole ball, and the radius is cut where that bound reaches 2^127 (half
    the float32 range, which also absorbs the float64 rounding of the check itself).

The same model with u = 2^-53, tau = 2^-1022 describes the float64 evaluation that
``certify.logits_float64`` performs and the analysis below runs (its own rounding is bounded
too: the margins in (2) are float64 numbers, not exact ones).

Inner products (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., §3.1)
----------------------------------------------------------------------------------
With gamma_n = n·u/(1 - n·u): each term of b + sum_i w_i x_i passes through at most n + 1
roundings in any summation order, so by A1

    |fl(b + w·x) - (b + w·x)| <= gamma_{n+1}·(|w|·|x| + |b|)
                                  + tau·(4(n + 1)(1 + gamma_{n+1}) + |w|_1 + |x|_1),     (3)

the last term from the <= 2n + 1 operations' h (each <= 2·tau, amplified by <= 1 + gamma by
later roundings) and from operands read as zero (|w_i x_i - w'_i x'_i| <= tau(|w_i| + |x_i|)).
Taking L2 over the m outputs of a layer with kernel W (entrywise |W|) and bias b:

    delta(x^) <= gamma_{n+1}·(| |W||x^| |_2 + |b|_2) + tau·sqrt(m)·(4(n+1)(1 + gamma_{n+1})
                 + max_j |w_j|_1 + sqrt(n)·|x^|_2),                                       (4)

n the fan-in (kernel height·width·input channels for a conv, zero padding included) and
|x|_1 <= sqrt(n)|x|_2 over one output's receptive field.

The other steps
---------------
* ReLU, MinMax, GroupSort and flattening return exactly the function of their computed input
  (max and sorting only select operands): delta = 0, Lipschitz 1.
* Batch norm with fixed statistics, y = (x - mu)·m + beta, m = gamma/sqrt(var + eps), computed
  as three roundings on a multiplier m^ = m(1 + theta), |theta| <= (1 + 2^-18)(1 + u)^3(1 + s) - 1
  (s = |eps64 - eps32|/(var + eps32) when the float32 epsilon differs from the exact one):
  delta <= c·|(x^ - mu)·m|_2 + u·|beta broadcast|_2 + 4·tau·sqrt(size)·(1 + max|m|),
  c = (1 + theta)(1 + u)^3 - 1.
* Global average pooling, a sum of P terms then one division (or a product with a rounded 1/P):
  per channel gamma_{P+1}·(1/P)·sum_i |x^_i| (+ underflow), hence
  delta <= gamma_{P+1}/P·| sum_i |x^_i| |_2 + 6·tau·sqrt(C).
* A residual sum s + f: u·|s^ + f^| + 3·tau per element, plus each branch's own rounding.
* A shift x - c by a float32 constant (``Shift``): u·|x^ - c|_2 + 2·tau·sqrt(size).
* A kernel the network computes at run time (a LiResNet block's I + s·K·diag(gamma)): an
  entrywise bound D on the computed kernel's error adds |conv_D(|x^|)|_2 (``Conv``).
* A last-layer-normalised head (LLN): the computed columns w_c/|w_c| are within a relative
  kappa_c of the exact ones (``normalisation_error``), added to each logit's rounding (``Head``).

Propagation, and the ball
-------------------------
Let x_k(z) be the exact activation after step k at input z, x^_k(z) the computed one, L_k a
guaranteed Lipschitz constant of step k (the library's sound bounds) and a_k the float64
activation at the centre x. Then, writing e_k >= sup_z |x^_k(z) - x_k(z)| and
rho_k >= |a_k - x_k(x)| (float64 rounding),

    e_{k+1} <= L_k·e_k + delta^32_k,      rho_{k+1} <= L_k·rho_k + delta^64_k,            (5)

since x^_{k+1} - x_{k+1} = [fl(step(x^_k)) - step(x^_k)] + [step(x^_k) - step(x_k)]. Every
delta needs norms of the computed input x^_k(z) at every z of the ball. With the *spread*
d_k >= sup_z |x^_k(z) - a_k|_2, entrywise |x^_k| <= |a_k| + |x^_k - a_k|, so for instance

    | |W||x^_k(z)| |_2 <= | |W||a_k| |_2 + | |W| |_2·d_k,                                  (6)

with | |W| |_2 the operator norm of the entrywise-absolute kernel, bounded soundly as the library
bounds norms (``bounds.dense_upper_bound``: SVD; ``bounds.conv_upper_bound``: the conv on the
actual input shape) and | |W||a_k| |_2 computed per example in float64. The spread follows
|x^_{k+1}(z) - a_{k+1}| <= delta^32_k + L_k·d_k + delta^64_k:

    d_0 = r + e_0,   d_{k+1} = L_k·d_k + delta^32_k + delta^64_k,                          (7)

with e_0 = u·(|x|_2 + r) + tau·sqrt(n) the rounding of a float64 input to float32 (0 for
float32 inputs). Every bound is a sum of products of non-negative constants with d, so e_k and
d_k are affine in r with non-negative coefficients (``Affine``): E_tj is linear in r and (2) has
a closed-form solution.

The head f = W h + b ends the network: with h^ the computed body output,

    |(f^_t - f^_j) - (f_t - f_j)| <= |w_t - w_j|_2·e_body + eps_t + eps_j,

eps_c the rounding (3) of logit c, with |w_c|·|h^| <= |w_c|·|a| + |w_c|_2·d_body. The float64
margin used in (2) is within |w_t - w_j|_2·rho_body + eps64_t + eps64_j of the exact one, so
E_tj adds both precisions' terms.

A residual block y = s(x) + f(x) is one step of (5) and (7) whose Lipschitz constant is the
block's sound bound (``bounds.residual_sum``, BN folded) and whose delta is the two branches'
own rounding -- each branch walked by (5) and (7) from zero error and the block's spread -- plus
the rounding of the sum.

All bound arithmetic is float64 on non-negative numbers: every norm and the final allowance are
multiplied by 1 + ``bounds.SOUND_SLACK`` (1e-6), far above the relative rounding (< 1e-9) of
those few float64 sums; ``certify`` rounds the margins and the radius down.

How a layer declares its rounding (for new layers and models)
-------------------------------------------------------------
Nothing describes a model twice: the analysis is *recorded from the sound forward pass*.
``network(model, variables, input_shape)`` runs ``model.apply(..., sound=True)`` once with a
recording active (``tape``), and every layer's sound branch records the step it applies, with
its own parameters and input shape, through ``tape.record``: a ``Primitive`` with ``lipschitz``
(its sound bound), ``forward(a)`` (the exact map on float64 batches) and
``rounding(a, spread, arithmetic) -> Bound`` (delta of its computed output on every input within
``spread`` of ``a``, and the magnitude of every value it computes, both ``Affine`` in r), built
from ``Dense``/``Conv`` (``affine_layer_bound``) where it is a matrix product; or a composite
with ``advance(state) -> State`` like ``Residual``, whose branches a block collects with
``tape.capture``. A layer family whose float32 arithmetic cannot be bounded records a refusal
(``tape.refuse``), which makes ``network`` raise ``NotAnalysable`` with its reason. Activations
record themselves (``activations``: an ``exact_float32`` entry is an ``ExactMap``), and so do the
parameter-free maps models apply (``layers.flatten``, ``layers.shift``, ``layers.exact_map``).
The network ends in its head (``Head``, recorded by ``layers.head.lipschitz_head``).

Two checks guard a recording: every parameter must belong to a layer that recorded itself
(``tape.network``), and the recorded walk's float64 logits must agree with the model's within
the float64 rounding bound (``certify.certified_radii``), which catches a map applied outside any
layer.
"""

from lclmt_jax.rounding.arithmetic import (
    FLOAT32,
    FLOAT64,
    Affine,
    Arithmetic,
    Bound,
    NotAnalysable,
    State,
    gamma,
    norms,
    overflow_limit,
)
from lclmt_jax.rounding.head import Allowance, Head, normalisation_error
from lclmt_jax.rounding.steps import (
    Conv,
    Dense,
    Exact,
    ExactMap,
    Flatten,
    LayerConstants,
    Primitive,
    Residual,
    Shift,
    Step,
    advance,
    affine_layer_bound,
    walk,
)
from lclmt_jax.rounding.tape import Network, analyse, capture, network, record, refuse

__all__ = [
    'FLOAT32', 'FLOAT64', 'Affine', 'Allowance', 'Arithmetic', 'Bound', 'Conv', 'Dense', 'Exact',
    'ExactMap', 'Flatten', 'Head', 'LayerConstants', 'Network', 'NotAnalysable', 'Primitive',
    'Residual', 'Shift', 'State', 'Step', 'advance', 'affine_layer_bound', 'analyse', 'capture',
    'gamma', 'network', 'norms', 'normalisation_error', 'overflow_limit', 'record', 'refuse',
    'walk',
]
