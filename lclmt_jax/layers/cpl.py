"""CPL, convex potential layers (Meunier et al., ICML 2022): y = x - h·A^T relu(A x + b).

A is the bias-free k×k conv (stride 1, centred 'SAME' zero padding, k odd) from the C input
channels to ``inner`` channels and A^T its exact adjoint, which for this padding is the conv with
the spatially flipped, channel-transposed kernel (``adjoint_kernel``) and the same padding. The
layer is the gradient step x - h·∇φ(x) on the convex potential φ(x) = 1ᵀ ρ(A x + b), ρ' = relu.

*Sound bound.* The map is piecewise affine and continuous, so its Lipschitz constant is the
largest norm of its Jacobians J = I - h·A^T S A, S = diag(relu') with entries in {0, 1}.
J is symmetric with 0 <= A^T S A <= A^T A <= |A|²·I, so its eigenvalues lie in [1 - h|A|², 1]
and |J|_2 <= max(1, h·|A|² - 1) (``cpl_bound``), increasing in |A|: with |A| bounded from above
by ``bounds.conv_upper_bound`` (the circular embedding, exact on the torus that holds the padded
input), the bound is sound for every h >= 0 and every kernel. It is 1 exactly when
h <= 2/|A|², the paper's choice.

*Training.* h = 2/σ² with σ the power-iteration estimate of |A| (``bounds.conv_power_iteration``,
one persistent vector, ``estimator.power_iterations`` steps per update), differentiable in the
kernel; σ <= |A|, so h may exceed 2/|A|² slightly while σ converges, and the training bound is
the constant 1. h is stored in the ``'lipschitz'`` collection beside the vector, and evaluation
and certification use the *stored* h: the float32 network and the exact one then multiply by the
same float32 number, and the sound bound holds for it whatever its provenance.

*Rounding.* A residual step (``rounding.Residual``): the identity plus the branch
conv_A + b, relu (exact), conv with kernel -h·A^T computed at run time in float32 (one rounding
per entry: ``scaled_kernel_error``), then the sum.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lclmt_jax import bounds, convolution, rounding
from lclmt_jax.layers import LAYERS, image_vector, keeps_vector, record
from lclmt_jax.rounding.arithmetic import UP, f64

Array = jax.Array


def adjoint_kernel(kernel: Any) -> Any:
    """The HWIO kernel of A^T for a stride-1 conv A with centred padding and an odd k×k kernel:
    (A^T z)[l] = sum_p K_p z[l - p], i.e. the conv with K flipped in space and its channel axes
    swapped, on the same padding. Works on jax and numpy arrays."""
    return jnp.swapaxes(kernel[::-1, ::-1], 2, 3) if isinstance(kernel, jax.Array) else \
        np.swapaxes(kernel[::-1, ::-1], 2, 3)


def cpl_bound(step: float, norm: float) -> float:
    """max(1, h·|A|² - 1): the Lipschitz bound of a CPL layer with step h and |A|_2 <= norm."""
    return max(1.0, step * norm * norm - 1.0)


def scaled_kernel_error(kernel: Any, step: float, arithmetic: rounding.Arithmetic) -> np.ndarray:
    """Entrywise D >= |fl(-h·K^T) - (-h·K^T)|: one rounding of each product (A1), u·|h·K| plus
    2·tau for a product that underflows; negation is exact."""
    scaled = np.abs(f64(step) * adjoint_kernel(f64(kernel)))
    return (arithmetic.unit * scaled + 2 * arithmetic.tiny) * UP


@LAYERS.register('cpl')
class CPLConv(nn.Module):
    """A convex potential conv layer on NHWC inputs (module docstring), returning ``(y, bound)``.

    Parameters: ``kernel`` (k, k, C, inner), Glorot normal; ``bias`` (inner,), zeros. Variables
    ``'lipschitz'``: ``v`` the power-iteration vector (1, H, W, C), ``h`` the stored step.
    ``inner`` None: C. Bound: 1 in training, ``cpl_bound(h, conv_upper_bound(K))`` when sound.
    """

    inner: int | None = None
    kernel_size: int = 3
    kernel_init: Any = nn.initializers.glorot_normal()
    estimator: bounds.Estimator = bounds.ONE_VECTOR

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, sound: bool = False):
        size, channels = self.kernel_size, x.shape[-1]
        if size % 2 == 0:
            raise ValueError(f'a CPL layer needs an odd kernel size, got {size}')
        pads = ((size // 2, size // 2), (size // 2, size // 2))
        kernel = self.param('kernel', self.kernel_init,
                            (size, size, channels, self.inner or channels))
        bias = self.param('bias', nn.initializers.zeros, (kernel.shape[-1],))
        v = image_vector(self, x)
        stored = self.variable('lipschitz', 'h', lambda: jnp.ones((), jnp.float32))
        if train and not sound:
            sigma, v_new = bounds.conv_power_iteration(kernel, v.value, 1, pads,
                                                       steps=self.estimator.power_iterations)
            step = 2.0 / jnp.square(sigma)
            if keeps_vector(self, train):
                v.value, stored.value = v_new, jax.lax.stop_gradient(step)
        else:
            step = stored.value
        if self.is_initializing():  # the first stored step from the initial kernel
            sigma, _ = bounds.conv_power_iteration(kernel, v.value, 1, pads,
                                                   steps=max(self.estimator.power_iterations, 8))
            stored.value = step = jax.lax.stop_gradient(2.0 / jnp.square(sigma))
        inner = nn.relu(convolution.conv(x, kernel.astype(x.dtype), (1, 1), pads)
                        + bias.astype(x.dtype))
        back = (-step * adjoint_kernel(kernel)).astype(x.dtype)
        y = x + convolution.conv(inner, back, (1, 1), pads)
        if not sound:
            return y, 1.0
        h = float(bounds.require_concrete(stored.value, 'a CPL layer'))
        bound = cpl_bound(h, bounds.conv_upper_bound(kernel, x.shape, 1, pads)) * UP
        record(self, lambda: rounding_step(kernel, bias, h, x.shape[1:], pads, bound))
        return y, bound

    @classmethod
    def same_width(cls, width: int, kernel_size: int) -> CPLConv:
        """A k×k CPL layer on ``width`` channels (``LipConvNet``'s layer; ``inner`` = width)."""
        del width  # a CPL layer keeps its input's channels
        return cls(kernel_size=kernel_size)


def rounding_step(kernel: Any, bias: Any, step: float, input_shape: tuple[int, ...],
                  pads: tuple[tuple[int, int], tuple[int, int]],
                  lipschitz: float) -> rounding.Residual:
    """The float32 rounding of a CPL layer: the identity plus the branch (conv_A + b, relu, the
    conv with the run-time kernel -h·A^T), then the sum; ``lipschitz`` its sound bound."""
    first = rounding.Conv(kernel, bias, input_shape, 1, pads)
    back = rounding.Conv(-f64(step) * adjoint_kernel(f64(kernel)), None, first.output_shape, 1,
                         pads, kernel_error=lambda arithmetic: scaled_kernel_error(
                             kernel, step, arithmetic))
    return rounding.Residual((first, rounding.ExactMap(jax.nn.relu), back), (), lipschitz)
