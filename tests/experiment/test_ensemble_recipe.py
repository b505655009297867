"""Ensemble recipes: one YAML naming member configs; `breastfusion run` fits each, then ensembles them."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from breastfusion import load_bundle
from breastfusion.bundle import export_bundle
from breastfusion.cli.main import app
from breastfusion.config import ConfigError, load_config
from breastfusion.data.manifest import load_cohort
from breastfusion.ensemble_bundle import EnsembleBundle
from breastfusion.experiment import crossval
from breastfusion.experiment.ensemble_recipe import (
    is_ensemble_recipe,
    load_ensemble_recipe,
    member_dir,
    run_ensemble_recipe,
    share_localisers,
)
from breastfusion.experiment.localisation import localiser_tag
from breastfusion.experiment.run_ensemble import average_logits
from breastfusion.experiment.run_folder import RunLayout

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


LOCALISED = {"preprocess": {"roi": "predicted"}, "localiser": {"image_size": 32, "epochs": 2}}


def _localised_member(name: str, *, seed: int, attention: str, localiser: dict | None = None) -> dict:
    config = _member_config(name, seed=seed, attention=attention)
    config["model"]["ultrasound"] = {**config["model"]["ultrasound"], **LOCALISED,
                                     "localiser": {**LOCALISED["localiser"], **(localiser or {})}}
    return config


def _localiser_files(folder: Path) -> dict[str, bytes]:
    root = RunLayout(folder).checkpoints.root / "localisers"
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*.safetensors"))}


def test_members_with_the_same_localiser_fit_it_once(tmp_path, small_cohort_dir, monkeypatch):
    fits = []
    fit = crossval.fit_fold_localiser
    monkeypatch.setattr(crossval, "fit_fold_localiser", lambda *a, **k: fits.append(k["seed"]) or fit(*a, **k))
    path = _recipe(tmp_path / "configs", {"eca": _localised_member("eca", seed=0, attention="eca"),
                                          "plain": _localised_member("plain", seed=0, attention="none")})
    recipe = load_ensemble_recipe(path, manifest=small_cohort_dir)
    out = tmp_path / "run"
    console = Console(file=io.StringIO(), width=200)
    with Progress(console=console) as progress:
        run_ensemble_recipe(load_cohort(small_cohort_dir), recipe, out, progress=progress)
    assert len(fits) == 2                                      # one localiser per fold, for the first member only
    assert "member plain: 2 fold localiser(s) copied from member eca" in console.file.getvalue()
    first, second = (_localiser_files(member_dir(out, m)) for m in ("eca", "plain"))
    assert len(first) == 2 and first == second                 # the second member cropped with the same localisers
    boxes = [pd.read_csv(f) for f in sorted((RunLayout(member_dir(out, "plain")).checkpoints.root
                                              / "localisers").rglob("*.boxes.csv"))]
    assert len(boxes) == 2                                     # and wrote its own boxes from them

    # a cold run of the second member alone fits the same localisers: sharing changed nothing but the time
    alone = tmp_path / "alone"
    from breastfusion.experiment.run import run_experiment
    run_experiment(load_cohort(small_cohort_dir), recipe.members["plain"], alone)
    assert _localiser_files(alone) == second
    np.testing.assert_allclose(_probs(alone), _probs(member_dir(out, "plain")), atol=1e-6)


@pytest.mark.parametrize(("other", "shared"), [
    ({"seed": 0, "attention": "none"}, True),
    ({"seed": 3, "attention": "none"}, False),                  # other localiser seeds
    ({"seed": 0, "attention": "none", "localiser": {"epochs": 3}}, False),  # other localiser settings
])
def test_localisers_are_shared_only_where_the_member_would_fit_the_same(tmp_path, other, shared):
    source = load_config(None, **_localised_member("a", seed=0, attention="eca"))
    target = load_config(None, **_localised_member("b", **other))
    origin = RunLayout(tmp_path / "a").checkpoints.localiser_dir("ultrasound",
                                                                 localiser_tag(source.model.ultrasound.localiser))
    origin.mkdir(parents=True)
    (origin / "fold0.safetensors").write_bytes(b"a fold localiser")
    (origin / "fold0.boxes.csv").write_text("boxes of a's held-out images\n")
    copied = share_localisers((source, tmp_path / "a"), (target, tmp_path / "b"))
    assert [p.name for p in copied] == (["fold0.safetensors"] if shared else [])
    assert _localiser_files(tmp_path / "b") == ({f"{origin.name}/fold0.safetensors": b"a fold localiser"}
                                                if shared else {})
    assert not list((tmp_path / "b").rglob("*.boxes.csv"))    # boxes are the member's own, written by its run
    plain = load_config(None, **_member_config("c", seed=0, attention="none"))
    assert share_localisers((plain, tmp_path / "c"), (target, tmp_path / "b")) == []  # no localiser to share


@pytest.mark.parametrize(("recipe", "members"), [
    ("bus_clinical_pair.yaml", {"whole_frame": "bus_clinical.yaml", "localised": "bus_clinical_localised.yaml"}),
    ("bus_clinical_lite0_trio.yaml", {"lite0": "bus_clinical_lite0.yaml", "whole_frame": "bus_clinical.yaml",
                                      "localised": "bus_clinical_localised.yaml"}),
    ("bus_clinical_lite0_quartet.yaml", {"lite0": "bus_clinical_lite0.yaml",
                                         "lite0_localised": "bus_clinical_lite0_localised.yaml",
                                         "whole_frame": "bus_clinical.yaml",
                                         "localised": "bus_clinical_localised.yaml"}),
])
def test_the_shipped_recipes_are_the_shipped_configs(recipe, members):
    loaded = load_ensemble_recipe(CONFIGS / recipe)
    assert list(loaded.members) == list(members)
    for name, config in members.items():
        assert loaded.members[name] == load_config(CONFIGS / config)
