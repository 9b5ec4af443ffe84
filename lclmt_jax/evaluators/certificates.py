"""``certificates``: sound certified accuracy with every certificate (global and pairwise)."""

from __future__ import annotations

import ml_collections
import numpy as np

from lclmt_jax.evaluators import Context, Curve, Result, evaluator


@evaluator('certificates')
def certificates(context: Context, settings: ml_collections.ConfigDict) -> Result:
    """Clean accuracy, the sound L, and certified accuracy at ``config.evaluation.epsilons``.

    Radii come from guaranteed float64 upper bounds (``certify``), never from the training
    estimates; each curve is a sound lower bound on robust accuracy.
    """
    from lclmt_jax import certify, margins

    del settings  # none
    bounds = context.restored.sound_bounds
    epsilons = context.config.evaluation.epsilons
    scalars = {'clean_accuracy': float(context.correct.mean()),
               'lipschitz_sound': bounds.lipschitz,
               'body_lipschitz_sound': bounds.body_lipschitz}
    curves, per_example = {}, {'label': context.labels, 'correct': context.correct.astype(int)}
    for name in margins.CERTIFICATES:
        radii = context.radii(name)
        accuracies = certify.certified_accuracy(radii, context.correct, epsilons)
        scalars.update({f'certified_{name}@{eps:g}': float(accuracy)
                        for eps, accuracy in zip(epsilons, accuracies, strict=True)})
        curves[f'certified_{name}'] = Curve(
            lambda grid, radii=radii: certify.certified_accuracy(radii, context.correct, grid),
            'lower', f'certified, {name} (lower bound)')
        per_example[f'radius_{name}'] = radii
    return Result(scalars, curves, per_example, max_radius=float(np.max(epsilons)))
