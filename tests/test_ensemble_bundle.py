"""Ensemble bundles: `export` of a `breastfusion ensemble` folder, loaded and applied like any bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from breastfusion import export_bundle, load_bundle
from breastfusion.bundle import BundleError
from breastfusion.cli.main import app
from breastfusion.data.manifest import load_cohort
from breastfusion.ensemble_bundle import EnsembleBundle
from breastfusion.evaluation.summary import score_subjects
from breastfusion.experiment.run_ensemble import average_logits, ensemble_runs

from .conftest import TINY_MODEL

_IDS = {"subject_id": str, "lesion_id": str}


@pytest.fixture(scope="module")
def ensemble_dir(small_cohort_dir, tmp_path_factory) -> Path:
    """The ensemble of two 2-fold ultrasound runs that differ in their training seed and attention module."""
    from breastfusion.config import load_config
    from breastfusion.experiment.run import run_experiment

    root = tmp_path_factory.mktemp("ensemble")
    runs = []
    for name, seed, attention in (("eca", 0, "eca"), ("plain", 5, "none")):
        model = {**TINY_MODEL, "ultrasound": {**TINY_MODEL["ultrasound"], "attention": attention}}
        config = load_config(None, name=name, manifest=small_cohort_dir, variants={"ultrasound": ["ultrasound"]},
                             model=model, training={"epochs": 1, "batch_size": 16, "seed": seed},
                             cv={"n_splits": 2, "bootstrap": 100})
        run_experiment(load_cohort(small_cohort_dir), config, root / name)
        runs.append(root / name)
    ensemble_runs(runs, root / "both")
    return root / "both"


@pytest.fixture(scope="module")
def bundle_dir(ensemble_dir, tmp_path_factory) -> Path:
    return export_bundle(ensemble_dir, tmp_path_factory.mktemp("bundles") / "both")


def test_the_bundle_reproduces_the_ensembles_out_of_fold_scores(bundle_dir, ensemble_dir, small_cohort_dir):
    bundle = load_bundle(bundle_dir)
    assert isinstance(bundle, EnsembleBundle) and len(bundle.members) == 2 and bundle.n_folds == 2
    lesions = bundle.predict_lesions(small_cohort_dir)
    # fold k's score is the mean logit of the members' fold k networks ...
    members = [m.predict_lesions(small_cohort_dir).set_index(["fold", "lesion_id"])["prob"] for m in bundle.members]
    key = pd.MultiIndex.from_frame(lesions[["fold", "lesion_id"]])
    np.testing.assert_allclose(lesions["prob"], average_logits(np.column_stack([m.loc[key] for m in members])))
    # ... so the fold that held a lesion out gives the ensemble run's out-of-fold score
    saved = pd.read_csv(ensemble_dir / "predictions.csv", dtype=_IDS)
    held = lesions.merge(saved[["lesion_id", "fold", "prob"]], on=["lesion_id", "fold"], suffixes=("", "_run"))
    assert len(held) == len(saved) == 60
    np.testing.assert_allclose(held["prob"], held["prob_run"], atol=1e-5)
    # and its subject scores and thresholds come from the ensemble's own fold calibration
    calibration = pd.read_csv(ensemble_dir / "calibration_predictions.csv", dtype=_IDS)
    run_scores = score_subjects(saved, calibration, bundle.config.evaluation)
    ours = bundle.score(lesions).merge(run_scores, on=["fold", "subject_id"], suffixes=("", "_run"))
    assert len(ours) == 60
    for column in ("prob", "youden_threshold", "rule_out_threshold"):
        np.testing.assert_allclose(ours[column], ours[f"{column}_run"], atol=1e-5)
    subjects = bundle.predict(small_cohort_dir)
    folds = bundle.score(lesions).pivot(index="subject_id", columns="fold")
    np.testing.assert_allclose(subjects["prob"], folds["prob"].mean(axis=1).to_numpy())
    results = json.loads((ensemble_dir / "results.json").read_text())
    assert bundle.meta["metrics"]["auc"] == pytest.approx(results["variants"]["ultrasound"]["auc"])


def test_predict_cli_applies_an_ensemble_bundle(bundle_dir, small_cohort_dir, tmp_path):
    out = tmp_path / "pred.csv"
    result = CliRunner().invoke(app, ["predict", str(bundle_dir), str(small_cohort_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = pd.read_csv(out, dtype=_IDS)
    expected = load_bundle(bundle_dir).predict(small_cohort_dir)
    np.testing.assert_allclose(written["prob"], expected["prob"], rtol=1e-6)
    assert "AUC" in result.output


def test_an_ensemble_bundle_is_served_without_explanations(bundle_dir, small_cohort_dir):
    from fastapi.testclient import TestClient

    from breastfusion.app.server import create_app

    bundle = load_bundle(bundle_dir)
    client = TestClient(create_app(bundle))
    model = client.get("/api/model").json()
    assert model["variant"] == "ultrasound" and model["n_folds"] == 2
    assert model["metrics"]["auc"] == pytest.approx(bundle.meta["metrics"]["auc"])
    manifest = pd.read_csv(small_cohort_dir / "manifest.csv", dtype=str)
    row = manifest[manifest["modality"] == "ultrasound"].iloc[0]
    upload = (small_cohort_dir / row["path"]).read_bytes()
    reply = client.post("/api/predict", files=[("ultrasound", ("a.png", upload, "image/png"))])
    assert reply.status_code == 200, reply.text
    body = reply.json()
    # the page's answer is the ensemble's own prediction for that image, with no explanation attempted
    one = manifest[manifest["path"] == row["path"]].assign(subject_id="case", lesion_id="case")
    expected = bundle.predict(one, root=small_cohort_dir).iloc[0]
    assert body["prob"] == pytest.approx(float(expected["prob"]), abs=1e-6) and body["call"] == expected["call"]
    assert "contributions" not in body and "explain_error" not in body


def _copy(bundle_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "copy"))


def test_a_changed_calibration_or_a_swapped_member_is_refused(bundle_dir, tmp_path):
    copy = _copy(bundle_dir, tmp_path)
    (copy / "calibration.csv").write_text((copy / "calibration.csv").read_text().replace("training", "trainin"))
    with pytest.raises(BundleError, match=r"calibration.csv: sha256 differs"):
        load_bundle(copy)
    shutil.rmtree(copy)
    copy = _copy(bundle_dir, tmp_path)
    shutil.rmtree(copy / "member1")
    shutil.copytree(copy / "member0", copy / "member1")
    with pytest.raises(BundleError, match=r"member1/bundle.json: sha256 differs"):
        load_bundle(copy)


def test_an_unlisted_file_or_a_damaged_member_is_refused(bundle_dir, tmp_path):
    copy = _copy(bundle_dir, tmp_path)
    (copy / "extra.pkl").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"extra.pkl: not part of this ensemble bundle"):
        load_bundle(copy)
    (copy / "extra.pkl").unlink()
    (copy / "member0" / "fold1.safetensors").write_bytes(b"damaged")
    with pytest.raises(BundleError, match=r"member0/fold1.safetensors: sha256"):
        load_bundle(copy)


def test_export_refuses_an_unknown_variant_and_a_full_folder(ensemble_dir, tmp_path):
    with pytest.raises(BundleError, match=r"unknown variant 'fused'; this ensemble has \['ultrasound'\]"):
        export_bundle(ensemble_dir, tmp_path / "b1", variant="fused")
    (tmp_path / "b2").mkdir()
    (tmp_path / "b2" / "x").write_text("x")
    with pytest.raises(BundleError, match="not an empty folder"):
        export_bundle(ensemble_dir, tmp_path / "b2")
