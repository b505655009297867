"""Clinical-utility statistics: specificity at high sensitivity, decision curves,
biopsies avoided, calibration curves and recalibration fitted on training data only.

Scores are predicted probabilities of malignancy, one per subject; a subject
is called positive (biopsy recommended) when ``p >= threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from scipy.special import logit
from scipy.stats import binomtest
from sklearn.base import BaseEstimator
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_curve
from sklearn.utils.validation import check_is_fitted

from breastfusion.evaluation.input_checks import (
    MetricInputError,
    check_labels_scores,
    check_probability,
    check_unit_interval,
)
from breastfusion.evaluation.metrics import bin_index, sensitivity_threshold, threshold_metrics

__all__ = [
    "specificity_at_sensitivity",
    "decision_curve",
    "biopsies_avoided",
    "biopsies_avoided_at_sensitivity",
    "calibration_curve_data",
    "Recalibrator",
    "cross_fit_recalibration",
]


def specificity_at_sensitivity(y, p, sensitivities: Sequence[float] = (0.90, 0.95, 0.98)) -> dict[float, float]:
    """Best specificity among cuts whose sensitivity reaches each target (read off the empirical ROC).

    This summarises the ROC curve of the data it is given; it chooses the cut
    on those same subjects, so it is not an operating point you can promise.
    For that, pick the threshold on training folds
    (:func:`breastfusion.evaluation.metrics.sensitivity_threshold`) and
    evaluate it on the test fold, as :func:`biopsies_avoided_at_sensitivity` does.

    Args:
        y: 0/1 labels, shape (n,).
        p: scores, shape (n,).
        sensitivities: targets in (0, 1].

    Returns:
        ``{target: specificity}``.

    Raises:
        MetricInputError: a target outside (0, 1], or bad input.
        SingleClassError: one class absent.
    """
    y, p = check_labels_scores(y, p, name="p")
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
    out = {}
    for target in sensitivities:
        t = check_probability(target, name="sensitivities", high_open=False)
        out[float(target)] = float(1.0 - fpr[tpr >= t - 1e-12].min())
    return out


def decision_curve(y, p, thresholds=None) -> pd.DataFrame:
    """Decision-curve analysis (Vickers & Elkin 2006): net benefit over threshold probabilities.

    At threshold probability ``pt`` a biopsy is recommended when ``p >= pt``;
    a false positive is weighted by the odds ``pt / (1 - pt)`` a clinician
    accepts: ``NB = TP/n - FP/n * pt/(1-pt)``. Treat-all has
    ``NB = prevalence - (1 - prevalence) * pt/(1-pt)``; treat-none has 0.
    ``interventions_avoided`` is the net reduction in biopsies per 100
    patients against treat-all at equal benefit,
    ``100 * (NB_model - NB_all) / (pt/(1-pt))``.

    Args:
        y: 0/1 labels, shape (n,).
        p: probabilities, shape (n,), in [0, 1].
        thresholds: threshold probabilities inside (0, 1), shape (t,); default 0.01..0.99 by 0.01.

    Returns:
        One row per threshold: ``threshold``, ``model``, ``treat_all``,
        ``treat_none``, ``interventions_avoided`` (per 100 patients).

    Raises:
        MetricInputError: a threshold outside (0, 1), or bad input.
        SingleClassError: one class absent.
    """
    y, p = check_labels_scores(y, p, name="p", probabilities=True)
    pt = check_unit_interval(np.round(np.arange(1, 100) / 100, 2) if thresholds is None else thresholds,
                             name="thresholds")
    n = y.size
    called = p[None, :] >= pt[:, None]  # (t, n)
    tp = (called & (y == 1)).sum(axis=1)
    fp = (called & (y == 0)).sum(axis=1)
    odds = pt / (1.0 - pt)
    prevalence = y.mean()
    model = tp / n - fp / n * odds
    treat_all = prevalence - (1.0 - prevalence) * odds
    return pd.DataFrame({"threshold": pt, "model": model, "treat_all": treat_all, "treat_none": 0.0,
                         "interventions_avoided": 100.0 * (model - treat_all) / odds})


def biopsies_avoided(y, p, threshold: float) -> dict[str, float]:
    """What a rule-out threshold would change if every patient would otherwise be biopsied.

    Patients with ``p < threshold`` skip biopsy.

    Args:
        y: 0/1 labels, shape (n,).
        p: probabilities, shape (n,), in [0, 1].
        threshold: rule-out threshold in [0, 1].

    Returns:
        Per 100 patients: ``biopsies_avoided`` (all patients below the
        threshold), ``benign_biopsies_avoided`` (benign among them),
        ``cancers_missed`` (malignant among them); and ``sensitivity``,
        ``specificity``, ``threshold``.

    Raises:
        MetricInputError, SingleClassError: as :func:`breastfusion.evaluation.metrics.threshold_metrics`.
    """
    m = threshold_metrics(y, p, threshold)
    n = m["tp"] + m["fp"] + m["tn"] + m["fn"]
    return {
        "biopsies_avoided": 100.0 * (m["tn"] + m["fn"]) / n,
        "benign_biopsies_avoided": 100.0 * m["tn"] / n,
        "cancers_missed": 100.0 * m["fn"] / n,
        "sensitivity": m["sensitivity"],
        "specificity": m["specificity"],
        "threshold": float(threshold),
    }


def biopsies_avoided_at_sensitivity(y_train, p_train, y_test, p_test, *, target: float = 0.98) -> dict[str, float]:
    """Biopsies avoided per 100 test patients at a threshold chosen on training data for sensitivity >= target.

    The threshold is the most specific cut with training sensitivity at least
    ``target`` (:func:`breastfusion.evaluation.metrics.sensitivity_threshold`);
    the test fold only evaluates it, so the test sensitivity can fall short of
    ``target`` and is reported. For a finite-sample guarantee see
    :func:`breastfusion.evaluation.conformal.rule_out_threshold`.

    Args:
        y_train, p_train: training-fold labels and probabilities, shape (n_train,).
        y_test, p_test: test-fold labels and probabilities, shape (n_test,).
        target: required training sensitivity in (0, 1].

    Returns:
        As :func:`biopsies_avoided`, plus ``target``.

    Raises:
        MetricInputError, SingleClassError: bad input on either side.
    """
    t = sensitivity_threshold(y_train, p_train, target=target)
    out = biopsies_avoided(y_test, p_test, float(np.clip(t, 0.0, 1.0)))
    out["target"] = float(target)
    return out


def calibration_curve_data(y, p, *, n_bins: int = 10, level: float = 0.95) -> pd.DataFrame:
    """Reliability-diagram data over equal-width bins, with Wilson intervals for the observed rate.

    Uses the binning of :func:`breastfusion.evaluation.metrics.expected_calibration_error`
    (and of scikit-learn's ``calibration_curve(strategy="uniform")``); empty
    bins are omitted.

    Args:
        y: 0/1 labels, shape (n,).
        p: probabilities, shape (n,), in [0, 1].
        n_bins: number of bins, at least 1.
        level: confidence level of the Wilson intervals.

    Returns:
        One row per non-empty bin: ``bin``, ``lower``, ``upper`` (bin edges),
        ``n``, ``mean_predicted``, ``observed`` (fraction malignant),
        ``observed_low``, ``observed_high``.

    Raises:
        MetricInputError: bad input, ``n_bins < 1`` or ``level`` outside (0, 1).
    """
    y, p = check_labels_scores(y, p, name="p", probabilities=True, need_both=False)
    if int(n_bins) != n_bins or n_bins < 1:
        raise MetricInputError(f"n_bins should be a positive integer, got {n_bins!r}")
    level = check_probability(level, name="level")
    b = bin_index(p, int(n_bins))
    rows = []
    for k in np.unique(b):
        mask = b == k
        n_k, pos_k = int(mask.sum()), int(y[mask].sum())
        ci = binomtest(pos_k, n_k).proportion_ci(confidence_level=level, method="wilson")
        rows.append({"bin": int(k), "lower": k / n_bins, "upper": (k + 1) / n_bins, "n": n_k,
                     "mean_predicted": float(p[mask].mean()), "observed": pos_k / n_k,
                     "observed_low": float(ci.low), "observed_high": float(ci.high)})
    return pd.DataFrame(rows)


class Recalibrator(BaseEstimator):
    """Map probabilities to recalibrated probabilities, fitted on training-fold data only.

    ``"platt"``: logistic regression on ``logit(p)`` (Platt 1999), two
    parameters, keeps the ranking, suits small samples. ``"isotonic"``:
    monotone step function (Zadrozny & Elkan 2002) via scikit-learn's
    ``IsotonicRegression``, flexible but needs more data and can create ties
    (so it can change the AUC slightly).

    Args:
        method: ``"platt"`` or ``"isotonic"``.
        eps: probabilities are clipped to ``[eps, 1 - eps]`` before the logit.

    Attributes:
        model_: the fitted scikit-learn regressor.
    """

    def __init__(self, method: Literal["platt", "isotonic"] = "platt", eps: float = 1e-6):
        self.method = method
        self.eps = eps

    def _features(self, p: np.ndarray) -> np.ndarray:
        return logit(np.clip(p, self.eps, 1.0 - self.eps))[:, None]

    def fit(self, p, y) -> Recalibrator:
        """Fit on training probabilities ``p`` (shape (n,)) and labels ``y`` (shape (n,)).

        Raises:
            MetricInputError: unknown ``method`` or bad input.
            SingleClassError: one class absent.
        """
        if self.method not in ("platt", "isotonic"):
            raise MetricInputError(f"method should be 'platt' or 'isotonic', got {self.method!r}")
        y, p = check_labels_scores(y, p, name="p", probabilities=True)
        if self.method == "platt":
            self.model_ = LogisticRegression(C=1e6).fit(self._features(p), y)
        else:
            self.model_ = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        return self

    def predict(self, p) -> np.ndarray:
        """Recalibrated probabilities, shape (n,), for probabilities ``p`` of shape (n,)."""
        check_is_fitted(self, "model_")
        p = np.asarray(p, dtype=float)
        if p.ndim != 1 or not np.all(np.isfinite(p)) or p.size and (p.min() < 0 or p.max() > 1):
            raise MetricInputError(f"p should be a 1-D array of probabilities in [0, 1], got shape {p.shape}")
        if self.method == "platt":
            return self.model_.predict_proba(self._features(p))[:, 1]
        return self.model_.predict(p)


def cross_fit_recalibration(y, p, folds, *, method: Literal["platt", "isotonic"] = "platt") -> np.ndarray:
    """Recalibrate out-of-fold probabilities, each fold with a map fitted on the other folds.

    For fold k the recalibrator is fitted on the out-of-fold predictions and
    labels of every other fold and applied to fold k, so no subject's label
    touches its own recalibrated probability.

    Args:
        y: 0/1 labels, shape (n,).
        p: out-of-fold probabilities, shape (n,).
        folds: fold id of each subject, shape (n,); at least two folds.
        method: ``"platt"`` or ``"isotonic"``.

    Returns:
        Recalibrated probabilities, shape (n,).

    Raises:
        MetricInputError: fewer than two folds, length mismatch, bad input.
        SingleClassError: the other folds of some fold hold one class only.
    """
    y, p = check_labels_scores(y, p, name="p", probabilities=True)
    folds = np.asarray(folds)
    if folds.shape != y.shape:
        raise MetricInputError(f"folds should have shape {y.shape} (one id per subject), got {folds.shape}")
    ids = np.unique(folds)
    if ids.size < 2:
        raise MetricInputError(f"folds should hold at least 2 distinct ids, got {ids.tolist()}")
    out = np.empty_like(p)
    for k in ids:
        test = folds == k
        out[test] = Recalibrator(method).fit(p[~test], y[~test]).predict(p[test])
    return out
