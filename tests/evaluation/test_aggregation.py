"""Subject aggregation: mean and max do what they say; the learned aggregator sees calibration labels only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from breastfusion.config import EvaluationConfig
from breastfusion.evaluation.aggregation import LearnedAggregator, aggregate, subject_features
from breastfusion.evaluation.metrics import MetricInputError, SingleClassError
from breastfusion.evaluation.summary import score_subjects

from .fake_predictions import fake_predictions

LESIONS = pd.DataFrame({"subject_id": ["a", "a", "a", "b", "c", "c"], "y": [0, 1, 0, 0, 1, 1],
                        "prob": [0.1, 0.9, 0.2, 0.3, 0.6, 0.4]})


@pytest.mark.parametrize("method, expected", [("mean", [0.4, 0.3, 0.5]), ("max", [0.9, 0.3, 0.6])])
def test_mean_and_max_aggregate_each_subject_once(method, expected):
    subjects, calibration = aggregate(LESIONS, method)
    assert calibration is None
    assert subjects["subject_id"].tolist() == ["a", "b", "c"]
    assert subjects["prob"].to_numpy() == pytest.approx(expected)
    assert subjects["y"].tolist() == [1, 0, 1]  # malignant when any lesion is


def test_subject_features():
    features = subject_features(LESIONS).set_index("subject_id")
    assert features.loc["a", "n_lesions"] == 3 and features.loc["b", "n_lesions"] == 1
    assert features.loc["a", "max_logit"] == pytest.approx(np.log(0.9 / 0.1))
    assert features.loc["c", "mean_logit"] == pytest.approx((np.log(0.6 / 0.4) + np.log(0.4 / 0.6)) / 2)


def _multi_lesion_fold(seed: int):
    """Subjects with 1-4 lesions; a malignant subject has one suspicious lesion among benign-looking ones."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(160):
        y = int(i % 2)
        n = int(rng.integers(1, 5))
        logits = rng.normal(-1.0, 0.7, n)
        if y:
            logits[0] += 2.5
        rows += [{"subject_id": f"S{i}", "y": y, "prob": float(1 / (1 + np.exp(-z)))} for z in logits]
    return pd.DataFrame(rows)


def test_learned_aggregator_beats_mean_when_one_lesion_decides():
    from sklearn.metrics import roc_auc_score

    calibration, test = _multi_lesion_fold(1), _multi_lesion_fold(2)
    learned, _ = aggregate(test, "learned", calibration=calibration)
    mean, _ = aggregate(test, "mean")
    assert roc_auc_score(learned["y"], learned["prob"]) > roc_auc_score(mean["y"], mean["prob"]) + 0.02
    # it learned that the maximum matters more than the mean
    coefficients = LearnedAggregator().fit(calibration).model_[-1].coef_[0]
    assert coefficients[1] > coefficients[0]


def test_learned_aggregator_never_sees_test_labels():
    calibration, test = _multi_lesion_fold(1), _multi_lesion_fold(2)
    flipped = test.assign(y=1 - test["y"])
    a, _ = aggregate(test, "learned", calibration=calibration)
    b, _ = aggregate(flipped, "learned", calibration=calibration)
    np.testing.assert_array_equal(a["prob"], b["prob"])
    # ... while the calibration labels do change it
    c, _ = aggregate(test, "learned", calibration=calibration.assign(y=1 - calibration["y"]))
    assert not np.allclose(a["prob"], c["prob"])


def test_score_subjects_learned_is_fitted_per_fold_on_calibration_rows_only():
    test, calibration = fake_predictions(n_subjects=90, lesions=2, variants={"v": 1.0}, seed=3)
    evaluation = EvaluationConfig(aggregation="learned")
    scored = score_subjects(test, calibration, evaluation)
    assert len(scored) == 90 and scored["subject_id"].is_unique  # subject level
    shuffled = test.assign(y=test["y"].sample(frac=1, random_state=0).to_numpy())
    again = score_subjects(shuffled, calibration, evaluation)
    np.testing.assert_array_equal(scored["prob"], again["prob"])
    # each fold's model comes from its own calibration rows: changing fold 0's changes fold 0 only
    changed = calibration.copy()
    rows = changed["fold"] == 0
    changed.loc[rows, "prob"] = 1 - changed.loc[rows, "prob"]
    other = score_subjects(test, changed, evaluation)
    fold0 = scored["fold"] == 0
    assert not np.allclose(scored.loc[fold0, "prob"], other.loc[fold0, "prob"])
    np.testing.assert_array_equal(scored.loc[~fold0, "prob"], other.loc[~fold0, "prob"])


@pytest.mark.parametrize("call, error, match", [
    (lambda: aggregate(LESIONS, "median"), MetricInputError, "aggregation should be one of"),
    (lambda: aggregate(LESIONS, "learned"), MetricInputError, "fitted on the fold's calibration"),
    (lambda: aggregate(LESIONS, "learned", calibration=LESIONS.assign(y=0)), SingleClassError,
     "benign and malignant calibration subjects"),
    (lambda: aggregate(LESIONS.drop(columns="prob"), "mean"), MetricInputError, "missing \\['prob'\\]"),
])
def test_aggregation_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
