"""``cw_l2``: the Carlini-Wagner L2 attack on the test points (all, or a fixed stratified sample
of them), and the soundness self-check."""

from __future__ import annotations

import ml_collections
import numpy as np

from lclmt_jax.evaluators import Column, Context, Curve, Result, evaluator, stratified_sample
from lclmt_jax.fields import Field, Flag, Integer, Number


# 0.1, not CW's 0.01 (tuned for 10,000 steps): with 100 steps, pixels at exactly 0 or 1 (most of
# an MNIST digit) sit deep in tanh saturation and barely move at 0.01 -- the attack then fails on
# ~65% of a robust model's points; at 0.1 it succeeds on all of them.
@evaluator('cw_l2', steps=Field(100, Integer()), binary_search_steps=Field(5, Integer()),
           confidence=Field(0.0, Number()), learning_rate=Field(0.1, Number(strict=True)),
           initial_const=Field(1.0, Number(strict=True)), batch_size=Field(10000, Integer()),
           abort_early=Field(True, Flag()), max_examples=Field(None, Integer(optional=True)))
def cw_l2(context: Context, settings: ml_collections.ConfigDict) -> Result:
    """Accuracy under attack at ``config.evaluation.epsilons``, and broken certificates.

    The attack's minimal norms are upper bounds on each point's distance to a misclassified
    point, so the curve is an empirical upper bound on robust accuracy; a certified point whose
    norm is below its certified radius is a broken certificate (``config.certificate``'s count is
    the self-check, ``broken_certificates_both`` counts both certificates).
    Settings (``config.evals.cw_l2``): ``steps`` Adam iterations per binary-search step (100, the
    paper's), ``binary_search_steps``, ``confidence``, ``learning_rate``, ``initial_const``,
    ``batch_size`` (points attacked at once), ``abort_early`` (an example's round ends once
    its objective stops falling: ``attacks.CWConfig``) and ``max_examples`` (None: all), which
    attacks only that many points, a fixed stratified sample (``evaluators.stratified_sample``):
    the attack costs ~500 gradient steps per point, hours for a CNN on the full test set on a CPU,
    while the certificates still cover every point. On a sample, the certified accuracy of the
    same points (``certified_sample_<certificate>@eps``) stands beside the attack's, so a row
    compares figures over one set of points, and every label says which points it covers.
    """
    from lclmt_jax import attacks, certify, margins, progress

    config = context.config
    settings = dict(settings)
    limit = settings.pop('max_examples')
    total = len(context.labels)
    chosen = stratified_sample(context.labels, total if limit is None else int(limit))
    count, everything = len(chosen), len(chosen) == total
    radii = {name: context.radii(name)[chosen] for name in margins.CERTIFICATES}
    settled = attacks.settled_norms(np.max(list(radii.values()), axis=0),
                                    min(config.evaluation.epsilons))
    norms = attacks.cw_l2_min_norms(context.restored.logits, context.images[chosen],
                                    context.labels[chosen], attacks.CWConfig(**settings),
                                    settled, progress.Progress('CW-L2 attack', 'point-rounds'))
    correct = context.correct[chosen]
    broken = {name: len(certify.broken_certificates(radii[name], correct, norms))
              for name in margins.CERTIFICATES}
    epsilons = config.evaluation.epsilons
    accuracies = attacks.accuracy_under_attack(norms, epsilons)
    scalars = {f'attack@{eps:g}': float(accuracy)
               for eps, accuracy in zip(epsilons, accuracies, strict=True)}
    scalars.update({
        'attack_success_rate': float(np.isfinite(norms[correct]).mean()) if correct.any() else 0.,
        'median_attack_norm': float(np.median(norms[correct])) if correct.any() else 0.,
        'broken_certificates': broken[config.certificate],
        'broken_certificates_both': sum(broken.values()),
        'attack_examples': count,
    })
    points = 'all points' if everything else f'a stratified sample of {count} of {total} points'
    curves = {'attack': Curve(lambda grid: attacks.accuracy_under_attack(norms, grid), 'upper',
                              f'CW-L2 attack, {points} (upper bound)')}
    table = [Column('CW-L2 attack' if everything else f'CW-L2 attack ({count} points)',
                    'attack@{eps}')]
    if not everything:
        sample_radii = context.radii(config.certificate)[chosen]
        certified = certify.certified_accuracy(sample_radii, correct, epsilons)
        scalars.update({f'certified_sample_{config.certificate}@{eps:g}': float(accuracy)
                        for eps, accuracy in zip(epsilons, certified, strict=True)})
        table.append(Column(f'certified ({config.certificate}), same {count} points',
                            f'certified_sample_{config.certificate}@{{eps}}'))
        curves['certified_sample'] = Curve(
            lambda grid: certify.certified_accuracy(sample_radii, correct, grid), 'lower',
            f'certified, {config.certificate}, {points} (lower bound)')
    table += [Column('broken certificates (must be 0)', 'broken_certificates'),
              Column('points attacked', 'attack_examples')]
    finite = norms[np.isfinite(norms)]
    per_point = np.full(total, np.nan)  # NaN: not attacked (max_examples)
    per_point[chosen] = norms
    return Result(scalars, curves, {'attack_norm': per_point},
                  max_radius=1.1 * float(finite.max()) if finite.size else 0.0, table=tuple(table))
