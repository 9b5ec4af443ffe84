"""``certificates``: sound certified accuracy with every certificate (global and pairwise),
for the float32 network as it runs: certified-and-correct beside certified-only."""

from __future__ import annotations

import ml_collections
import numpy as np

from lclmt_jax.evaluators import Column, Context, Curve, Result, evaluator


@evaluator('certificates')
def certificates(context: Context, settings: ml_collections.ConfigDict) -> Result:
    """Clean accuracy, the sound L, and certified accuracy at ``config.evaluation.epsilons``.

    Radii come from guaranteed float64 upper bounds (``certify``), never from the training
    estimates, and hold for the float32 network as it runs (``rounding``): each curve is a sound
    lower bound on robust accuracy. Per certificate ``<name>`` and eps:

    * ``certified_<name>@eps``: certified and correct (radius >= eps, float32 network);
    * ``certified_only_<name>@eps``: certified whatever the label -- the float32 prediction
      cannot change within eps (the exact prediction's radius), >= the first;
    * ``certified_exact_<name>@eps``: certified and correct for the exact network, the
      figure without rounding (>= the first);
    * ``rounding_loss_<name>``: the median relative radius lost to rounding over the points the
      exact network certifies.

    For a model without a rounding analysis (one warning line) only the exact figures are
    reported, as ``certified_exact_<name>`` and ``certified_only_exact_<name>``.
    """
    from lclmt_jax import certify, margins

    del settings  # none
    bounds = context.restored.sound_bounds
    epsilons = context.config.evaluation.epsilons
    scalars = {'clean_accuracy': float(context.correct.mean()),
               'lipschitz_sound': bounds.lipschitz,
               'body_lipschitz_sound': bounds.body_lipschitz}
    curves, per_example = {}, {'label': context.labels, 'correct': context.correct.astype(int)}
    predictions = np.argmax(context.logits64, axis=1)
    predicted = certify.finite_rows(context.logits64) & certify.finite_rows(context.images)
    float32 = context.arithmetic == 'float32'
    table = [Column('clean accuracy', 'clean_accuracy'), Column('sound L', 'lipschitz_sound')]
    for name in margins.CERTIFICATES:
        radii = context.radii(name)
        exact = context.radii(name, 'exact')
        only = context.radii(name, labels=predictions)
        tag = name if float32 else f'exact_{name}'
        reported = [(f'certified_{tag}', radii, context.correct),
                    (f'certified_only_{tag}', only, predicted)]
        if float32:
            reported.append((f'certified_exact_{name}', exact, context.correct))
        for key, values, correct in reported:
            accuracies = certify.certified_accuracy(values, correct, epsilons)
            scalars.update({f'{key}@{eps:g}': float(accuracy)
                            for eps, accuracy in zip(epsilons, accuracies, strict=True)})
        if float32:
            lost = (exact - radii)[exact > 0] / exact[exact > 0]
            scalars[f'rounding_loss_{name}'] = float(np.median(lost)) if lost.size else 0.0
        curves[f'certified_{tag}'] = Curve(
            lambda grid, radii=radii: certify.certified_accuracy(radii, context.correct, grid),
            'lower', f'certified, {name} (lower bound)' if float32 else
            f'certified, {name}, exact arithmetic')
        table.append(Column(f'certified ({name})' if float32 else
                            f'certified ({name}, exact arithmetic)', f'certified_{tag}@{{eps}}'))
        per_example[f'radius_{tag}'] = radii
        per_example[f'radius_only_{tag}'] = only
    return Result(scalars, curves, per_example, max_radius=float(np.max(epsilons)),
                  table=tuple(table))
