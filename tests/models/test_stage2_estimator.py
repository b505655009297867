"""Stage2Classifier: MPM-MU's stage 2 as a scikit-learn estimator (clone, params, grouped inner splits, skops)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import StratifiedGroupKFold

from breastfusion.config import load_config
from breastfusion.models.stage2 import Stage2Classifier, Stage2Ensemble, fit_learner, inner_splitter, make_learner

CFG = load_config(None, stage2={"n_estimators": 10, "inner_folds": 3, "meta_hidden": 4, "seed": 2}).stage2


def _data(n_subjects: int = 30, seed: int = 0):
    """Two lesions per subject, a feature signal, subjects paired into groups (near-duplicates)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(rng.integers(0, 2, n_subjects), 2)
    x = rng.normal(size=(2 * n_subjects, 4)) + y[:, None] * 0.8
    groups = np.repeat(np.arange(n_subjects) // 2, 2)
    return x, y, groups


def _same(a: list, b: list) -> bool:
    """Two lists of (train, held-out) index pairs are the same splits."""
    return len(a) == len(b) and all(np.array_equal(p, q) for s, t in zip(a, b) for p, q in zip(s, t))


class RecordingSplitter(StratifiedGroupKFold):
    """A StratifiedGroupKFold that records the groups it was given and the splits it made."""

    calls: list = []

    def split(self, X, y=None, groups=None):
        splits = list(super().split(X, y, groups))
        RecordingSplitter.calls.append((np.asarray(groups), splits))
        yield from splits


def test_clone_and_params_round_trip():
    est = Stage2Classifier("stacking", cv=StratifiedGroupKFold(3, shuffle=True, random_state=1), n_estimators=12,
                           meta_hidden=5, random_state=7)
    params = est.get_params(deep=False)
    assert {k: v for k, v in params.items() if k != "cv"} == {"learner": "stacking", "n_estimators": 12,
                                                              "meta_hidden": 5, "random_state": 7}
    copy = clone(est)
    assert copy is not est and copy.cv is not est.cv
    assert repr(copy.cv) == repr(est.cv)  # splitters have no get_params: clone deep-copies them
    assert {k: v for k, v in copy.get_params(deep=False).items() if k != "cv"} == {
        k: v for k, v in params.items() if k != "cv"}
    assert est.set_params(n_estimators=20, learner="logistic") is est
    assert est.get_params()["n_estimators"] == 20 and est.get_params()["learner"] == "logistic"
    assert Stage2Classifier(**est.get_params(deep=False)).get_params(deep=False) == est.get_params(deep=False)
    fitted = Stage2Classifier("logistic").fit(*_data()[:2])
    assert hasattr(fitted, "estimator_") and not hasattr(clone(fitted), "estimator_")  # clone is unfitted


def test_fit_hands_groups_to_the_splitter_and_no_group_straddles_an_inner_split():
    x, y, groups = _data()
    RecordingSplitter.calls = []
    est = Stage2Classifier.from_config(CFG, cv=RecordingSplitter(3, shuffle=True, random_state=0))
    est.fit(x, y, groups=groups)
    assert len(RecordingSplitter.calls) == 1
    given, splits = RecordingSplitter.calls[0]
    np.testing.assert_array_equal(given, groups)
    assert len(splits) == 3 and _same(est.splits_, splits) and _same(est.estimator_.cv, splits)
    for fit, held in splits:
        assert not set(groups[fit]) & set(groups[held])
    lonely = Stage2Classifier.from_config(CFG).fit(x, y)  # no groups: every row its own group
    assert any(set(np.arange(len(y))[fit] // 2) & set(np.arange(len(y))[held] // 2) for fit, held in lonely.splits_)


def test_predictions_equal_the_stacking_the_experiment_fitted_before():
    x, y, groups = _data()
    new = np.random.default_rng(5).normal(size=(9, 4))
    old = make_learner("stacking", CFG, y=y, groups=groups).fit(x, y)
    est = Stage2Classifier.from_config(CFG).fit(x, y, groups=groups)
    np.testing.assert_array_equal(est.predict_proba(new), old.predict_proba(new))
    explicit = Stage2Classifier.from_config(CFG, cv=inner_splitter(y, groups, CFG.inner_folds, CFG.seed))
    np.testing.assert_array_equal(explicit.fit(x, y, groups=groups).predict_proba(new), old.predict_proba(new))
    ensemble = Stage2Ensemble(CFG, x, y, groups)
    assert _same(ensemble.model("stacking").splits_, est.splits_)
    np.testing.assert_array_equal(ensemble.predict("stacking", new), old.predict_proba(new)[:, 1])
    logistic = Stage2Classifier.from_config(CFG, "logistic").fit(x, y, groups=groups)
    np.testing.assert_array_equal(logistic.predict_proba(new), fit_learner("logistic", CFG, x, y, groups)
                                  .predict_proba(new))
    assert set(est.predict(new)) <= {0, 1}


@pytest.mark.parametrize("params, fit_groups, pattern", [
    ({"learner": "xgboost"}, None, r"learner should be one of \['stacking', 'logistic', .*got 'xgboost'"),
    ({"cv": 1}, None, r"cv should be an int >= 2 or a splitter with split\(X, y, groups\), got 1"),
    ({"cv": "five"}, None, r"cv should be an int >= 2 .*got 'five'"),
    ({}, np.arange(3), r"groups has 3 entries; expected one per row of X \(60\)"),
], ids=["learner", "cv-int", "cv-type", "groups-length"])
def test_bad_parameters_are_named_at_fit(params, fit_groups, pattern):
    x, y, _ = _data()
    est = Stage2Classifier(**params)  # the constructor only stores
    with pytest.raises(ValueError, match=pattern):
        est.fit(x, y, groups=fit_groups)


def test_a_saved_stacking_estimator_loads_through_the_bundle_allowlist(tmp_path):
    """Bundles trust the class by name (without importing the models package); loading never unpickles and
    gives the same probabilities."""
    import skops.io
    from sklearn.base import BaseEstimator

    from breastfusion import bundle

    assert bundle._STAGE2_TYPE == f"{Stage2Classifier.__module__}.{Stage2Classifier.__qualname__}"
    x, y, groups = _data()
    est = Stage2Classifier.from_config(CFG, cv=StratifiedGroupKFold(3)).fit(x, y, groups=groups)
    data = skops.io.dumps(est)
    assert bundle._STAGE2_TYPE in skops.io.get_untrusted_types(data=data)
    loaded = bundle._load_skops(tmp_path / "fold0.stage2.skops", data, BaseEstimator, "stage-2 learner")
    assert isinstance(loaded, Stage2Classifier)
    np.testing.assert_array_equal(loaded.predict_proba(x[:7]), est.predict_proba(x[:7]))
    assert not bundle._allowed_type("breastfusion.models.stage2.Stage2Ensemble")  # that class only, by name


@pytest.mark.filterwarnings("ignore")  # the checks' tiny random data: convergence warnings
@pytest.mark.parametrize("learner", ["logistic", "svm", "random_forest", "extra_trees"])
def test_base_learners_pass_check_estimator(learner):
    """scikit-learn's own estimator checks. (The stacking passes them too, but takes 30 s, refitting four learners
    per inner fold on every check's data, and fails only the 1-feature check, on too few rows per inner fold.)"""
    from sklearn.utils.estimator_checks import check_estimator

    check_estimator(Stage2Classifier(learner, n_estimators=10))


def test_a_stacking_variant_bundle_holds_the_estimator_and_reproduces_the_run(small_cohort_dir, tmp_path):
    """End to end: the run saves each fold's Stage2Classifier, the bundle loads it through the allowlist, and the
    fold that held a lesion out gives the run's out-of-fold probability for it."""
    import pandas as pd

    from breastfusion import export_bundle, load_bundle
    from breastfusion.data.manifest import load_cohort
    from breastfusion.experiment.run import run_experiment

    from ..conftest import TINY_MODEL

    config = load_config(None, name="stack", manifest=small_cohort_dir,
                         variants={"stack": {"modalities": ["ultrasound"], "stage2": "stacking"}}, model=TINY_MODEL,
                         training={"epochs": 1, "batch_size": 16}, cv={"n_splits": 2, "bootstrap": 100},
                         stage2={"inner_folds": 2, "n_estimators": 10})
    run_experiment(load_cohort(small_cohort_dir), config, tmp_path / "run")
    bundle = load_bundle(export_bundle(tmp_path / "run", tmp_path / "bundle"))
    assert all(isinstance(learner, Stage2Classifier) for learner in bundle.stage2_learners)
    lesions = bundle.predict_lesions(small_cohort_dir)
    saved = pd.read_csv(tmp_path / "run" / "predictions.csv", dtype={"subject_id": str, "lesion_id": str})
    held = lesions.merge(saved[["lesion_id", "fold", "prob"]], on=["lesion_id", "fold"], suffixes=("", "_run"))
    assert len(held) == 60
    np.testing.assert_allclose(held["prob"], held["prob_run"], atol=1e-6)
