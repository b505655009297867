"""Ensemble recipes: one YAML naming member configs; `breastfusion run` fits each, then ensembles them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from breastfusion import load_bundle
from breastfusion.bundle import export_bundle
from breastfusion.cli.main import app
from breastfusion.config import ConfigError, load_config
from breastfusion.ensemble_bundle import EnsembleBundle
from breastfusion.experiment.ensemble_recipe import is_ensemble_recipe, load_ensemble_recipe, member_dir
from breastfusion.experiment.run_ensemble import average_logits

from ..conftest import TINY_MODEL

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
_IDS = {"subject_id": str, "lesion_id": str}
KEY = ["fold", "lesion_id"]


def _member_config(name: str, *, seed: int, attention: str, **changes) -> dict:
    model = {**TINY_MODEL, "ultrasound": {**TINY_MODEL["ultrasound"], "attention": attention}}
    config = {"name": name, "variants": {"ultrasound": ["ultrasound"]}, "model": model,
              "training": {"epochs": 1, "batch_size": 16, "seed": seed}, "cv": {"n_splits": 2, "bootstrap": 100}}
    for section, value in changes.items():
        config[section] = {**config.get(section, {}), **value} if isinstance(value, dict) else value
    return config


def _recipe(folder: Path, members: dict[str, dict], **extra) -> Path:
    """A recipe file in ``folder`` whose members are written beside it (one YAML each)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, config in members.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config))
    recipe = {"name": "pair", "members": {name: f"{name}.yaml" for name in members}, **extra}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def recipe_run(small_cohort_dir, tmp_path_factory):
    """A two-member recipe (training seed and attention differ) run through the CLI."""
    root = tmp_path_factory.mktemp("recipe")
    path = _recipe(root / "configs", {"eca": _member_config("eca", seed=0, attention="eca"),
                                      "plain": _member_config("plain", seed=5, attention="none")})
    out = root / "run"
    result = CliRunner().invoke(app, ["run", str(path), "--manifest", str(small_cohort_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return path, out, result.output


def _probs(folder: Path, file: str = "predictions.csv") -> pd.Series:
    return pd.read_csv(folder / file, dtype=_IDS).set_index(KEY)["prob"].sort_index()


def test_a_recipe_run_fits_each_member_and_writes_their_mean_logit(recipe_run):
    _, out, output = recipe_run
    members = [member_dir(out, name) for name in ("eca", "plain")]
    for folder in members:
        assert (folder / "results.json").is_file() and (folder / "checkpoints").is_dir()
        assert json.loads((folder / "results.json").read_text())["name"] == folder.name
    for file in ("predictions.csv", "calibration_predictions.csv"):
        parts = [_probs(folder, file) for folder in members]
        assert not np.allclose(parts[0], parts[1])  # two different networks, not one run twice
        np.testing.assert_allclose(_probs(out, file), average_logits(np.column_stack(parts)), rtol=1e-9)
    results = json.loads((out / "results.json").read_text())
    assert results["name"] == "pair"
    assert [m["run"] for m in results["ensemble"]["members"]] == [str(f.resolve()) for f in members]
    assert (out / "report.html").is_file()
    assert "eca" in output and "plain" in output and str(out) in output


def test_a_recipe_run_exports_as_an_ensemble_bundle_that_reproduces_it(recipe_run, small_cohort_dir, tmp_path):
    _, out, _ = recipe_run
    bundle = load_bundle(export_bundle(out, tmp_path / "model"))
    assert isinstance(bundle, EnsembleBundle) and len(bundle.members) == 2
    lesions = bundle.predict_lesions(small_cohort_dir).set_index(KEY)["prob"]
    saved = _probs(out)
    np.testing.assert_allclose(lesions.loc[saved.index], saved, atol=1e-5)


def test_a_finished_or_started_recipe_run_is_not_overwritten(recipe_run, small_cohort_dir, tmp_path):
    path, out, _ = recipe_run
    again = CliRunner().invoke(app, ["run", str(path), "--manifest", str(small_cohort_dir), "--out", str(out)])
    assert again.exit_code != 0 and "already holds a finished run" in again.output
    started = tmp_path / "started"
    shutil.copytree(member_dir(out, "eca"), member_dir(started, "eca"))
    refused = CliRunner().invoke(app, ["run", str(path), "--manifest", str(small_cohort_dir), "--out", str(started)])
    assert refused.exit_code != 0 and "--resume" in refused.output


def test_resume_keeps_finished_members_and_fits_the_rest(recipe_run, small_cohort_dir, tmp_path):
    path, out, _ = recipe_run
    resumed = tmp_path / "resumed"
    shutil.copytree(member_dir(out, "eca"), member_dir(resumed, "eca"))  # interrupted after the first member
    weights = sorted(member_dir(resumed, "eca").rglob("*.safetensors"))
    stamps = [w.stat().st_mtime_ns for w in weights]
    result = CliRunner().invoke(app, ["run", str(path), "--manifest", str(small_cohort_dir), "--out", str(resumed),
                                      "--resume"])
    assert result.exit_code == 0, result.output
    assert weights and [w.stat().st_mtime_ns for w in weights] == stamps  # nothing of the finished member retrained
    np.testing.assert_allclose(_probs(resumed), _probs(out), atol=1e-6)  # training is seeded: the same ensemble


def test_a_member_folder_of_another_config_is_refused(recipe_run, small_cohort_dir, tmp_path):
    path, out, _ = recipe_run
    other = tmp_path / "other"
    shutil.copytree(member_dir(out, "plain"), member_dir(other, "eca"))  # plain's run where eca's belongs
    result = CliRunner().invoke(app, ["run", str(path), "--manifest", str(small_cohort_dir), "--out", str(other),
                                      "--resume"])
    assert result.exit_code != 0 and "another configuration than member 'eca'" in result.output


def test_variants_option_cuts_every_member(tmp_path, small_cohort_dir):
    both = {"ultrasound": ["ultrasound"], "clinical": ["clinical"]}
    path = _recipe(tmp_path, {"a": _member_config("a", seed=0, attention="eca", variants=both),
                              "b": _member_config("b", seed=1, attention="none", variants=both)})
    recipe = load_ensemble_recipe(path, manifest=small_cohort_dir).with_variants(["clinical"])
    assert [list(c.variants) for c in recipe.members.values()] == [["clinical"], ["clinical"]]
    assert recipe.manifest == small_cohort_dir


@pytest.mark.parametrize(("members", "extra", "message"), [
    ({"a": {}}, {}, "two or more member configs"),
    ({"a": {}, "b": {"cv": {"n_splits": 3}}}, {}, r"'a' and 'b' differ in cv.n_splits \(2 vs 3\)"),
    ({"a": {}, "b": {"cv": {"seed": 4}}}, {}, r"differ in cv.seed"),
    ({"a": {}, "b": {"evaluation": {"aggregation": "max"}}}, {}, "differ in evaluation.aggregation"),
    ({"a": {}, "b": {"training": {"val_fraction": 0.3}}}, {}, "differ in training.val_fraction"),
    ({"a": {}, "b": {"variants": {"us": ["ultrasound"]}}}, {}, "different variants"),
    ({"a": {}, "b": {}}, {"extra_key": 1}, "extra_key"),
])
def test_members_that_could_not_be_ensembled_are_refused_before_training(tmp_path, members, extra, message):
    configs = {name: _member_config(name, seed=0, attention="eca", **changes) for name, changes in members.items()}
    path = _recipe(tmp_path, configs, **extra)
    with pytest.raises(ConfigError, match=message):
        load_ensemble_recipe(path)


def test_a_missing_or_nested_member_file_is_named(tmp_path):
    path = _recipe(tmp_path, {"a": _member_config("a", seed=0, attention="eca")})
    recipe = yaml.safe_load(path.read_text())
    recipe["members"]["b"] = "absent.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match=r"member 'b': .*absent.yaml not found"):
        load_ensemble_recipe(path)
    recipe["members"]["b"] = "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match="member 'b': .* is itself an ensemble recipe"):
        load_ensemble_recipe(path)


def test_a_recipe_is_not_mistaken_for_an_experiment_config():
    pair = CONFIGS / "bus_clinical_pair.yaml"
    assert is_ensemble_recipe(pair) and not is_ensemble_recipe(CONFIGS / "bus_clinical.yaml")
    with pytest.raises(ConfigError, match="is an ensemble recipe"):
        load_config(pair)


@pytest.mark.parametrize(("recipe", "members"), [
    ("bus_clinical_pair.yaml", {"whole_frame": "bus_clinical.yaml", "localised": "bus_clinical_localised.yaml"}),
    ("bus_clinical_lite0_trio.yaml", {"lite0": "bus_clinical_lite0.yaml", "whole_frame": "bus_clinical.yaml",
                                      "localised": "bus_clinical_localised.yaml"}),
])
def test_the_shipped_recipes_are_the_shipped_configs(recipe, members):
    loaded = load_ensemble_recipe(CONFIGS / recipe)
    assert list(loaded.members) == list(members)
    for name, config in members.items():
        assert loaded.members[name] == load_config(CONFIGS / config)
