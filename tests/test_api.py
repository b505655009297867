"""The notebook API: Experiment(config).fit(cohort) is `breastfusion run`, .export(dir) a loaded bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import breastfusion as bf
from breastfusion.config import ConfigError, ExperimentConfig

from .conftest import TINY_MODEL

#: two variants (the fused one is the exported reference), one epoch, two folds.
TINY = {"name": "api", "variants": {"fused": ["mammography", "ultrasound", "clinical"], "clinical": ["clinical"]},
        "model": TINY_MODEL, "training": {"epochs": 1, "batch_size": 16}, "cv": {"n_splits": 2, "bootstrap": 100}}


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("api-cohort")
    bf.generate_cohort(root, n_subjects=24, seed=11, image_px=32, masks=False)
    return root


@pytest.fixture(scope="module")
def fitted(cohort_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("api-run") / "run"
    experiment = bf.Experiment(TINY)
    return experiment, experiment.fit(cohort_dir, out), out


def test_fit_returns_the_run_folders_variant_results(fitted, cohort_dir):
    experiment, variants, out = fitted
    assert variants == json.loads((out / "results.json").read_text())["variants"]
    assert set(variants) == {"fused", "clinical"} and 0.0 <= variants["fused"]["auc"] <= 1.0
    assert experiment.run_dir == out and experiment.results["variants"] == variants
    assert experiment.config.manifest == cohort_dir.resolve()  # recorded, so export finds the cohort
    predictions = experiment.predictions
    assert set(predictions["variant"]) == {"fused", "clinical"}
    assert predictions["subject_id"].nunique() == 24 and predictions["prob"].between(0, 1).all()


def test_export_gives_a_bundle_that_predicts_the_cohort_folder(fitted, cohort_dir, tmp_path):
    experiment, _, _ = fitted
    bundle = experiment.export(tmp_path / "model")
    assert isinstance(bundle, bf.Bundle) and bundle.variant == "fused" and (tmp_path / "model").is_dir()
    subjects = bundle.predict(cohort_dir)
    assert len(subjects) == 24 and subjects["prob"].between(0, 1).all()
    assert experiment.export(tmp_path / "clin", variant="clinical").modalities == ("clinical",)


def test_config_forms_agree(tmp_path):
    from breastfusion.config import dump_config

    from_dict = bf.Experiment(TINY).config
    dump_config(from_dict, tmp_path / "c.yaml")
    assert isinstance(from_dict, ExperimentConfig)
    assert bf.Experiment(tmp_path / "c.yaml").config == from_dict
    assert bf.Experiment(str(tmp_path / "c.yaml")).config == from_dict
    assert bf.Experiment(from_dict).config is from_dict


@pytest.mark.parametrize("config, match", [
    ({"training": {"epochs": "many"}}, r"config dict: invalid configuration\n  - training\.epochs"),
    ({"trainng": {}}, r"  - trainng: Extra inputs are not permitted"),
    (42, "expected an ExperimentConfig, a dict of config keys or a YAML path, got int"),
])
def test_a_bad_config_raises_a_config_error_naming_the_key(config, match):
    with pytest.raises(ConfigError, match=match):
        bf.Experiment(config)


def test_bad_yaml_path_and_unfitted_use_are_clear(tmp_path):
    (tmp_path / "bad.yaml").write_text("cv:\n  n_splits: one\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid configuration\n  - cv\.n_splits"):
        bf.Experiment(tmp_path / "bad.yaml")
    experiment = bf.Experiment(TINY)
    with pytest.raises(RuntimeError, match=r"not fitted yet: call \.fit\(cohort\) first"):
        experiment.export(tmp_path / "model")
    with pytest.raises(ConfigError, match="no cohort"):
        experiment.fit()


def test_fit_on_a_manifest_dataframe_matches_the_folder_run(fitted, cohort_dir, tmp_path):
    import pandas as pd

    manifest = pd.read_csv(cohort_dir / "manifest.csv", dtype=str, keep_default_na=False)
    clinical = pd.read_csv(cohort_dir / "clinical.csv", dtype={"subject_id": str})
    experiment = bf.Experiment(TINY)
    variants = experiment.fit(manifest, tmp_path / "run", clinical=clinical, root=cohort_dir)
    assert (tmp_path / "run" / "cohort" / "manifest.csv").is_file()  # the cohort the run (and export) reads
    assert experiment.config.manifest == (tmp_path / "run" / "cohort").resolve()
    folder_experiment, folder_variants, _ = fitted
    assert variants["fused"]["auc"] == pytest.approx(folder_variants["fused"]["auc"], abs=1e-6)
    pd.testing.assert_frame_equal(experiment.predictions, folder_experiment.predictions, atol=1e-5)
    subjects = experiment.export(tmp_path / "model").predict(cohort_dir)  # images outside run/cohort/: allowed
    assert len(subjects) == 24 and subjects["prob"].between(0, 1).all()


def test_clinical_without_a_dataframe_is_refused(cohort_dir):
    with pytest.raises(TypeError, match="go with a manifest DataFrame"):
        bf.Experiment(TINY).fit(cohort_dir, clinical=object())


def test_an_ensemble_recipe_fits_its_members_and_exports_their_ensemble(cohort_dir, tmp_path):
    import yaml

    from breastfusion.ensemble_bundle import EnsembleBundle

    for name, seed in (("a", 0), ("b", 1)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**TINY, "name": name,
                                                               "training": {**TINY["training"], "seed": seed}}))
    recipe = tmp_path / "pair.yaml"
    recipe.write_text(yaml.safe_dump({"name": "pair", "members": {"a": "a.yaml", "b": "b.yaml"}}))
    experiment = bf.Experiment(recipe)
    assert experiment.recipe is not None and experiment.config.name == "pair"
    variants = experiment.fit(cohort_dir, tmp_path / "run")
    assert set(variants) == {"fused", "clinical"}
    for name in ("a", "b"):  # each member is an ordinary run folder on the same cohort
        member = json.loads((tmp_path / "run" / "members" / name / "results.json").read_text())
        assert member["name"] == name and member["manifest_sha256"] == experiment.results["manifest_sha256"]
    assert [m["name"] for m in experiment.results["ensemble"]["members"]] == ["a", "b"]
    bundle = experiment.export(tmp_path / "model")
    assert isinstance(bundle, EnsembleBundle) and bundle.variant == "fused"
    assert len(bundle.predict(cohort_dir)) == 24
