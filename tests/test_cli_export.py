"""`breastfusion export --allow-outside-root`: a run whose cohort manifest points at images outside its folder."""

from __future__ import annotations

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
    """A 2-fold ultrasound run on a cohort folder whose manifest lists the images of another folder."""
    from breastfusion.config import load_config
    from breastfusion.experiment.run import run_experiment

    folder = tmp_path_factory.mktemp("outside-cohort")
    manifest = pd.read_csv(small_cohort_dir / "manifest.csv", dtype=str, keep_default_na=False)
    manifest["path"] = [str((small_cohort_dir / p).resolve()) for p in manifest["path"]]
    manifest.drop(columns="mask_path").to_csv(folder / "manifest.csv", index=False)
    out = tmp_path_factory.mktemp("outside-run")
    config = load_config(None, name="outside", manifest=folder, variants={"ultrasound": ["ultrasound"]},
                         model=TINY_MODEL, training={"epochs": 1, "batch_size": 16},
                         cv={"n_splits": 2, "bootstrap": 100})
    run_experiment(load_cohort(folder, allow_outside_root=True), config, out)
    return out


def test_export_refuses_outside_images_unless_allowed(outside_run, tmp_path):
    runner = CliRunner()
    refused = runner.invoke(app, ["export", str(outside_run), "--out", str(tmp_path / "refused")])
    message = " ".join(refused.output.split())
    assert refused.exit_code == 2, refused.output
    assert "resolves outside the manifest folder" in message and "pass --allow-outside-root" in message
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())
    allowed = runner.invoke(app, ["export", str(outside_run), "--out", str(tmp_path / "bundle"),
                                  "--allow-outside-root"])
    assert allowed.exit_code == 0, allowed.output
    assert load_bundle(tmp_path / "bundle").modalities == ("ultrasound",)
    helped = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "300"}).output
    assert "--allow-outside-root" in helped and "outside the cohort folder" in helped and "Off by default" in helped
