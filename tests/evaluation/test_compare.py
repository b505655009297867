"""`breastfusion compare`: paired DeLong between two run folders, and the errors when they are not comparable."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from breastfusion.cli.main import app
from breastfusion.evaluation.compare import RunComparisonError, compare_runs
from breastfusion.evaluation.delong import delong_ci, delong_test

from .fake_predictions import fake_predictions

SHA = "ab" * 32


def _run_folder(root: Path, predictions: pd.DataFrame, *, sha: str | None = SHA, config: str = "name: fake\n",
                calibration: pd.DataFrame | None = None) -> Path:
    root.mkdir(parents=True)
    predictions.to_csv(root / "predictions.csv", index=False)
    if calibration is not None:
        calibration.to_csv(root / "calibration_predictions.csv", index=False)
    variants = list(dict.fromkeys(predictions["variant"]))
    (root / "results.json").write_text(json.dumps({"manifest_sha256": sha, "reference_variant": variants[-1]}))
    (root / "config.yaml").write_text(config)
    return root


@pytest.fixture
def two_runs(tmp_path):
    test, calibration = fake_predictions(n_subjects=100, variants={"weak": 0.5, "strong": 1.4}, seed=4)
    a = _run_folder(tmp_path / "a", test[test["variant"] == "strong"])
    b = _run_folder(tmp_path / "b", test[test["variant"] == "weak"].iloc[5:])  # 5 subjects not predicted
    return a, b, test


def _subject_scores(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.groupby("subject_id").agg(y=("y", "max"), prob=("prob", "mean"))


def test_compare_cli_prints_and_writes_the_paired_test(two_runs, tmp_path):
    a, b, test = two_runs
    out = tmp_path / "cmp.json"
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--json", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    sa = _subject_scores(test[test["variant"] == "strong"])
    sb = _subject_scores(test[test["variant"] == "weak"].iloc[5:])
    common = sa.index.intersection(sb.index)
    expected = delong_test(sa.loc[common, "y"].to_numpy(), sa.loc[common, "prob"].to_numpy(),
                           sb.loc[common, "prob"].to_numpy())
    assert saved["n_subjects"] == 95 and saved["n_only_a"] == 5 and saved["n_only_b"] == 0
    assert saved["a"]["variant"] == "strong" and saved["b"]["variant"] == "weak"
    assert saved["auc_difference"] == pytest.approx(expected.difference)
    assert saved["z"] == pytest.approx(expected.z) and saved["p"] == pytest.approx(expected.p_value)
    ci = delong_ci(sa.loc[common, "y"].to_numpy(), sa.loc[common, "prob"].to_numpy())
    assert saved["a"]["auc"] == pytest.approx(ci.auc)
    assert saved["a"]["auc_ci_delong"] == pytest.approx([ci.low, ci.high])
    text = " ".join(result.output.split())
    assert f"{expected.auc_a:.3f}" in text and f"{expected.auc_b:.3f}" in text and f"{expected.p_value:.3g}" in text


def test_compare_two_variants_of_one_run(tmp_path):
    test, _ = fake_predictions(n_subjects=80, seed=1)
    run = _run_folder(tmp_path / "r", test)
    out = compare_runs(run, run, variant_a="strong", variant_b="weak")
    assert out["n_subjects"] == 80 and out["auc_difference"] > 0
    same = compare_runs(run, run, variant_a="weak", variant_b="weak")
    assert same["auc_difference"] == 0.0


def test_compare_uses_the_runs_evaluation_settings(tmp_path):
    """With recalibration the run's subject scores need its calibration file; the AUC follows the settings."""
    test, calibration = fake_predictions(n_subjects=90, lesions=2, variants={"v": 1.0}, seed=6)
    platt = "evaluation: {recalibration: platt, aggregation: max}\n"
    without = _run_folder(tmp_path / "nocal", test, config=platt)
    with pytest.raises(RunComparisonError, match="calibration_predictions.csv is missing.*recalibration 'platt'"):
        compare_runs(without, without)
    run = _run_folder(tmp_path / "cal", test, config=platt, calibration=calibration)
    plain = _run_folder(tmp_path / "plain", test)
    out = compare_runs(run, plain)
    assert out["a"]["auc"] != pytest.approx(out["b"]["auc"])  # max + per-fold Platt vs mean


@pytest.mark.parametrize("change, match", [
    ("sha", "different manifests: .*a/results.json records manifest_sha256 abababababab"),
    ("label", "label 1 common subjects differently"),
    ("ids", "no subject in common"),
    ("variant", "no variant 'nope' in predictions.csv; it holds \\['weak'\\]"),
    ("missing", "not a run folder: results.json is missing"),
])
def test_compare_refuses_what_is_not_comparable(two_runs, tmp_path, change, match):
    a, b, test = two_runs
    weak = test[test["variant"] == "weak"]
    args = {}
    if change == "sha":
        b = _run_folder(tmp_path / "b2", weak, sha="cd" * 32)
    elif change == "label":
        b = _run_folder(tmp_path / "b2", weak.assign(y=(weak["y"].where(weak["subject_id"] != "S010",
                                                                        1 - weak["y"]))))
    elif change == "ids":
        b = _run_folder(tmp_path / "b2", weak.assign(subject_id="P" + weak["subject_id"]))
    elif change == "variant":
        args["variant_b"] = "nope"
    else:
        (b / "results.json").unlink()
    with pytest.raises(RunComparisonError, match=match):
        compare_runs(a, b, **args)
    result = CliRunner().invoke(app, ["compare", str(a), str(b)] +
                                (["--variant-b", args["variant_b"]] if args else []))
    assert result.exit_code == 2 and "error" in result.output


def test_allow_different_manifest_still_checks_labels(two_runs, tmp_path):
    a, _, test = two_runs
    b = _run_folder(tmp_path / "b2", test[test["variant"] == "weak"], sha="cd" * 32)
    assert compare_runs(a, b, allow_different_manifest=True)["n_subjects"] == 100
