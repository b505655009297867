"""The demo end to end through the CLI (shrunk to seconds), the run folder, and determinism."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

import breastfusion.experiment.demo as demo_module
from breastfusion.cli.main import app

from .conftest import TINY_MODEL, TINY_TRAINING

RUN_FILES = ("config.yaml", "predictions.csv", "results.json", "roc.png", "report.html")


@pytest.fixture
def tiny_quick(monkeypatch):
    """Make `--quick` tiny: 60 subjects, test_resnet at 32 px, 2 epochs, 3 folds."""
    monkeypatch.setitem(demo_module.QUICK, "synthetic", {"n_subjects": 60, "image_px": 64})
    monkeypatch.setitem(demo_module.QUICK, "training", TINY_TRAINING)
    monkeypatch.setitem(demo_module.QUICK, "cv", {"bootstrap": 200, "n_splits": 3})
    monkeypatch.setitem(demo_module.QUICK, "model", TINY_MODEL)


def test_demo_quick_writes_every_artefact(tmp_path, tiny_quick):
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path / "run"), "--seed", "1"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    results = json.loads((run / "results.json").read_text())
    assert 0.5 < results["oracle_auc"] <= 1.0
    assert set(results["variants"]) == {"mammography", "ultrasound", "clinical", "fused"}
    for v in results["variants"].values():
        assert v["auc_ci"][0] <= v["auc"] <= v["auc_ci"][1]
        assert v["n_subjects"] == 60
    predictions = pd.read_csv(run / "predictions.csv")
    assert set(predictions.columns) >= {"variant", "fold", "subject_id", "lesion_id", "y", "prob"}
    assert len(predictions) == 4 * 60 and predictions["prob"].between(0, 1).all()
    # each subject predicted once per variant, by the fold that held it out
    assert (predictions.groupby("variant")["subject_id"].nunique() == 60).all()
    assert (run / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (run / "report.html").read_text()
    assert "data:image/png;base64," in html and "oracle" in html and "fused" in html
    assert "oracle" in result.output and "fused" in result.output


def test_same_seed_same_numbers(tmp_path, tiny_quick):
    a = demo_module.run_demo(tmp_path / "a", quick=True, seed=2)
    b = demo_module.run_demo(tmp_path / "b", quick=True, seed=2)
    pa = pd.read_csv(tmp_path / "a" / "predictions.csv")
    pb = pd.read_csv(tmp_path / "b" / "predictions.csv")
    pd.testing.assert_frame_equal(pa, pb)
    assert a["variants"] == b["variants"]


def test_cli_version_and_help():
    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).output.strip().startswith("breastfusion ")
    for verb in ("demo", "run", "synthetic"):
        result = runner.invoke(app, [verb, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_run_without_manifest_fails_clearly(tmp_path):
    result = CliRunner().invoke(app, ["run", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no manifest" in result.output


def test_run_on_a_manifest_lacking_a_modality_fails_up_front(tmp_path, small_cohort_dir):
    manifest = pd.read_csv(small_cohort_dir / "manifest.csv")
    us_only = small_cohort_dir / "us_only.csv"
    manifest[manifest["modality"] == "ultrasound"].to_csv(us_only, index=False)
    config = tmp_path / "c.yaml"
    config.write_text("variants: {mammo: [mammography], us: [ultrasound]}\n")
    result = CliRunner().invoke(app, ["run", str(config), "--manifest", str(us_only), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "variant 'mammo' needs ['mammography']" in result.output
    assert not (tmp_path / "r" / "predictions.csv").exists()  # failed before any training


def test_manifest_paths_outside_the_folder_are_refused(tmp_path, small_cohort_dir):
    manifest = pd.read_csv(small_cohort_dir / "manifest.csv")
    manifest["path"] = [str(small_cohort_dir / p) for p in manifest["path"]]
    (tmp_path / "elsewhere").mkdir()
    manifest.to_csv(tmp_path / "elsewhere" / "manifest.csv", index=False)
    result = CliRunner().invoke(app, ["run", "--manifest", str(tmp_path / "elsewhere"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "outside the manifest folder" in result.output
