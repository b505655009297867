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
