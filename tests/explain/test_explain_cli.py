"""`breastfusion explain` end to end on a tiny run: overlays, results.json, report gallery, errors."""

from __future__ import annotations

import json

import pandas as pd
from typer.testing import CliRunner

from breastfusion.cli.main import app
from breastfusion.report.figures import FIGURES
from breastfusion.experiment.run_artifacts import load_run


def test_explain_writes_overlays_results_and_gallery(run_copy, tmp_path):
    subjects = pd.read_csv(run_copy / "predictions.csv", dtype={"subject_id": str})["subject_id"].unique()[:2]
    out = tmp_path / "explained"
    result = CliRunner().invoke(app, ["explain", str(run_copy), "--subjects", ",".join(subjects),
                                      "--method", "gradcam", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "modality contribution" in result.output
    # one overlay per image of each image branch
    for sid in subjects:
        assert len(list((out / "heatmaps").glob(f"{sid}_*_gradcam.png"))) == 3  # CC, MLO, ultrasound
    explanations = json.loads((run_copy / "results.json").read_text())["explanations"]
    contribution = explanations["contribution"]
    assert sum(contribution["share_percent"].values()) == pytest_approx(100)
    assert contribution["efficiency_max_error"] < 1e-9 and contribution["n_lesions"] == 60
    # the empty coalition of each fold is its training prevalence (shuffle sampler, no class weights)
    art = load_run(run_copy)
    prevalence = [art.lesions["y"].to_numpy()[train].mean() for train, _ in art.folds]
    assert contribution["empty_by_fold"] == pytest_approx(prevalence)
    # the tiny run had no modality dropout: the shares come with a warning, printed too
    assert contribution["modality_dropout"] == 0 and "modality_dropout" in contribution["note"]
    assert "note:" in result.output
    methods = {row["method"] for row in explanations["faithfulness"]["table"]}
    assert methods == {"scorecam", "gradcam", "gradcam++", "centre", "random"}  # synthetic cohort: masks known
    assert [row["variable"] for row in explanations["clinical_importance"]]
    assert explanations["faithfulness"]["deletion_insertion"]["method"] == "gradcam"
    assert sorted(explanations["subjects"]) == sorted(subjects)
    html = (run_copy / "report.html").read_text()
    assert "Explanations" in html and "Gallery" in html
    assert html.count("data:image/png;base64,") == len(FIGURES) + 1  # the run's figures + the gallery
    shapley = pd.read_csv(out / "modality_shapley.csv")
    assert len(shapley) == 60 and set(shapley["fold"]) == {0, 1}


def test_explain_writes_strict_json_with_nan_as_null(run_copy, tmp_path, monkeypatch):
    """explanations.json and the run's results.json go through the run's one strict JSON writer: a NaN (an
    undefined figure) is written as null, never as the non-JSON token NaN."""
    import pytest

    from breastfusion.explain import runner

    monkeypatch.setattr(runner, "_summarise_faithfulness", lambda *args: {"undefined": float("nan")})
    subjects = pd.read_csv(run_copy / "predictions.csv", dtype={"subject_id": str})["subject_id"].unique()[:1]
    runner.explain_run(run_copy, subjects=list(subjects), method="gradcam", out=tmp_path / "explained")

    def strict(text: str) -> dict:
        return json.loads(text, parse_constant=lambda token: pytest.fail(f"non-JSON token {token}"))

    assert strict((tmp_path / "explained" / "explanations.json").read_text())["faithfulness"] == {"undefined": None}
    results = strict((run_copy / "results.json").read_text())
    assert results["explanations"]["faithfulness"] == {"undefined": None}


def test_explain_errors(run_copy):
    runner = CliRunner()
    result = runner.invoke(app, ["explain", str(run_copy), "--method", "lime"])
    assert result.exit_code == 2 and "unknown method 'lime'" in result.output
    result = runner.invoke(app, ["explain", str(run_copy), "--subjects", "nobody"])
    assert result.exit_code == 2 and "nobody" in result.output
    result = runner.invoke(app, ["explain", str(run_copy / "nope")])
    assert result.exit_code == 2 and "not a run folder" in " ".join(result.output.split())


def pytest_approx(value):
    import pytest

    return pytest.approx(value)


def test_correct_and_misclassified_follow_the_runs_fold_thresholds(run_copy):
    """explain's gallery sides use the run's subject scores and each subject's fold Youden threshold (what the
    report's confusion matrices use), not a fixed 0.5; select_cases honours a per-subject threshold column."""
    from breastfusion.evaluation.compare import load_run_scores
    from breastfusion.explain.gallery import select_cases
    from breastfusion.explain.runner import run_subject_scores

    art = load_run(run_copy)
    scores = run_subject_scores(art, "fused")
    reference = load_run_scores(run_copy, "fused").scores
    assert scores["threshold"].tolist() == reference["youden_threshold"].tolist()
    assert scores["threshold"].nunique() > 1  # one per fold, fitted on its calibration scores
    sides = select_cases(scores, 60)
    called = scores.set_index("subject_id").eval("prob >= threshold")
    truth = scores.set_index("subject_id")["y"] == 1
    assert sides["misclassified"] and all(called[s] != truth[s] for s in sides["misclassified"])
    assert all(called[s] == truth[s] for s in sides["correct"])
    assert len(sides["correct"]) + len(sides["misclassified"]) == len(scores)
    frame = pd.DataFrame({"subject_id": ["a", "b"], "y": [1, 0], "prob": [0.4, 0.4], "threshold": [0.3, 0.5]})
    assert select_cases(frame, 2) == {"correct": ["a", "b"], "misclassified": []}
    assert select_cases(frame.drop(columns="threshold"), 2) == {"correct": ["b"], "misclassified": ["a"]}
