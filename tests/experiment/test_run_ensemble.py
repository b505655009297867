"""`breastfusion ensemble`: the mean logit of runs on the same folds, its figures, and the errors when runs differ."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from breastfusion.cli.main import app
from breastfusion.evaluation.delong import delong_test
from breastfusion.experiment.run_artifacts import RunFolderError, load_run
from breastfusion.experiment.run_ensemble import EnsembleError, average_logits, ensemble_runs

from ..evaluation.fake_predictions import fake_predictions

SHA = "cd" * 32
KEY = ["fold", "lesion_id"]


def _member(root: Path, test: pd.DataFrame, calibration: pd.DataFrame, *, name: str, sha: str = SHA,
            evaluation: str = "") -> Path:
    """A run folder holding one variant, ``ultrasound``, with these predictions."""
    root.mkdir(parents=True)
    test.assign(variant="ultrasound").to_csv(root / "predictions.csv", index=False)
    calibration.assign(variant="ultrasound").to_csv(root / "calibration_predictions.csv", index=False)
    auc = roc_auc_score(test["y"], test["prob"])
    (root / "results.json").write_text(json.dumps({"manifest_sha256": sha, "reference_variant": "ultrasound",
                                                   "variants": {"ultrasound": {"auc": auc, "auc_ci": [0, 1]}}}))
    (root / "config.yaml").write_text(f"name: {name}\nvariants: {{ultrasound: [ultrasound]}}\n{evaluation}")
    return root


@pytest.fixture
def members(tmp_path):
    """Two runs on the same folds and calibration lesions whose scores carry independent noise."""
    test, calibration = fake_predictions(n_subjects=240, n_folds=3, variants={"a": 1.0, "b": 1.0}, seed=11)
    parts = {v: (test[test["variant"] == v], calibration[calibration["variant"] == v]) for v in ("a", "b")}
    runs = [_member(tmp_path / v, *parts[v], name=f"run_{v}") for v in ("a", "b")]
    return runs, parts


def _expected(frames: list[pd.DataFrame]) -> pd.Series:
    z = np.mean([logit(f.set_index(KEY)["prob"].sort_index()) for f in frames], axis=0)
    return pd.Series(expit(z), index=frames[0].set_index(KEY).sort_index().index)


def test_the_ensemble_averages_logits_fold_by_fold_and_reports_the_paired_tests(members, tmp_path):
    runs, parts = members
    out = tmp_path / "ens"
    result = CliRunner().invoke(app, ["ensemble", *map(str, runs), "--out", str(out)])
    assert result.exit_code == 0, result.output

    saved = pd.read_csv(out / "predictions.csv", dtype={"lesion_id": str}).set_index(KEY).sort_index()
    expected = _expected([parts["a"][0], parts["b"][0]])
    np.testing.assert_allclose(saved["prob"].to_numpy(), expected.to_numpy(), rtol=1e-9)
    calib = pd.read_csv(out / "calibration_predictions.csv", dtype={"lesion_id": str}).set_index(KEY).sort_index()
    np.testing.assert_allclose(calib["prob"].to_numpy(), _expected([parts["a"][1], parts["b"][1]]).to_numpy(),
                               rtol=1e-9)
    assert set(calib["split"]) == {"training"}

    results = json.loads((out / "results.json").read_text())
    entry = results["variants"]["ultrasound"]
    y = saved["y"].to_numpy()
    assert entry["auc"] == pytest.approx(roc_auc_score(y, saved["prob"]))
    # independent noise: the average ranks better than either member
    member_aucs = [roc_auc_score(parts[v][0]["y"], parts[v][0]["prob"]) for v in ("a", "b")]
    assert entry["auc"] > max(member_aucs)
    for test, v in zip(entry["vs_members"], ("a", "b")):
        own = parts[v][0].set_index(KEY).sort_index()
        paired = delong_test(y, saved["prob"].to_numpy(), own["prob"].to_numpy())
        assert test["run"] == str(runs["ab".index(v)])
        assert test["auc_difference"] == pytest.approx(paired.difference)
        assert test["p"] == pytest.approx(paired.p_value)
    assert results["ensemble"]["combine"] == "mean_logit"
    assert [m["name"] for m in results["ensemble"]["members"]] == ["run_a", "run_b"]
    assert json.loads((out / "ensemble.json").read_text()) == results["ensemble"]
    assert results["name"] == "run_a+run_b" and (out / "report.html").is_file() and (out / "roc.png").is_file()
    text = " ".join(result.output.split())
    assert f"{entry['auc']:.3f}" in text and f"{member_aucs[0]:.3f}" in text


def test_the_ensemble_folder_compares_like_a_run(members, tmp_path):
    from breastfusion.evaluation.compare import compare_runs

    runs, _ = members
    out = tmp_path / "ens"
    results = ensemble_runs(runs, out, name="pair")
    compared = compare_runs(out, runs[0])
    assert compared["a"]["auc"] == pytest.approx(results["variants"]["ultrasound"]["auc"])
    assert compared["p"] == pytest.approx(results["variants"]["ultrasound"]["vs_members"][0]["p"])


def test_networks_are_read_from_the_members(members, tmp_path):
    runs, _ = members
    out = tmp_path / "ens"
    ensemble_runs(runs, out)
    with pytest.raises(RunFolderError, match=r"ensemble of runs .*export or explain each member"):
        load_run(out)
    # export makes each member's bundle: these members hold predictions but no networks
    result = CliRunner().invoke(app, ["export", str(out), "--out", str(tmp_path / "bundle")])
    text = "".join(result.output.split())
    assert result.exit_code != 0 and f"memberrun{runs[0]}".replace(" ", "") in text
    assert not (tmp_path / "bundle").exists() and not list(tmp_path.glob(".bundle.partial-*"))


def _move_first_lesion(test: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    lesion = test["lesion_id"].iloc[0]
    test.loc[test["lesion_id"] == lesion, "fold"] = (test["fold"].iloc[0] + 1) % 3
    return test, rf"lesion '{lesion}'.*same folds"


def _flip_fourth_label(test: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    test.loc[test.index[3], "y"] = 1 - test["y"].iloc[3]
    return test, rf"{test['lesion_id'].iloc[3]}.*labelled"


@pytest.mark.parametrize("edit", [_move_first_lesion, _flip_fourth_label], ids=["other-fold", "other-label"])
def test_a_member_on_other_folds_or_labels_is_refused_naming_the_lesion(members, tmp_path, edit):
    runs, parts = members
    test, calibration = parts["b"]
    changed, message = edit(test.copy())
    other = _member(tmp_path / "b_changed", changed, calibration, name="changed")
    with pytest.raises(EnsembleError, match=message):
        ensemble_runs([runs[0], other], tmp_path / "ens")


def test_other_calibration_lesions_are_refused(members, tmp_path):
    runs, parts = members
    test, calibration = parts["b"]
    other = _member(tmp_path / "b_val", test, calibration.iloc[10:], name="val")
    with pytest.raises(EnsembleError, match=r"calibration lesions .*val_fraction"):
        ensemble_runs([runs[0], other], tmp_path / "ens")


def test_other_manifests_and_evaluation_settings_are_refused(members, tmp_path):
    runs, parts = members
    elsewhere = _member(tmp_path / "b_sha", *parts["b"], name="sha", sha="ef" * 32)
    with pytest.raises(EnsembleError, match="different manifests"):
        ensemble_runs([runs[0], elsewhere], tmp_path / "ens")
    assert ensemble_runs([runs[0], elsewhere], tmp_path / "ens", allow_different_manifest=True)["variants"]
    maxed = _member(tmp_path / "b_max", *parts["b"], name="max", evaluation="evaluation: {aggregation: max}\n")
    with pytest.raises(EnsembleError, match=r"evaluation.aggregation is 'mean' in .* but 'max'"):
        ensemble_runs([runs[0], maxed], tmp_path / "ens2")


def test_bad_member_lists_are_refused(members, tmp_path):
    runs, parts = members
    with pytest.raises(EnsembleError, match="two or more runs, got 1"):
        ensemble_runs(runs[:1], tmp_path / "e1")
    with pytest.raises(EnsembleError, match="listed twice"):
        ensemble_runs([runs[0], runs[0]], tmp_path / "e2")
    with pytest.raises(EnsembleError, match=r"no variant \['fused'\]; it holds \['ultrasound'\]"):
        ensemble_runs(runs, tmp_path / "e3", variants=["fused"])
    (runs[1] / "calibration_predictions.csv").unlink()
    with pytest.raises(EnsembleError, match="calibration_predictions.csv is missing"):
        ensemble_runs(runs, tmp_path / "e4")
    with pytest.raises(EnsembleError, match="already holds a run"):
        ensemble_runs(runs, runs[0])
    nested = tmp_path / "pair"
    (runs[1] / "calibration_predictions.csv").write_text((runs[0] / "calibration_predictions.csv").read_text())
    ensemble_runs(runs, nested)
    with pytest.raises(EnsembleError, match=r"pair is itself an ensemble .*list its member runs instead"):
        ensemble_runs([nested, runs[0]], tmp_path / "e6")
    result = CliRunner().invoke(app, ["ensemble", str(runs[0]), str(tmp_path / "nothing"), "--out",
                                      str(tmp_path / "e5")])
    assert result.exit_code != 0 and "is not a run folder" in " ".join(result.output.split())


def test_average_logits_is_the_mean_logit_and_survives_certain_scores():
    probs = np.array([[0.2, 0.8], [0.9, 0.9], [1.0, 0.5]])
    out = average_logits(probs)
    assert out[0] == pytest.approx(0.5) and out[1] == pytest.approx(0.9)
    assert np.isfinite(out[2]) and 0.5 < out[2] < 1


def test_the_selection_ensembles_script_averages_other_manifest_files_only_when_told(members, tmp_path, monkeypatch):
    import sys

    from ..bench_scripts import BENCH_DIR, load_bench

    _, parts = members
    work = tmp_path / "work"
    _member(work / "busi_recipes" / "a", *parts["a"], name="a")
    _member(work / "busi_recipes" / "b", *parts["b"], name="b", sha="ef" * 32)  # the same lesions, another file
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    import busi_recipes

    monkeypatch.setattr(busi_recipes, "RESULTS", tmp_path / "recipes.json")
    script = load_bench("selection_ensembles")
    argv = ["selection_ensembles.py", "ab", "busi_recipes/a", "busi_recipes/b", "--busi", "--work", str(work)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(EnsembleError, match="different manifests"):
        script.main()
    assert not (tmp_path / "recipes.json").exists()
    monkeypatch.setattr(sys, "argv", [*argv, "--allow-different-manifest"])
    script.main()
    entry = json.loads((tmp_path / "recipes.json").read_text())["runs"][-1]
    assert entry["name"] == "ab" and entry["ensemble_of"] == ["busi_recipes/a", "busi_recipes/b"]
    ensemble = json.loads((work / "busi_ensembles" / "ab" / "results.json").read_text())
    assert entry["auc"] == ensemble["variants"]["ultrasound"]["auc"]
    assert [m["run"] for m in entry["members"]] == ["busi_recipes/a", "busi_recipes/b"]
