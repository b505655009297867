"""bench/real_data.py's replicate option: the same sections on the folds of another seed, kept apart."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from breastfusion.experiment.crossval import fold_positions

from .bench_scripts import load_bench


@pytest.fixture
def bench(monkeypatch):
    module = load_bench("real_data")
    monkeypatch.setattr(module, "CV_SEED", None)
    return module


def test_a_cv_seed_moves_every_config_to_the_folds_of_that_seed(bench, monkeypatch, small_cohort_dir):
    from breastfusion.data.manifest import load_cohort

    path = bench.ROOT / "configs" / "bus_clinical.yaml"
    own = bench.load_bench_config(path)
    assert own.cv.seed == 0
    monkeypatch.setattr(bench, "CV_SEED", 3)
    moved = bench.load_bench_config(path)
    assert moved.cv.seed == 3 and moved.model == own.model and moved.training == own.training
    cohort = load_cohort(small_cohort_dir)
    assert [list(t) for _, t in bench.same_folds(cohort, moved)] == [
        list(p.test) for p in fold_positions(cohort, moved)[0]]
    assert [list(t) for _, t in bench.same_folds(cohort, moved)] != [
        list(t) for _, t in bench.same_folds(cohort, own)]


def test_a_cv_seed_refuses_the_official_split_section(bench, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sys, "argv", ["real_data.py", "--sections", "breast,breastmnist", "--cv-seed", "2",
                                      "--data", str(tmp_path), "--work", str(tmp_path)])
    with pytest.raises(SystemExit):
        bench.main()
    assert "breastmnist is reported on its official test split" in capsys.readouterr().err


def test_the_pair_section_runs_the_recipe_on_the_bench_folds_and_reruns_only_the_ensemble(
        bench, monkeypatch, small_cohort_dir, tmp_path):
    import json

    import yaml

    from breastfusion.data.manifest import load_cohort

    from .conftest import TINY_MODEL

    configs = tmp_path / "configs"
    configs.mkdir()
    for name, seed in (("a", 0), ("b", 1)):
        (configs / f"{name}.yaml").write_text(yaml.safe_dump({
            "name": name, "variants": {"ultrasound": ["ultrasound"], "clinical": ["clinical"]}, "model": TINY_MODEL,
            "training": {"epochs": 1, "batch_size": 16, "seed": seed}, "cv": {"n_splits": 2, "bootstrap": 100}}))
    (configs / "pair.yaml").write_text(yaml.safe_dump({"name": "pair", "members": {"a": "a.yaml", "b": "b.yaml"}}))
    monkeypatch.setattr(bench, "PAIR_RECIPE", configs / "pair.yaml")
    monkeypatch.setattr(bench, "prepare", lambda *a, **k: load_cohort(small_cohort_dir))
    monkeypatch.setattr(bench, "CV_SEED", 3)
    args = type("Args", (), {"epochs_scale": 1.0})()

    out = bench.section_busi_pair(tmp_path, tmp_path, args)
    run = tmp_path / "runs" / "busi_pair"
    results = json.loads((run / "results.json").read_text())
    assert out["busi_pair_auc"] == results["variants"]["ultrasound"]["auc"]
    assert list(results["variants"]) == ["ultrasound"]  # the image arm only, as the BUSI sections run
    assert sorted(out["busi_pair_members"]) == ["a", "b"]
    for name in ("a", "b"):
        member = json.loads((run / "members" / name / "results.json").read_text())
        assert member["cv"]["seed"] == 3  # on the bench's folds, not the configs' own
        assert out["busi_pair_members"][name]["auc"] == member["variants"]["ultrasound"]["auc"]
    weights = sorted((run / "members").rglob("*.safetensors"))
    stamps = [w.stat().st_mtime_ns for w in weights]
    again = bench.section_busi_pair(tmp_path, tmp_path, args)
    assert weights and [w.stat().st_mtime_ns for w in weights] == stamps
    assert again["busi_pair_auc"] == pytest.approx(out["busi_pair_auc"])


def test_the_trio_section_reuses_the_pair_members_and_trains_only_the_rest(bench, monkeypatch, small_cohort_dir,
                                                                           tmp_path):
    import json

    import yaml

    from breastfusion.data.manifest import load_cohort

    from .conftest import TINY_MODEL

    configs = tmp_path / "configs"
    configs.mkdir()
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        (configs / f"{name}.yaml").write_text(yaml.safe_dump({
            "name": name, "variants": {"ultrasound": ["ultrasound"]}, "model": TINY_MODEL,
            "training": {"epochs": 1, "batch_size": 16, "seed": seed}, "cv": {"n_splits": 2, "bootstrap": 100}}))
    (configs / "pair.yaml").write_text(yaml.safe_dump({"name": "pair", "members": {
        "whole_frame": "a.yaml", "localised": "b.yaml"}}))
    (configs / "trio.yaml").write_text(yaml.safe_dump({"name": "trio", "members": {
        "lite0": "c.yaml", "whole_frame": "a.yaml", "localised": "b.yaml"}}))
    monkeypatch.setattr(bench, "PAIR_RECIPE", configs / "pair.yaml")
    monkeypatch.setattr(bench, "TRIO_RECIPE", configs / "trio.yaml")
    monkeypatch.setattr(bench, "prepare", lambda *a, **k: load_cohort(small_cohort_dir))
    args = type("Args", (), {"epochs_scale": 1.0})()

    bench.section_busi_pair(tmp_path, tmp_path, args)
    pair = tmp_path / "runs" / "busi_pair" / "members"
    trained = []
    import breastfusion.experiment.run as run_module

    original = run_module.run_experiment

    def recording(cohort, config, out, **kwargs):
        if not (Path(out) / "results.json").is_file():
            trained.append(Path(out).name)
        return original(cohort, config, out, **kwargs)

    monkeypatch.setattr(run_module, "run_experiment", recording)
    out = bench.section_busi_trio(tmp_path, tmp_path, args)
    assert trained == ["lite0"]  # no busi_pretrained run (busi_lite0) in this --work yet
    assert out["busi_trio_reused_members"] == {"lite0": None, "whole_frame": str(pair / "whole_frame"),
                                               "localised": str(pair / "localised")}
    trio = tmp_path / "runs" / "busi_trio" / "members"
    for name in ("whole_frame", "localised"):
        assert pd.read_csv(trio / name / "predictions.csv").equals(pd.read_csv(pair / name / "predictions.csv"))
    assert sorted(out["busi_trio_members"]) == ["lite0", "localised", "whole_frame"]
    results = json.loads((tmp_path / "runs" / "busi_trio" / "results.json").read_text())
    assert out["busi_trio_auc"] == results["variants"]["ultrasound"]["auc"]

    # with busi_pretrained's run of the same config in the --work, the trio trains nothing
    shutil.copytree(trio / "lite0", tmp_path / "runs" / "busi_lite0")
    shutil.rmtree(tmp_path / "runs" / "busi_trio")
    trained.clear()
    again = bench.section_busi_trio(tmp_path, tmp_path, args)
    assert trained == [] and again["busi_trio_reused_members"]["lite0"] == str(tmp_path / "runs" / "busi_lite0")
    assert again["busi_trio_auc"] == pytest.approx(out["busi_trio_auc"])


def test_the_quartet_section_runs_the_quartet_recipe_on_the_trio_members(bench, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(bench, "_busi_recipe", lambda *a, **k: calls.append((a, k)) or {})
    bench.section_busi_quartet(tmp_path, tmp_path, None)
    (data, work, _, recipe, key), kwargs = calls[0]
    assert data == work == tmp_path
    assert (recipe, key) == (bench.QUARTET_RECIPE, "busi_quartet") and recipe.is_file()
    trio = tmp_path / "runs" / "busi_trio" / "members"
    assert kwargs["seeds"] == {name: trio / name for name in ("lite0", "whole_frame", "localised")}



def test_the_pooled_sections_train_on_both_cohorts_and_report_the_first(bench, monkeypatch, small_cohort_dir,
                                                                        tmp_path):
    import json

    import yaml

    from breastfusion.config import load_config
    from breastfusion.data.manifest import load_cohort
    from breastfusion.data.synthetic.cohort import generate_cohort
    from breastfusion.models.network import MEMBER_SEED_STRIDE

    from .conftest import TINY_MODEL

    other = tmp_path / "other"
    generate_cohort(other, n_subjects=20, seed=8, image_px=32)
    config = tmp_path / "pooled.yaml"
    config.write_text(yaml.safe_dump({
        "name": "pooled", "variants": {"ultrasound": ["ultrasound"],
                                       "fused": {"modalities": ["ultrasound", "clinical"],
                                                 "model": {"fusion": "score"}}},
        "model": TINY_MODEL, "training": {"epochs": 1, "batch_size": 16, "seeds": 2},
        "cv": {"n_splits": 2, "bootstrap": 100, "training_only_column": "training_only"}}))
    monkeypatch.setattr(bench, "POOLED_CONFIG", config)
    monkeypatch.setattr(bench, "prepare", lambda name, *a, **k: load_cohort(
        small_cohort_dir if name == "breast_lesions_usg" else other))
    args = type("Args", (), {"epochs_scale": 1.0})()

    out = bench.section_breast_pooled(tmp_path, tmp_path, args)
    own, pooled = load_cohort(small_cohort_dir).lesions, load_cohort(other).lesions
    assert out["breast_pooled_n_lesions"] == len(own) and out["breast_pooled_n_pooled"] == len(pooled)
    results = json.loads((tmp_path / "runs" / "breast_pooled" / "results.json").read_text())
    assert out["breast_pooled_fused_auc"] == results["variants"]["fused"]["auc"]
    assert out["breast_pooled_fused_vs_ultrasound_p"] == results["variants"]["ultrasound"]["delong"]["p"]
    assert "breast_pooled_plain_baseline_auc" not in out          # the plain scripts are the breast section's
    # breast_pooled measures one network per fold whatever the config's training.seeds, and says so
    assert out["breast_pooled_seeds"] == 1
    assert load_config(tmp_path / "runs" / "breast_pooled" / "config.yaml").training.seeds == 1
    predictions = pd.read_csv(tmp_path / "runs" / "breast_pooled" / "predictions.csv", dtype={"lesion_id": str})
    assert set(predictions["lesion_id"]) == set(own["lesion_id"])
    # the pooled folder is written under WORK/pooled; the BUSI section pools the other way round (here the
    # stand-in for BUSI is `other`, for BrEaST the small cohort)
    assert (tmp_path / "pooled" / f"{small_cohort_dir.name}+busi" / "manifest.csv").is_file()
    busi = bench.section_busi_pooled(tmp_path, tmp_path, args)
    assert busi["busi_pooled_n_pooled"] == len(own) and busi["busi_n_lesions"] == len(pooled)
    # BUSI runs the config's two seeds member by member (one-network runs at the members' seeds), then ensembles them
    assert busi["busi_pooled_seeds"] == 2 and list(busi["busi_pooled_members"]) == ["busi_pooled", "busi_pooled_m1"]
    member_configs = [load_config(tmp_path / "runs" / r / "config.yaml").training for r in busi["busi_pooled_members"]]
    assert [(t.seeds, t.seed) for t in member_configs] == [(1, 0), (1, MEMBER_SEED_STRIDE)]
    ensemble = json.loads((tmp_path / "runs" / "busi_pooled_ensemble" / "results.json").read_text())
    assert busi["busi_pooled_auc"] == ensemble["variants"]["ultrasound"]["auc"]
    assert busi["busi_pooled_members"]["busi_pooled_m1"]["auc"] == json.loads(
        (tmp_path / "runs" / "busi_pooled_m1" / "results.json").read_text())["variants"]["ultrasound"]["auc"]
    assert (tmp_path / "pooled" / f"{other.name}+breast_lesions_usg" / "manifest.csv").is_file()
    # the from-scratch pooled section is the same member-by-member path with its own config and keys
    seen = []
    monkeypatch.setattr(bench, "_busi_pooled_members", lambda data, work, args, path, key: seen.append((path, key)))
    bench.section_busi_scratch_pooled(tmp_path, tmp_path, args)
    assert seen == [(bench.SCRATCH_POOLED_CONFIG, "busi_scratch_pooled")]
