"""External validation: a model's figures on a new labelled cohort, and whether that cohort looks like training.

A threshold chosen on one site's data often does not transfer to another's: an
ultrasound classifier whose threshold was tuned on one dataset reached a
sensitivity of only 0.51-0.58 on another. Two checks say when a new cohort is
unlike the training cohort, so its figures at the training threshold should be
read with care:

* :func:`prevalence_shift`: the share of malignant subjects differs
  (Fisher's exact test on the 2×2 table, two-sided). Shifted when
  ``p < PREVALENCE_ALPHA`` (the difference is unlikely to be sampling noise)
  **or** the absolute difference exceeds ``PREVALENCE_TOLERANCE`` (large
  enough to move PPV and NPV at the threshold even where a small cohort cannot
  make it significant);
* :func:`score_shift`: the model's subject probabilities on the new cohort
  are distributed differently from its scores on training subjects
  (two-sample Kolmogorov-Smirnov test, two-sided). Shifted when
  ``p < SCORE_ALPHA``. This check needs no labels.

:func:`decision_metrics` gives sensitivity, specificity, PPV and NPV of given
calls (the threshold was fixed on the training cohort; nothing is tuned here).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import fisher_exact, ks_2samp
from sklearn.metrics import confusion_matrix

from breastfusion.evaluation.input_checks import MetricInputError

__all__ = ["PREVALENCE_ALPHA", "PREVALENCE_TOLERANCE", "SCORE_ALPHA", "TRANSFER_ADVICE", "decision_metrics",
           "prevalence_shift", "score_shift"]

#: Fisher's exact test p below which the new cohort's prevalence counts as different from training's.
PREVALENCE_ALPHA = 0.01
#: Absolute difference in prevalence above which it counts as different whatever the p-value.
PREVALENCE_TOLERANCE = 0.15
#: Kolmogorov-Smirnov p below which the new cohort's score distribution counts as different from training's.
SCORE_ALPHA = 0.01
#: What a shift means for the bundle's threshold (said in every shift warning).
TRANSFER_ADVICE = "sensitivity at the bundle threshold may not transfer; consider recalibrating on local data"


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def decision_metrics(y, called) -> dict[str, float | int]:
    """Sensitivity, specificity, PPV, NPV and accuracy of 0/1 calls against 0/1 labels.

    Unlike :func:`breastfusion.evaluation.metrics.threshold_metrics` one class may be absent (an external
    cohort of cancers only still has a sensitivity); a ratio with an empty denominator is NaN.

    Args:
        y: 0/1 labels, shape (n,).
        called: 0/1 calls (1 = called malignant), shape (n,).

    Returns:
        ``sensitivity``, ``specificity``, ``ppv``, ``npv``, ``accuracy`` (floats, NaN where undefined) and
        the counts ``tp``, ``fp``, ``tn``, ``fn``.

    Raises:
        MetricInputError: empty input, a length mismatch, or values other than 0/1.
    """
    y, called = np.asarray(y), np.asarray(called)
    if y.shape != called.shape or y.ndim != 1 or not y.size:
        raise MetricInputError(f"y and called should be non-empty 1-d arrays of one length, got shapes "
                               f"{y.shape} and {called.shape}")
    for name, values in (("y", y), ("called", called)):
        if not np.isin(values, (0, 1)).all():
            raise MetricInputError(f"{name} should hold 0/1 only, got values {sorted(set(values.tolist()))[:5]}")
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y.astype(int), called.astype(int), labels=[0, 1]).ravel())
    return {"sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp), "ppv": _ratio(tp, tp + fp),
            "npv": _ratio(tn, tn + fn), "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def prevalence_shift(n_new: int, malignant_new: int, n_training: int, malignant_training: int, *,
                     alpha: float = PREVALENCE_ALPHA, tolerance: float = PREVALENCE_TOLERANCE) -> dict[str, Any]:
    """Whether a new cohort's prevalence differs from the training cohort's (see the module docstring).

    Args:
        n_new, malignant_new: subjects and malignant subjects of the new cohort.
        n_training, malignant_training: the same for the training cohort.
        alpha: significance level of Fisher's exact test.
        tolerance: absolute difference in prevalence that counts as a shift on its own.

    Returns:
        ``prevalence_new``, ``prevalence_training``, ``difference`` (new − training), ``p_value``, ``test``,
        ``alpha``, ``tolerance``, ``shifted`` (bool).

    Raises:
        MetricInputError: a count below 0, more malignant than subjects, or no subjects.
    """
    for name, n, k in (("new", n_new, malignant_new), ("training", n_training, malignant_training)):
        if not (0 <= k <= n and n > 0):
            raise MetricInputError(f"{name} cohort: {k} malignant of {n} subjects; expected 0 <= malignant <= "
                                   "subjects and at least one subject")
    table = [[malignant_new, n_new - malignant_new], [malignant_training, n_training - malignant_training]]
    p_value = float(fisher_exact(table, alternative="two-sided").pvalue)
    new, training = malignant_new / n_new, malignant_training / n_training
    return {"prevalence_new": new, "prevalence_training": training, "difference": new - training,
            "p_value": p_value, "test": "Fisher's exact test, two-sided", "alpha": alpha, "tolerance": tolerance,
            "shifted": bool(p_value < alpha or abs(new - training) > tolerance)}


def score_shift(new, training, *, alpha: float = SCORE_ALPHA) -> dict[str, Any]:
    """Whether the new cohort's subject probabilities are distributed like the training subjects' scores.

    Args:
        new: the new cohort's subject probabilities, shape (n,).
        training: the training subjects' scores, on the same scale, shape (m,).
        alpha: significance level of the two-sample Kolmogorov-Smirnov test.

    Returns:
        ``ks_statistic``, ``p_value``, ``median_new``, ``median_training``, ``n_new``, ``n_training``,
        ``test``, ``alpha``, ``shifted`` (bool).

    Raises:
        MetricInputError: an empty or non-finite sample.
    """
    new, training = np.asarray(new, dtype=float), np.asarray(training, dtype=float)
    for name, values in (("new", new), ("training", training)):
        if not values.size or not np.isfinite(values).all():
            raise MetricInputError(f"{name} scores should be a non-empty array of finite numbers, got "
                                   f"{values.size} value(s), {int((~np.isfinite(values)).sum())} non-finite")
    result = ks_2samp(new, training, alternative="two-sided")
    return {"ks_statistic": float(result.statistic), "p_value": float(result.pvalue),
            "median_new": float(np.median(new)), "median_training": float(np.median(training)),
            "n_new": int(new.size), "n_training": int(training.size),
            "test": "two-sample Kolmogorov-Smirnov, two-sided", "alpha": alpha,
            "shifted": bool(result.pvalue < alpha)}
