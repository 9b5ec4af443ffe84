"""The sound bound's figures a training run logs: computed on the host in float64 from the
certificate's guaranteed Lipschitz bound, beside the device metrics of ``lclmt_jax.metrics``."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from lclmt_jax import certify, margins


def sound_scalars(model: nn.Module, variables: Any, input_shape: tuple[int, ...],
                  estimate: float, epsilon: float) -> dict[str, float]:
    """The sound L (host, float64; ``certify``), its ratio to the training estimate (how far the
    loss's bound lags the one the certificate will use: 1 means it tracks it exactly) and the
    global required margin sqrt(2)·L·eps with the sound L."""
    sound = certify.sound_bounds(model, jax.device_get(variables), input_shape).lipschitz
    return {'lipschitz_sound': sound, 'sound_over_training': sound / float(estimate),
            'required_margin_sound': float(margins.global_required_margin(sound, epsilon))}
