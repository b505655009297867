"""A variant's summary: recalibration fitted per fold on calibration rows, repeats as mean ± sd, paired DeLong."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from breastfusion.config import EvaluationConfig
from breastfusion.evaluation.clinical_utility import Recalibrator
from breastfusion.evaluation.delong import delong_test
from breastfusion.evaluation.metrics import brier_score, expected_calibration_error, youden_threshold
from breastfusion.evaluation.summary import (
    CohortMismatchError,
    paired_delong,
    repeat_metrics,
    score_subjects,
    summarise_scores,
    summarise_variant,
)

from .fake_predictions import fake_predictions


@pytest.fixture(scope="module")
def overconfident():
    """Probabilities far too extreme and shifted (logit * 3 + 1.5), the same way in calibration and test rows."""
    return fake_predictions(n_subjects=300, variants={"v": 1.0}, scale=3.0, shift=1.5, seed=5)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_recalibration_improves_miscalibrated_scores(overconfident, method):
    test, calibration = overconfident
    out = summarise_variant(test, calibration, n_boot=200, seed=0, evaluation=EvaluationConfig(recalibration=method))
    raw = summarise_variant(test, calibration, n_boot=200, seed=0)
    r = out["recalibration"]
    assert r["method"] == method and r["fitted_on"] == "each fold's calibration subjects"
    assert r["brier_before"] == pytest.approx(raw["brier"]) and r["ece_before"] == pytest.approx(raw["ece"])
    assert r["brier_after"] == pytest.approx(out["brier"]) and r["ece_after"] == pytest.approx(out["ece"])
    assert out["brier"] < raw["brier"] - 0.02 and out["ece"] < raw["ece"] / 2
    assert raw["recalibration"]["brier_after"] is None


def test_platt_undoes_an_affine_distortion_of_the_logits():
    """Platt is affine in the logit: distorting every logit the same way changes nothing after it."""
    a = score_subjects(*fake_predictions(n_subjects=200, variants={"v": 1.0}, scale=3.0, shift=1.5, seed=5),
                       EvaluationConfig(recalibration="platt"))
    b = score_subjects(*fake_predictions(n_subjects=200, variants={"v": 1.0}, scale=0.5, shift=-1.0, seed=5),
                       EvaluationConfig(recalibration="platt"))
    assert not np.allclose(a["prob_before_recalibration"], b["prob_before_recalibration"])
    np.testing.assert_allclose(a["prob"], b["prob"], atol=1e-3)  # lbfgs tolerance


def test_recalibration_is_fitted_on_each_folds_calibration_scores(overconfident):
    test, calibration = overconfident
    scored = score_subjects(test, calibration, EvaluationConfig(recalibration="platt"))
    for fold in range(3):
        cal = calibration[calibration["fold"] == fold]
        mapping = Recalibrator("platt").fit(cal["prob"].to_numpy(), cal["y"].to_numpy())
        rows = scored[scored["fold"] == fold]
        np.testing.assert_allclose(rows["prob"], mapping.predict(rows["prob_before_recalibration"].to_numpy()))
        # thresholds are chosen on the calibration scores mapped the same way
        expected = youden_threshold(cal["y"], mapping.predict(cal["prob"].to_numpy()))
        assert rows["youden_threshold"].unique() == pytest.approx([expected])
    # test labels play no part
    flipped = score_subjects(test.assign(y=1 - test["y"]), calibration, EvaluationConfig(recalibration="platt"))
    np.testing.assert_array_equal(scored["prob"], flipped["prob"])


def test_target_sensitivity_and_alpha_come_from_the_config(overconfident):
    test, calibration = overconfident
    strict = summarise_variant(test, calibration, n_boot=200, seed=0,
                               evaluation=EvaluationConfig(target_sensitivity=0.99, conformal_alpha=0.05))
    loose = summarise_variant(test, calibration, n_boot=200, seed=0,
                              evaluation=EvaluationConfig(target_sensitivity=0.80, conformal_alpha=0.30))
    assert strict["biopsies_avoided"]["target_sensitivity"] == 0.99 and strict["conformal"]["alpha"] == 0.05
    assert strict["biopsies_avoided"]["biopsies_avoided"] < loose["biopsies_avoided"]["biopsies_avoided"]
    assert strict["conformal"]["mean_size"] > loose["conformal"]["mean_size"]


def test_repeats_are_reported_as_mean_sd_and_intervals_use_repeat_zero():
    test, calibration = fake_predictions(n_subjects=150, repeats=3, variants={"v": 1.0}, seed=7)
    out = summarise_variant(test, calibration, n_boot=200, seed=0)
    per_repeat = [roc_auc_score(g.groupby("subject_id")["y"].max(), g.groupby("subject_id")["prob"].mean())
                  for _, g in test.groupby("repeat")]
    assert len(set(np.round(per_repeat, 6))) == 3  # the repeats differ
    auc = out["repeats"]["metrics"]["auc"]
    assert out["repeats"]["n_repeats"] == 3
    assert auc["per_repeat"] == pytest.approx(per_repeat)
    assert auc["mean"] == pytest.approx(np.mean(per_repeat)) and auc["sd"] == pytest.approx(np.std(per_repeat, ddof=1))
    assert out["auc"] == pytest.approx(per_repeat[0])
    for name in ("balanced_accuracy", "sensitivity", "specificity", "brier", "ece"):
        assert len(out["repeats"]["metrics"][name]["per_repeat"]) == 3
    # repeat 0 alone, without a repeat column, gives the same headline numbers and no spread
    only = summarise_variant(test[test["repeat"] == 0].drop(columns="repeat"),
                             calibration[calibration["repeat"] == 0].drop(columns="repeat"), n_boot=200, seed=0)
    assert only["repeats"] is None
    for key in ("auc", "auc_ci", "brier", "ece", "threshold_metrics", "conformal", "biopsies_avoided"):
        assert only[key] == out[key], key


def test_repeat_metrics_match_their_definitions(overconfident):
    test, calibration = overconfident
    scored = score_subjects(test, calibration)
    m = repeat_metrics(scored)
    assert m["auc"] == pytest.approx(roc_auc_score(scored["y"], scored["prob"]))
    assert m["brier"] == pytest.approx(brier_score(scored["y"], scored["prob"]))
    assert m["ece"] == pytest.approx(expected_calibration_error(scored["y"], scored["prob"]))
    called = scored["prob"] >= scored["youden_threshold"]
    sens = called[scored["y"] == 1].mean()
    spec = (~called[scored["y"] == 0]).mean()
    assert m["sensitivity"] == pytest.approx(sens) and m["balanced_accuracy"] == pytest.approx((sens + spec) / 2)


def test_summary_holds_the_figure_data(overconfident):
    test, calibration = overconfident
    out = summarise_scores(score_subjects(test, calibration), n_boot=200, seed=0)
    curve = out["decision_curve"]
    assert len(curve["threshold"]) == len(curve["net_benefit_model"]) == len(curve["net_benefit_treat_all"])
    assert sum(row["n"] for row in out["calibration_curve"]) == 300
    assert len(out["fold_auc"]) == 3


def test_paired_delong_on_common_subjects_and_label_mismatch():
    test, calibration = fake_predictions(n_subjects=120, seed=2)
    a = score_subjects(test[test["variant"] == "weak"], calibration[calibration["variant"] == "weak"])
    b = score_subjects(test[test["variant"] == "strong"], calibration[calibration["variant"] == "strong"])
    out = paired_delong(a, b.iloc[10:])
    assert out["n_subjects"] == 110 and out["n_only_a"] == 10 and out["n_only_b"] == 0
    kept = a.set_index("subject_id").loc[b["subject_id"].iloc[10:]]
    expected = delong_test(kept["y"].to_numpy(), kept["prob"].to_numpy(), b["prob"].iloc[10:].to_numpy())
    assert out["p"] == pytest.approx(expected.p_value) and out["z"] == pytest.approx(expected.z)
    relabelled = b.assign(y=np.where(b["subject_id"] == b["subject_id"].iloc[3], 1 - b["y"], b["y"]))
    with pytest.raises(CohortMismatchError, match=f"label 1 common subjects differently.*{b['subject_id'].iloc[3]}"):
        paired_delong(a, relabelled)
    with pytest.raises(CohortMismatchError, match="no subject in common"):
        paired_delong(a, b.assign(subject_id="X" + b["subject_id"]))
