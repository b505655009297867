"""A pointwise bootstrap confidence band around a subject-level ROC curve."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from breastfusion.evaluation.input_checks import MetricInputError, check_labels_scores, check_probability

__all__ = ["roc_band"]


def _tpr_at(y: np.ndarray, p: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Sensitivity at each false-positive rate of ``grid`` (the ROC step function, upper envelope)."""
    fpr, tpr, _ = roc_curve(y, p)
    # at a vertical step fpr repeats: keep its highest sensitivity (the last one) so interp is well defined
    fpr_unique, last = np.unique(fpr[::-1], return_index=True)
    return np.interp(grid, fpr_unique, tpr[::-1][last])


def roc_band(y, p, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95, n_points: int = 101) -> dict[str, Any]:
    """Vertical-average ROC curve with a pointwise stratified-bootstrap band.

    Subjects are resampled within each class (as :func:`~breastfusion.evaluation.metrics.bootstrap_cis`),
    each replicate's sensitivity is read at a fixed grid of false-positive rates, and the band is the
    percentile interval at each grid point. It shows where along the curve the estimate is uncertain;
    it is not a simultaneous band.

    Args:
        y: 0/1 labels, shape (n,), one per subject.
        p: scores, shape (n,).
        n_boot: bootstrap replicates (>= 100).
        seed: seed of the resampling.
        level: confidence level in (0, 1).
        n_points: points of the false-positive-rate grid on [0, 1].

    Returns:
        ``fpr`` (the grid), ``tpr`` (the curve on all subjects), ``tpr_low``, ``tpr_high``,
        ``level``, ``n_boot``: lists of floats of length ``n_points`` and scalars.

    Raises:
        MetricInputError: bad input, ``n_boot < 100`` or ``n_points < 2``.
        SingleClassError: one class absent.
    """
    y, p = check_labels_scores(y, p, name="p")
    level = check_probability(level, name="level")
    if int(n_boot) != n_boot or n_boot < 100:
        raise MetricInputError(f"n_boot should be an integer >= 100, got {n_boot!r}")
    if int(n_points) != n_points or n_points < 2:
        raise MetricInputError(f"n_points should be an integer >= 2, got {n_points!r}")
    grid = np.linspace(0.0, 1.0, int(n_points))
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rng = np.random.default_rng(seed)
    reps = np.empty((int(n_boot), grid.size))
    for b in range(int(n_boot)):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        reps[b] = _tpr_at(y[idx], p[idx], grid)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha], axis=0)
    return {"fpr": grid.tolist(), "tpr": _tpr_at(y, p, grid).tolist(), "tpr_low": low.tolist(),
            "tpr_high": high.tolist(), "level": level, "n_boot": int(n_boot)}
