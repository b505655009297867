"""Nested selection among whole recipes, and nested selection on a cohort with another pooled into training."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from breastfusion.config import load_config
from breastfusion.data.manifest import load_cohort
from breastfusion.data.pooling import TRAINING_ONLY_COLUMN, pool_cohorts
from breastfusion.evaluation.splits import subject_folds, training_only
from breastfusion.evaluation.summary import score_subjects
from breastfusion.experiment.crossval import cross_validate, seeded_folds
from breastfusion.experiment.nested import Recipe, nested_recipe_selection, nested_selection, recipe_inner_cv

from ..conftest import TINY_MODEL, marker_cohort


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """(own cohort, the same with a second cohort pooled into training)."""
    own = load_cohort(marker_cohort(tmp_path_factory.mktemp("own"), 45, seed=3, rng_seed=3))
    other = load_cohort(marker_cohort(tmp_path_factory.mktemp("other"), 24, seed=8, rng_seed=8))
    return own, pool_cohorts(own, {"site2": other})


def _config(pooled: bool, **cv):
    return load_config(None, name="recipes", variants={"ultrasound": ["ultrasound"], "clinical": ["clinical"]},
                       model=TINY_MODEL, training={"epochs": 4, "batch_size": 16}, cache=False,
                       cv={"n_splits": 3, "bootstrap": 100, "seed": 2,
                           "training_only_column": TRAINING_ONLY_COLUMN if pooled else None, **cv})


@pytest.fixture(scope="module")
def recipes(cohorts):
    own, pooled = cohorts
    # the weak recipe first: a tie would go to it
    return {"images_alone": Recipe(own, _config(False), "ultrasound"),
            "marker_pooled": Recipe(pooled, _config(True), "clinical")}


@pytest.fixture(scope="module")
def selection(recipes, tmp_path_factory):
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    return nested_recipe_selection(recipes, inner_folds=2, checkpoint_dir=checkpoints), checkpoints


def test_pooled_nested_selection_keeps_training_only_lesions_out_of_every_test_fold(cohorts):
    own, pooled = cohorts
    config = _config(True)
    result = nested_selection(pooled, config, ["ultrasound", "clinical"], inner_folds=2)
    lesions = pooled.lesions
    extra = set(np.flatnonzero(training_only(pooled.manifest, lesions, TRAINING_ONLY_COLUMN)))
    assert len(extra) == 24
    own_outer = subject_folds(own.lesions, n_splits=3, seed=2)
    for fold, (_, own_test) in zip(result.folds, own_outer, strict=True):
        # the outer test folds are the own cohort's alone, the pooled lesions train in every fold
        assert list(lesions.iloc[fold.test_idx]["subject_id"]) == list(own.lesions.iloc[own_test]["subject_id"])
        assert extra <= set(fold.train_idx)
        for fit, held in fold.inner:
            assert extra <= set(fit) and not extra & set(held)
            assert set(fit) | set(held) == set(fold.train_idx)
    assert result.summary["selected"]["n_subjects"] == 45  # every figure on the own cohort
    assert [f.chosen for f in result.folds] == ["clinical"] * 3


def test_the_better_recipe_is_chosen_on_inner_folds_and_scored_on_its_own_outer_predictions(recipes, selection):
    result, _ = selection
    assert result.candidates == ["images_alone", "marker_pooled"]
    for fold in result.folds:
        assert fold.chosen == "marker_pooled"
        assert fold.inner_auc["marker_pooled"] > fold.inner_auc["images_alone"] + 0.2
    pooled = recipes["marker_pooled"].prepared()
    cv = cross_validate(pooled.cohort, pooled.config, folds=seeded_folds(pooled.cohort, pooled.config, 2))
    oof = score_subjects(cv.predictions, cv.calibration, pooled.config.evaluation).set_index("subject_id")["prob"]
    got = result.selected.set_index("subject_id")["prob"]
    assert len(got) == 45 and set(got.index) == set(recipes["images_alone"].cohort.lesions["subject_id"])
    np.testing.assert_allclose(got.sort_index(), oof.loc[got.index].sort_index(), atol=1e-6)
    summary = result.summary
    assert summary["selected"]["auc"] == pytest.approx(roc_auc_score(result.selected["y"], result.selected["prob"]))
    assert summary["naive"]["variant"] == "marker_pooled"
    assert [f["chosen"] for f in summary["folds"]] == ["marker_pooled"] * 3


def test_inner_runs_are_kept_and_read_back_and_given_outer_predictions_are_used(recipes, selection):
    result, checkpoints = selection
    for name in recipes:
        for k in range(3):
            assert list((checkpoints / name / f"outer{k}").glob("networks/*/fold1.safetensors")), (name, k)
    # a prefilled inner run is the one the selection read: the same inner AUC from its checkpoints
    own_config = recipes["images_alone"].prepared().config
    cv, tests = recipe_inner_cv(recipes["images_alone"], 1, 2, checkpoint_dir=checkpoints / "images_alone" / "outer1")
    assert len(tests) == 2 and not tests[0] & tests[1]
    preds = score_subjects(cv.predictions, cv.calibration, own_config.evaluation)
    assert roc_auc_score(preds["y"], preds["prob"]) == pytest.approx(result.folds[1].inner_auc["images_alone"],
                                                                     abs=1e-6)
    # outer predictions given (e.g. a costlier ensemble of the same recipe) are what the chosen folds report
    own = recipes["images_alone"]
    outer_cv = cross_validate(own.cohort, own.prepared().config, folds=seeded_folds(own.cohort, own.config, 2))
    flipped = outer_cv.predictions.assign(prob=1 - outer_cv.predictions["prob"])
    swapped = {"images_alone": Recipe(own.cohort, own.config, "ultrasound", flipped, outer_cv.calibration),
               "marker_pooled": recipes["marker_pooled"]}
    again = nested_recipe_selection(swapped, inner_folds=2, checkpoint_dir=checkpoints)
    assert [f.inner_auc for f in again.folds] == [f.inner_auc for f in result.folds]  # the same inner runs
    assert again.summary["outer_auc"]["images_alone"] == pytest.approx(
        1 - result.summary["outer_auc"]["images_alone"], abs=1e-6)


def test_recipes_that_test_other_subjects_or_bad_settings_are_refused(cohorts, recipes):
    own, _ = cohorts
    other_folds = {"a": recipes["images_alone"], "b": Recipe(own, _config(False, seed=5), "clinical")}
    with pytest.raises(ValueError, match="recipe 'b' tests other subjects in its outer folds than 'a'"):
        nested_recipe_selection(other_folds, inner_folds=2)
    with pytest.raises(ValueError, match="variant 'fused' is not in config 'recipes'"):
        nested_recipe_selection({"a": Recipe(own, _config(False), "fused")})
    with pytest.raises(ValueError, match="inner_folds should be an integer >= 2, got 1"):
        nested_recipe_selection(recipes, inner_folds=1)
    with pytest.raises(ValueError, match="no recipe to choose among"):
        nested_recipe_selection({})
    with pytest.raises(ValueError, match="outer fold 3 does not exist; cv.n_splits is 3"):
        recipe_inner_cv(recipes["images_alone"], 3, 2)
