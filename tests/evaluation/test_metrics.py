"""Threshold and score metrics agree with scikit-learn; bootstrap CIs are deterministic and stratified;
thresholds are chosen from training data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from breastfusion.evaluation.metrics import (
    SCORE_METRICS,
    THRESHOLD_METRICS,
    MetricInputError,
    SingleClassError,
    auc_with_ci,
    bootstrap_ci,
    bootstrap_cis,
    brier_score,
    expected_calibration_error,
    sensitivity_threshold,
    subject_level,
    threshold_metrics,
    youden_threshold,
)
from tests.evaluation.asah import MARKERS, OUTCOME


def _cohort(n=300, seed=0, shift=1.0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    p = 1 / (1 + np.exp(-rng.normal(shift * y - 0.5 * shift, 1.0)))
    return y, p


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.7])
def test_threshold_metrics_agree_with_sklearn(seed, threshold):
    y, p = _cohort(seed=seed)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    m = threshold_metrics(y, p, threshold)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["ppv"] == pytest.approx(tp / (tp + fp))
    assert m["npv"] == pytest.approx(tn / (tn + fn))


def test_undefined_ratio_is_nan_not_zero():
    m = threshold_metrics([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], 0.9)
    assert np.isnan(m["ppv"]) and m["sensitivity"] == 0.0 and m["specificity"] == 1.0


def test_brier_and_ece():
    y, p = _cohort(seed=3)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p))
    # ECE from scikit-learn's calibration_curve on the same equal-width bins.
    true, pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], p, side="right"), minlength=10)
    counts = counts[counts > 0]
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(np.sum(counts / len(y) * np.abs(true - pred)))
    # A perfectly calibrated step predictor has ECE 0; constant p = prevalence too.
    assert expected_calibration_error([0, 1, 0, 1], [0.5] * 4) == 0.0
    assert expected_calibration_error([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0]) == 0.0


def test_bootstrap_auc_is_deterministic_and_brackets_estimate():
    y, p = _cohort(seed=4)
    a = bootstrap_ci(y, p, "auc", n_boot=500, seed=11)
    b = bootstrap_ci(y, p, "auc", n_boot=500, seed=11)
    c = bootstrap_ci(y, p, "auc", n_boot=500, seed=12)
    assert a == b and a != c
    assert a.estimate == pytest.approx(roc_auc_score(y, p))
    assert a.low < a.estimate < a.high


def test_bootstrap_vectorised_kernels_equal_per_replicate_callables():
    y, p = _cohort(n=120, seed=5)
    named = bootstrap_cis(y, p, ("auc", "brier", "ece", "f1", "sensitivity"), threshold=0.5, n_boot=200, seed=3)

    def auc(yb, pb):
        return roc_auc_score(yb, pb)

    def brier(yb, pb):
        return brier_score_loss(yb, pb)

    def f1(yb, pb):
        return f1_score(yb, (pb >= 0.5).astype(int))

    def ece(yb, pb):
        return expected_calibration_error(yb, pb)

    slow = bootstrap_cis(y, p, (auc, brier, f1, ece), n_boot=200, seed=3)
    for name in ("auc", "brier", "f1", "ece"):
        assert named[name][:3] == pytest.approx(slow[name][:3], rel=1e-12)


def test_bootstrap_is_stratified_and_chunking_does_not_change_numbers():
    y, p = _cohort(n=80, seed=6)
    seen = []

    def count_pos(yb, pb):
        seen.append(int(yb.sum()))
        return float(yb.mean())

    bootstrap_ci(y, p, count_pos, n_boot=100, seed=0)
    assert set(seen) == {int(y.sum())}
    whole = bootstrap_cis(y, p, ("auc", "ece"), n_boot=300, seed=2)
    chunked = bootstrap_cis(y, p, ("auc", "ece"), n_boot=300, seed=2, max_cells=1000)
    assert whole == chunked


def test_auc_with_ci_keeps_its_contract():
    y, p = _cohort(seed=8)
    auc, (low, high) = auc_with_ci(y, p, n_boot=300, seed=0)
    assert auc == pytest.approx(roc_auc_score(y, p)) and low < auc < high
    assert auc_with_ci(y, p, n_boot=300, seed=0) == (auc, (low, high))
    with pytest.raises(ValueError, match="both classes"):
        auc_with_ci(np.zeros(5), np.arange(5.0))


def test_subject_level_aggregates():
    frame = pd.DataFrame({"subject_id": ["a", "a", "b"], "y": [0, 1, 0], "prob": [0.2, 0.6, 0.1]})
    out = subject_level(frame)
    assert out["y"].tolist() == [1, 0] and out["prob"].tolist() == pytest.approx([0.4, 0.1])


def test_youden_threshold_matches_proc_best_point():
    # pROC: coords(roc(aSAH$outcome, aSAH$s100b), "best") -> threshold 0.205,
    # specificity 0.8055556, sensitivity 0.6341463 (Youden, midpoint thresholds).
    s100b = MARKERS["s100b"]
    t = youden_threshold(OUTCOME, s100b)
    assert t == pytest.approx(0.205)
    pred = s100b >= t
    assert pred[OUTCOME == 1].mean() == pytest.approx(0.6341463414634146)
    assert (~pred[OUTCOME == 0]).mean() == pytest.approx(0.8055555555555556)


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 0.98, 1.0])
def test_sensitivity_threshold_is_most_specific_cut_reaching_target(target):
    y, p = _cohort(n=400, seed=9)
    t = sensitivity_threshold(y, p, target=target)
    m = threshold_metrics(y, p, t)
    assert m["sensitivity"] >= target
    # Any higher cut through the next positive loses the target.
    higher = np.sort(p[(y == 1) & (p >= t)])
    if higher.size > 1:
        assert threshold_metrics(y, p, higher[1])["sensitivity"] < target


def test_threshold_from_training_applies_to_test():
    y_tr, p_tr = _cohort(n=500, seed=10)
    y_te, p_te = _cohort(n=500, seed=11)
    t = sensitivity_threshold(y_tr, p_tr, target=0.9)
    assert threshold_metrics(y_te, p_te, t)["sensitivity"] == pytest.approx(0.9, abs=0.06)


BAD_METRIC_CALLS = [
    (lambda: threshold_metrics([1, 1, 1], [0.2, 0.4, 0.9], 0.5), SingleClassError, "both classes"),
    (lambda: threshold_metrics([0, 1, 1], [0.2, 0.4], 0.5), MetricInputError, "length mismatch"),
    (lambda: threshold_metrics([0, 1], [0.2, np.nan], 0.5), MetricInputError, "NaN or infinite"),
    (lambda: threshold_metrics([0, 1], [0.2, 0.4], 1.5), MetricInputError, r"threshold should be .* got 1.5"),
    (lambda: threshold_metrics([0, 1], [0.2, 0.4], -0.1), MetricInputError, r"threshold should be .* got -0.1"),
    (lambda: threshold_metrics([0, 1], [0.2, 1.4], 0.5), MetricInputError, r"probabilities in \[0, 1\]"),
    (lambda: threshold_metrics([[0, 1]], [0.2, 0.4], 0.5), MetricInputError, "1-D array of 0/1"),
    (lambda: brier_score([0, 1], [0.2]), MetricInputError, "length mismatch"),
    (lambda: expected_calibration_error([0, 1], [0.2, 0.3], n_bins=0), MetricInputError, "n_bins"),
    (lambda: bootstrap_ci([0, 1] * 5, [0.3] * 10, "sensitivity"), MetricInputError, "needs a threshold"),
    (lambda: bootstrap_ci([0, 1] * 5, [0.3] * 10, "auroc"), MetricInputError, "unknown metric 'auroc'"),
    (lambda: bootstrap_ci([0, 1] * 5, [0.3] * 10, n_boot=10), MetricInputError, "n_boot"),
    (lambda: bootstrap_cis([0, 1] * 5, [0.3] * 10, (lambda y, p: 0.0, lambda y, p: 1.0)), MetricInputError,
     "distinct names"),
    (lambda: bootstrap_ci([0, 1] * 5, [0.3] * 10, level=95), MetricInputError, r"level should be in \(0, 1\)"),
    (lambda: bootstrap_ci([1] * 10, [0.3] * 10), SingleClassError, "both classes"),
    (lambda: youden_threshold([0, 0], [0.1, 0.2]), SingleClassError, "both classes"),
    (lambda: sensitivity_threshold([0, 1], [0.1, 0.2], target=0), MetricInputError, r"target should be in \(0, 1\]"),
    (lambda: sensitivity_threshold([0, 1], [0.1, np.inf]), MetricInputError, "NaN or infinite"),
]


@pytest.mark.parametrize("call, error, match", BAD_METRIC_CALLS)
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_registered_metric_names_all_bootstrap():
    y, p = _cohort(n=60, seed=12)
    out = bootstrap_cis(y, p, SCORE_METRICS + THRESHOLD_METRICS, threshold=0.5, n_boot=100)
    assert set(out) == set(SCORE_METRICS + THRESHOLD_METRICS)
    assert all(ci.low <= ci.high for ci in out.values())
