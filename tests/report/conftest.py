"""A run folder's evaluation outputs built from synthetic predictions (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from breastfusion.config import ExperimentConfig, dump_config
from breastfusion.experiment.run import evaluate_predictions, write_outputs

from ..evaluation.fake_predictions import fake_predictions


def evaluated_run(out: Path, *, repeats: int | None = None, **evaluation) -> dict:
    """Write results.json, the figures and report.html for fake predictions of two variants."""
    out.mkdir(parents=True, exist_ok=True)
    config = ExperimentConfig(variants={"weak": ["ultrasound"], "strong": ["mammography", "ultrasound"]},
                              cv={"n_splits": 3, "bootstrap": 200, "repeats": repeats or 1},
                              evaluation=evaluation)
    dump_config(config, out / "config.yaml")
    predictions, calibration = fake_predictions(n_subjects=150, repeats=repeats, seed=11)
    predictions.to_csv(out / "predictions.csv", index=False)
    calibration.to_csv(out / "calibration_predictions.csv", index=False)
    evaluation_part, scores, extra = evaluate_predictions(predictions, calibration, config)
    results = {"name": "fake", "created": "2024-01-01T00:00:00+00:00", "versions": {"breastfusion": "test"},
               "manifest_sha256": "ab" * 32, "cv": config.cv.model_dump(), "runtime_s": 1.0,
               "cohort": {"n_subjects": 150, "n_lesions": 150, "n_malignant": int(
                   predictions.groupby("subject_id")["y"].max().sum()), "n_images": 300,
                   "modalities": ["mammography", "ultrasound"]},
               **evaluation_part}
    return write_outputs(results, scores, out, extra)


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("fake-run")
    return out, evaluated_run(out, recalibration="platt")


def read_report(run: Path) -> str:
    return (run / "report.html").read_text(encoding="utf-8")

