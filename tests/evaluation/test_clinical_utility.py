"""Specificity at high sensitivity, decision curves, biopsies avoided, calibration data, recalibration."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score

from breastfusion.evaluation.clinical_utility import (
    Recalibrator,
    biopsies_avoided,
    biopsies_avoided_at_sensitivity,
    calibration_curve_data,
    cross_fit_recalibration,
    decision_curve,
    specificity_at_sensitivity,
)
from breastfusion.evaluation.metrics import (
    MetricInputError,
    SingleClassError,
    brier_score,
    expected_calibration_error,
    threshold_metrics,
)


def _cohort(n=600, seed=0, slope=1.0, shift=0.0):
    """Binormal cohort; with slope=1, shift=0 the probability is exactly calibrated."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    x = rng.normal(1.5 * y, 1.0)
    true_logit = np.log(0.4 / 0.6) + 1.5 * x - 1.125  # exact posterior of this binormal model
    return y, 1 / (1 + np.exp(-(slope * true_logit + shift)))


def test_specificity_at_sensitivity_brute_force():
    y, p = _cohort(n=300, seed=1)
    got = specificity_at_sensitivity(y, p, (0.9, 0.95, 0.98))
    for target, spec in got.items():
        best = max(threshold_metrics(y, p, t)["specificity"] for t in np.unique(p)
                   if threshold_metrics(y, p, t)["sensitivity"] >= target)
        assert spec == pytest.approx(best)
    assert got[0.9] >= got[0.95] >= got[0.98]


def test_decision_curve_formulas_and_limits():
    y, p = _cohort(seed=2)
    dc = decision_curve(y, p, [0.05, 0.2, 0.5])
    prev = y.mean()
    for row in dc.itertuples():
        pred = p >= row.threshold
        tp, fp = np.sum(pred & (y == 1)), np.sum(pred & (y == 0))
        odds = row.threshold / (1 - row.threshold)
        assert row.model == pytest.approx(tp / len(y) - fp / len(y) * odds)
        assert row.treat_all == pytest.approx(prev - (1 - prev) * odds)
        assert row.treat_none == 0.0
    # A calibrated informative model beats both defaults over a wide range.
    default = decision_curve(y, p)
    assert len(default) == 99
    mid = default[(default.threshold >= 0.1) & (default.threshold <= 0.6)]
    assert np.all(mid.model >= np.maximum(mid.treat_all, 0) - 1e-12)
    # treat-all equals a model that calls everybody positive.
    ones = decision_curve(y, np.ones_like(p), [0.1, 0.3])
    assert np.allclose(ones.model, ones.treat_all) and np.allclose(ones.interventions_avoided, 0)


def test_biopsies_avoided_counts():
    y = np.array([0, 0, 0, 1, 1, 0, 1, 0, 0, 0])
    p = np.array([0.01, 0.02, 0.5, 0.6, 0.03, 0.04, 0.9, 0.8, 0.05, 0.2])
    out = biopsies_avoided(y, p, 0.1)  # below 0.1: four benign, one malignant
    assert out["biopsies_avoided"] == pytest.approx(50.0)
    assert out["benign_biopsies_avoided"] == pytest.approx(40.0)
    assert out["cancers_missed"] == pytest.approx(10.0)
    assert out["sensitivity"] == pytest.approx(2 / 3)


def test_biopsies_avoided_uses_training_threshold():
    y_tr, p_tr = _cohort(n=2000, seed=3)
    y_te, p_te = _cohort(n=2000, seed=4)
    out = biopsies_avoided_at_sensitivity(y_tr, p_tr, y_te, p_te, target=0.98)
    assert out["target"] == 0.98
    assert out["sensitivity"] > 0.95 and out["benign_biopsies_avoided"] > 5
    # The threshold depends on the training data only.
    again = biopsies_avoided_at_sensitivity(y_tr, p_tr, y_te[::-1], p_te[::-1], target=0.98)
    assert again["threshold"] == out["threshold"]


def test_calibration_curve_matches_sklearn_and_has_wilson_bounds():
    y, p = _cohort(seed=5)
    data = calibration_curve_data(y, p, n_bins=8)
    true, pred = calibration_curve(y, p, n_bins=8, strategy="uniform")
    np.testing.assert_allclose(data.observed, true)
    np.testing.assert_allclose(data.mean_predicted, pred)
    assert data.n.sum() == len(y)
    assert np.all((data.observed_low <= data.observed) & (data.observed <= data.observed_high))


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_recalibration_fixes_miscalibration_on_new_data(method):
    # Overconfident model: logit stretched by 2.5 and shifted.
    y_tr, p_tr = _cohort(n=3000, seed=6, slope=2.5, shift=1.0)
    y_te, p_te = _cohort(n=3000, seed=7, slope=2.5, shift=1.0)
    cal = Recalibrator(method).fit(p_tr, y_tr)
    q = cal.predict(p_te)
    assert expected_calibration_error(y_te, q) < 0.5 * expected_calibration_error(y_te, p_te)
    assert brier_score(y_te, q) < brier_score(y_te, p_te)
    if method == "platt":  # monotone map: ranking and AUC unchanged
        assert roc_auc_score(y_te, q) == pytest.approx(roc_auc_score(y_te, p_te))
        assert cal.model_.coef_[0, 0] == pytest.approx(1 / 2.5, rel=0.15)


def test_cross_fit_recalibration_never_sees_own_fold():
    y, p = _cohort(n=900, seed=8, slope=2.0)
    folds = np.arange(len(y)) % 3
    out = cross_fit_recalibration(y, p, folds, method="platt")
    # Flipping the labels of fold 0 must not change fold 0's recalibrated values.
    y_flip = y.copy()
    y_flip[folds == 0] = 1 - y_flip[folds == 0]
    out_flip = cross_fit_recalibration(y_flip, p, folds, method="platt")
    np.testing.assert_allclose(out[folds == 0], out_flip[folds == 0])
    assert not np.allclose(out[folds == 1], out_flip[folds == 1])
    assert expected_calibration_error(y, out) < expected_calibration_error(y, p)


BAD = [
    (lambda: specificity_at_sensitivity([0, 1], [0.2, 0.3], (1.2,)), MetricInputError, "sensitivities"),
    (lambda: decision_curve([0, 1], [0.2, 0.3], [0.0, 0.5]), MetricInputError, r"thresholds should be .*\(0, 1\)"),
    (lambda: decision_curve([0, 1], [0.2, 1.3]), MetricInputError, "probabilities"),
    (lambda: biopsies_avoided([0, 1], [0.2, 0.3], 2.0), MetricInputError, "threshold should be"),
    (lambda: biopsies_avoided_at_sensitivity([0, 0], [0.1, 0.2], [0, 1], [0.1, 0.2]), SingleClassError,
     "both classes"),
    (lambda: calibration_curve_data([0, 1], [0.2, 0.3], n_bins=1.5), MetricInputError, "n_bins"),
    (lambda: Recalibrator("beta").fit([0.2, 0.3], [0, 1]), MetricInputError, "method should be"),
    (lambda: Recalibrator().fit([0.2, 0.3, 0.4], [0, 1]), MetricInputError, "length mismatch"),
    (lambda: Recalibrator().fit([0.2, 0.3], [0, 1]).predict([[0.2]]), MetricInputError, "1-D array"),
    (lambda: cross_fit_recalibration([0, 1, 0, 1], [0.2, 0.3, 0.4, 0.5], [0, 0, 0, 0]), MetricInputError,
     "at least 2 distinct"),
    (lambda: cross_fit_recalibration([0, 1, 0, 1], [0.2, 0.3, 0.4, 0.5], [0, 1]), MetricInputError,
     "one id per subject"),
]


@pytest.mark.parametrize("call, error, match", BAD)
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_predict_before_fit_raises():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        Recalibrator().predict([0.3])
