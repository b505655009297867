"""Nested model selection: the choice is made on each outer fold's training subjects only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from breastfusion.config import load_config, select_variants
from breastfusion.data.manifest import load_cohort
from breastfusion.evaluation.splits import subject_folds
from breastfusion.evaluation.summary import score_subjects
from breastfusion.experiment.crossval import cross_validate
from breastfusion.experiment.nested import nested_selection, restrict_cohort
from breastfusion.experiment.run_folder import RunLayout

from ..conftest import TINY_MODEL, marker_cohort

CANDIDATES = ["ultrasound", "clinical"]  # the worse one first: a tie would go to it


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    """60 synthetic subjects in pairs sharing a ``cv_group``; the ultrasound images are shuffled across lesions
    (uninformative) and the clinical table holds one marker close to the label (informative)."""
    return marker_cohort(tmp_path_factory.mktemp("nested"), 60, seed=7, rng_seed=0, pair_groups=True)


@pytest.fixture(scope="module")
def config():
    return load_config(None, name="nested", variants={c: [c] for c in CANDIDATES}, model=TINY_MODEL,
                       training={"epochs": 6, "batch_size": 16}, cv={"n_splits": 3, "bootstrap": 200, "seed": 4},
                       cache=False)


@pytest.fixture(scope="module")
def selection(cohort_dir, config):
    return nested_selection(load_cohort(cohort_dir), config, CANDIDATES, inner_folds=3)


def test_inner_folds_hold_only_the_outer_training_subjects_grouped_like_the_outer_folds(cohort_dir, config,
                                                                                       selection):
    lesions = load_cohort(cohort_dir).lesions
    outer = subject_folds(lesions, n_splits=3, seed=4)
    assert len(selection.folds) == 3
    assert lesions["group"].nunique() < lesions["subject_id"].nunique()  # groups span subjects: the check bites
    for fold, (train_idx, test_idx) in zip(selection.folds, outer):
        np.testing.assert_array_equal(fold.train_idx, train_idx)
        np.testing.assert_array_equal(fold.test_idx, test_idx)
        test_subjects = set(lesions.iloc[test_idx]["subject_id"])
        test_groups = set(lesions.iloc[test_idx]["group"])
        assert len(fold.inner) == 3
        inner_tests = np.sort(np.concatenate([b for _, b in fold.inner]))
        np.testing.assert_array_equal(inner_tests, np.sort(train_idx))  # the inner folds split the training set
        for fit, held in fold.inner:
            for positions in (fit, held):
                assert set(positions) <= set(train_idx)
                assert not set(lesions.iloc[positions]["subject_id"]) & test_subjects
                assert not set(lesions.iloc[positions]["group"]) & test_groups
            assert not set(lesions.iloc[fit]["group"]) & set(lesions.iloc[held]["group"])


def test_selected_predictions_are_the_chosen_candidates_outer_predictions(cohort_dir, config, selection):
    cohort = load_cohort(cohort_dir)
    cv = cross_validate(cohort, config, folds=subject_folds(cohort.lesions, n_splits=3, seed=4))
    for fold in selection.folds:
        chosen = fold.chosen
        expected = score_subjects(cv.predictions[cv.predictions["variant"] == chosen],
                                  cv.calibration[cv.calibration["variant"] == chosen], config.evaluation)
        expected = expected[expected["fold"] == fold.fold].reset_index(drop=True)
        got = selection.selected[selection.selected["fold"] == fold.fold].reset_index(drop=True)
        assert (got["variant"] == chosen).all()
        assert list(got["subject_id"]) == list(expected["subject_id"])
        np.testing.assert_allclose(got["prob"], expected["prob"], atol=1e-6)
    summary = selection.summary
    assert summary["selected"]["auc"] == pytest.approx(roc_auc_score(selection.selected["y"],
                                                                      selection.selected["prob"]))
    assert summary["selected"]["n_subjects"] == 60


def test_the_clearly_better_candidate_is_chosen_and_the_optimism_is_reported(selection):
    for fold in selection.folds:
        assert fold.chosen == "clinical"
        assert fold.inner_auc["clinical"] > fold.inner_auc["ultrasound"] + 0.2
    summary = selection.summary
    assert summary["naive"]["variant"] == "clinical"
    assert summary["optimism"] == pytest.approx(summary["naive"]["auc"] - summary["selected"]["auc"])
    assert [f["chosen"] for f in summary["folds"]] == ["clinical"] * 3
    json.dumps(summary)  # JSON-ready


def test_outer_predictions_of_other_folds_are_refused(cohort_dir, config, selection):
    cohort = load_cohort(cohort_dir)
    other = cross_validate(cohort, select_variants(config, ["clinical"]),  # another seed: other outer folds
                           folds=subject_folds(cohort.lesions, n_splits=3, seed=99))
    with pytest.raises(ValueError, match=r"fold 0 holds .* not made on this cohort"):
        nested_selection(cohort, config, ["clinical"], outer_predictions=other.predictions,
                         outer_calibration=other.calibration)
    with pytest.raises(ValueError, match=r"candidate\(s\) \['nope'\] are not variants"):
        nested_selection(cohort, config, ["nope"])
    with pytest.raises(ValueError, match=r"inner_folds should be an integer >= 2, got 1"):
        nested_selection(cohort, config, inner_folds=1)


def test_restrict_cohort_keeps_the_subjects_rows_and_their_clinical_data(cohort_dir):
    cohort = load_cohort(cohort_dir)
    sub = restrict_cohort(cohort, ["S03", "S10"])
    assert set(sub.manifest["subject_id"]) == set(sub.clinical["subject_id"]) == {"S03", "S10"}
    assert len(sub.manifest) == int(cohort.manifest["subject_id"].isin(["S03", "S10"]).sum())
    assert list(sub.lesions["group"]) == list(cohort.lesions.set_index("subject_id").loc[["S03", "S10"], "group"])
    with pytest.raises(ValueError, match=r"subject id\(s\) \['S99'\] are not in the manifest"):
        restrict_cohort(cohort, ["S03", "S99"])


def test_ablate_cli_writes_the_nested_selection(cohort_dir, tmp_path):
    from breastfusion.cli.main import app

    config = tmp_path / "nested.yaml"
    config.write_text("name: nested\ncache: false\nvariants:\n  ultrasound: [ultrasound]\n  clinical: [clinical]\n"
                      "model:\n  ultrasound: {encoder: test_resnet, encoder_kwargs: {}, image_size: 32}\n"
                      "training: {epochs: 6, batch_size: 16}\ncv: {n_splits: 3, bootstrap: 200, seed: 4}\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["ablate", str(config), "--manifest", str(cohort_dir), "--out", str(out),
                                      "--nested-inner-folds", "2"])
    assert result.exit_code == 0, result.output
    summary = json.loads(RunLayout(out).nested_selection.read_text())
    assert summary["inner_folds"] == 2 and summary["candidates"] == ["ultrasound", "clinical"]
    results = json.loads((out / "results.json").read_text())
    for name, auc in summary["outer_auc"].items():  # the outer folds are the run's own
        assert auc == pytest.approx(results["variants"][name]["auc"])
    text = " ".join(result.output.split())
    assert "nested selection" in text.lower() and f"{summary['selected']['auc']:.3f}" in text


