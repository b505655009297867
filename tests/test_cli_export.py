"""`breastfusion export --allow-outside-root`: a run whose cohort manifest points at images outside its folder.

Export reads the run's cohort only to refit clinical preprocessors a run did not save (runs made before they were
saved per fold), so that is the one case the flag is for."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from breastfusion import load_bundle
from breastfusion.cli.main import app
from breastfusion.data.manifest import load_cohort

from .conftest import TINY_MODEL


@pytest.fixture(scope="module")
def outside_run(small_cohort_dir, tmp_path_factory) -> Path:
    """A 2-fold ultrasound + clinical run on a cohort folder whose manifest lists the images of another folder."""
    from breastfusion.config import load_config
    from breastfusion.experiment.run import run_experiment

    folder = tmp_path_factory.mktemp("outside-cohort")
    manifest = pd.read_csv(small_cohort_dir / "manifest.csv", dtype=str, keep_default_na=False)
    manifest["path"] = [str((small_cohort_dir / p).resolve()) for p in manifest["path"]]
    manifest.drop(columns="mask_path").to_csv(folder / "manifest.csv", index=False)
    shutil.copy(small_cohort_dir / "clinical.csv", folder / "clinical.csv")
    out = tmp_path_factory.mktemp("outside-run")
    config = load_config(None, name="outside", manifest=folder, variants={"ultrasound": ["ultrasound"], "clinical": ["clinical"]},
                         model=TINY_MODEL, training={"epochs": 1, "batch_size": 16},
                         cv={"n_splits": 2, "bootstrap": 100})
    run_experiment(load_cohort(folder, allow_outside_root=True), config, out)
    return out


def test_export_reads_no_cohort_when_the_run_saved_what_it_needs(outside_run, tmp_path):
    runner = CliRunner()
    for variant in ("ultrasound", "clinical"):  # the clinical preprocessors come from the run, not a refit
        result = runner.invoke(app, ["export", str(outside_run), "--variant", variant,
                                     "--out", str(tmp_path / variant)])
        assert result.exit_code == 0, result.output
        assert load_bundle(tmp_path / variant).modalities == (variant,)


def test_an_old_run_that_refits_refuses_outside_images_unless_allowed(outside_run, tmp_path):
    old_run = tmp_path / "old-run"
    shutil.copytree(outside_run, old_run)
    saved = list((old_run / "checkpoints" / "clinical").glob("*.skops"))
    assert saved  # the run saved its fold preprocessors; an older run has none, so export refits from the cohort
    for path in saved:
        path.unlink()
    runner = CliRunner()
    refused = runner.invoke(app, ["export", str(old_run), "--variant", "clinical", "--out", str(tmp_path / "refused")])
    message = " ".join(refused.output.split())
    assert refused.exit_code == 2, refused.output
    assert "resolves outside the manifest folder" in message and "pass --allow-outside-root" in message
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())
    allowed = runner.invoke(app, ["export", str(old_run), "--variant", "clinical", "--out", str(tmp_path / "bundle"),
                                  "--allow-outside-root"])
    assert allowed.exit_code == 0, allowed.output
    assert load_bundle(tmp_path / "bundle").modalities == ("clinical",)


def test_export_help_says_what_the_flag_allows():
    helped = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "300"}).output
    assert "--allow-outside-root" in helped and "outside the cohort folder" in helped and "Off by default" in helped
    assert "pip install 'breastfusion[onnx]'" in helped  # the extra is not eaten as rich markup


def test_error_messages_reach_the_user_whole(capsys):
    import typer

    from breastfusion.cli.common import fail

    with pytest.raises(typer.Exit) as exit_info:
        fail("ONNX export needs onnx: pip install 'breastfusion[onnx]' (see [b]docs[/b])")
    assert exit_info.value.exit_code == 2
    printed = " ".join(capsys.readouterr().out.split())
    assert "pip install 'breastfusion[onnx]' (see [b]docs[/b])" in printed  # brackets are text, not markup
