"""Stage 2 (stacking on deep features), shared work between variants, and the ablation grid."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import StackingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.neural_network import MLPClassifier
from typer.testing import CliRunner

import breastfusion.experiment.demo as demo_module
from breastfusion.experiment.ablation import ABLATION_COLUMNS, expand_ablation
from breastfusion.cli.main import app
from breastfusion.config import load_config
from breastfusion.data.manifest import load_cohort
from breastfusion.experiment.crossval import MissingModalityError, check_modalities, cross_validate, network_spec
from breastfusion.evaluation.splits import subject_folds
from breastfusion.models.stage2 import Stage2Ensemble, fit_learner, grouped_splits, make_learner

from .conftest import TINY_MODEL, TINY_TRAINING

TINY_STAGE2 = {"n_estimators": 20, "inner_folds": 3}


def _config(variants, **extra):
    return load_config(None, variants=variants, model=TINY_MODEL, training={**TINY_TRAINING, "finetune_epochs": 1},
                       cv={"n_splits": 3, "bootstrap": 100}, stage2=TINY_STAGE2, **extra)


def test_stacking_is_the_papers_ensemble_with_subject_grouped_inner_folds():
    cfg = load_config(None).stage2
    y = np.array([0, 1] * 20)
    groups = np.repeat(np.arange(20), 2)  # two lesions per subject
    model = make_learner("stacking", cfg, y=y, groups=groups)
    assert isinstance(model, StackingClassifier) and isinstance(model.final_estimator, MLPClassifier)
    assert [name for name, _ in model.estimators] == ["logistic", "svm", "random_forest", "extra_trees"]
    for fit, held in model.cv:
        assert not set(groups[fit]) & set(groups[held])  # no subject on both sides of an inner split
    with pytest.raises(ValueError, match="stage-2 learner should be one of"):
        make_learner("xgboost", cfg, y=y, groups=groups)


def test_one_ensemble_serves_every_learner_with_out_of_fold_calibration():
    cfg = load_config(None, stage2=TINY_STAGE2).stage2
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    x = rng.normal(size=(60, 5)) + y[:, None] * 0.8
    groups = np.arange(60)
    ensemble = Stage2Ensemble(cfg, x, y, groups)
    new = rng.normal(size=(10, 5))
    for name in ("logistic", "svm", "random_forest", "extra_trees"):
        # the stack's base learner is the learner fitted alone on the same rows
        np.testing.assert_allclose(ensemble.predict(name, new),
                                   fit_learner(name, cfg, x, y, groups).predict_proba(new)[:, 1])
    stack = make_learner("stacking", cfg, y=y, groups=groups).fit(x, y)
    np.testing.assert_allclose(ensemble.predict("stacking", new), stack.predict_proba(new)[:, 1])
    # calibration scores are out-of-inner-fold: a forest's in-sample scores separate the classes almost perfectly
    in_sample = ensemble.model("random_forest").predict_proba(x)[:, 1]
    assert roc_auc_score(y, in_sample) > 0.98 > roc_auc_score(y, ensemble.calibration("random_forest")) + 0.1
    assert ensemble.calibration("stacking").shape == (60,)
    with pytest.raises(ValueError, match="should be one of"):
        ensemble.calibration("knn")


def test_grouped_splits_fall_back_to_fewer_folds_for_a_rare_class():
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    splits = grouped_splits(y, np.arange(8), n_splits=5, seed=0)
    assert len(splits) == 2 and all(y[held].sum() == 1 for _, held in splits)


def test_permuting_one_test_folds_labels_leaves_its_predictions_unchanged(small_cohort_dir):
    """No information from a test fold reaches stage 1 or stage 2 of that fold."""
    cohort = load_cohort(small_cohort_dir)
    config = _config({"us": ["ultrasound"], "stack": {"modalities": ["ultrasound", "clinical"], "stage2": "stacking"}})
    lesions = cohort.lesions
    folds = subject_folds(lesions, n_splits=3, seed=0)
    reference = cross_validate(cohort, config, folds=folds).predictions

    _, test = folds[1]
    shuffled_subjects = set(lesions.iloc[test]["subject_id"])
    permuted = cohort.lesions.copy()
    rng = np.random.default_rng(0)
    permuted.loc[permuted.index[test], "y"] = rng.permutation(permuted.iloc[test]["y"].to_numpy())
    assert (permuted["y"].to_numpy() != lesions["y"].to_numpy()).any()  # the permutation changed labels

    class Permuted:  # the cohort with fold 1's labels permuted
        def __getattr__(self, name):
            return permuted if name == "lesions" else getattr(cohort, name)

    again = cross_validate(Permuted(), config, folds=folds).predictions
    reference, again = reference.drop(columns="y"), again.drop(columns="y")
    in_fold = reference["subject_id"].isin(shuffled_subjects)
    pd.testing.assert_frame_equal(reference[in_fold], again[in_fold])
    # control: the other folds trained on the permuted labels, so their predictions moved
    assert not np.allclose(reference.loc[~in_fold, "prob"], again.loc[~in_fold, "prob"])


def test_a_variant_gives_the_same_numbers_alone_or_in_a_grid(small_cohort_dir, tmp_path):
    """Sharing networks between variants changes the cost, never the numbers."""
    cohort = load_cohort(small_cohort_dir)
    grid = _config({"us": ["ultrasound"], "fused": ["ultrasound", "clinical"],
                    "svm": {"modalities": ["ultrasound", "clinical"], "stage2": "svm"},
                    "logistic": {"modalities": ["ultrasound", "clinical"], "stage2": "logistic"}})
    together = cross_validate(cohort, grid, checkpoint_dir=tmp_path / "grid")
    alone = cross_validate(cohort, _config({"svm": {"modalities": ["ultrasound", "clinical"], "stage2": "svm"}}))
    pd.testing.assert_frame_equal(together.predictions[together.predictions["variant"] == "svm"].reset_index(drop=True),
                                  alone.predictions)
    # us, the clinical network fused starts from, and fused: three networks serve four variants
    assert len(list((tmp_path / "grid" / "networks").iterdir())) == 3
    assert together.networks["svm"] == together.networks["logistic"] == together.networks["fused"]
    assert network_spec(grid, "us").key == network_spec(grid, "fused").init[0].key
    # the stage-2 learners differ from each other and from the network's own head
    wide = together.predictions.pivot(index="lesion_id", columns="variant", values="prob")
    assert not np.allclose(wide["svm"], wide["logistic"]) and not np.allclose(wide["svm"], wide["fused"])
    # stage-2 calibration scores are out-of-inner-fold, and feature-group importance is recorded
    svm_calib = together.calibration[together.calibration["variant"] == "svm"]
    assert set(svm_calib["split"]) == {"training-inner-cv"}
    assert set(together.stage2_importance["variant"]) == {"svm", "logistic"}
    # concat fusion: the head's input is the branch blocks, so the feature groups are the branches
    assert set(together.stage2_importance["group"]) == {"ultrasound", "clinical"}


def test_expand_ablation_one_factor_at_a_time():
    config = load_config("configs/mpm_mu.yaml")
    expanded, changes = expand_ablation(config)
    assert changes["mpm_mu"] == "reference" and expanded.ablation.reference == "mpm_mu"
    assert expanded.variant_model("mammography.attention=none").mammography.attention == "none"
    assert expanded.variant_model("mammography.attention=none").ultrasound.attention == "eca"  # unchanged
    assert expanded.variant("stage2=svm").stage2 == "svm"
    assert expanded.modalities("modalities=ultrasound") == ("ultrasound",)
    # the reference's stage-1 head is already a listed variant: reused under its own name, not added twice
    assert "stage2=none" not in expanded.variants and changes["fused_head"] == "stage2=none"
    with_fusion = config.model_copy(update={"ablation": config.ablation.model_copy(
        update={"fusion": ["concat", "gated", "late"]})})
    expanded, changes = expand_ablation(with_fusion)
    assert "fusion=concat" not in expanded.variants  # the reference's own fusion adds nothing
    assert [expanded.variant_model(f"fusion={f}").fusion for f in ("gated", "late")] == ["gated", "late"]
    assert expanded.variant("fusion=gated").stage2 == "stacking"  # everything else stays the reference's
    # the fused networks of both start from the same single-modality networks (linear heads)
    assert network_spec(expanded, "fusion=gated").init == network_spec(expanded, "mpm_mu").init
    bad = config.model_copy(update={"ablation": config.ablation.model_copy(update={"attention": {"mammography": ["none"]},
                                                                                   "reference": "ultrasound"})})
    with pytest.raises(ValueError, match="has no mammography branch"):
        expand_ablation(bad)


def test_bus_clinical_config_compares_encoders_with_class_aware_sampling():
    config = load_config("configs/bus_clinical.yaml")
    assert config.training.sampler == "balanced" and config.cv.n_splits == 5
    expanded, changes = expand_ablation(config)
    encoders = {expanded.variant_model(v).ultrasound.encoder for v in expanded.variants if "encoder" in v}
    assert {"convnext_atto", "resnet18", "efficientnet_b0", "densenet121", "vit_tiny_patch16_224",
            "mobilenetv3_small_100"} <= encoders
    assert expanded.variant_model("fused").ultrasound.encoder == "resnet18_half"
    assert [expanded.modalities(v) for v in ("clinical", "ultrasound", "fused", "fused_network")] == [
        ("clinical",), ("ultrasound",), ("ultrasound", "clinical"), ("ultrasound", "clinical")]
    # the reference is score-level fusion; the grid's fusion axis adds the jointly trained fusions
    assert expanded.variant_model("fused").fusion == "score"
    assert {expanded.variant_model(v).fusion for v in expanded.variants} >= {"score", "concat", "gated", "late"}


def test_a_config_needing_a_missing_modality_fails_up_front(tmp_path):
    from breastfusion.data.synthetic.cohort import generate_cohort

    generate_cohort(tmp_path / "c", n_subjects=12, seed=1, image_px=32)
    manifest = pd.read_csv(tmp_path / "c" / "manifest.csv")
    manifest[manifest["modality"] == "ultrasound"].to_csv(tmp_path / "c" / "manifest.csv", index=False)
    cohort = load_cohort(tmp_path / "c")
    with pytest.raises(MissingModalityError, match="needs \\['mammography'\\]"):
        check_modalities(cohort, load_config("configs/mpm_mu.yaml"))


def test_ablate_cli_writes_the_table(tmp_path, monkeypatch):
    monkeypatch.setitem(demo_module.QUICK, "synthetic", {"n_subjects": 48, "image_px": 64})
    monkeypatch.setitem(demo_module.QUICK, "training", {**TINY_TRAINING, "finetune_epochs": 1})
    monkeypatch.setitem(demo_module.QUICK, "cv", {"bootstrap": 100, "n_splits": 3})
    monkeypatch.setitem(demo_module.QUICK, "model", {"mammography": {**TINY_MODEL["mammography"], "attention": "cbam"},
                                                     "ultrasound": {**TINY_MODEL["ultrasound"], "attention": "eca"}})
    monkeypatch.setitem(demo_module.QUICK, "stage2", TINY_STAGE2)
    config = tmp_path / "small.yaml"
    config.write_text("name: small\nvariants:\n  us: [ultrasound]\n  full:\n    modalities: [mammography, ultrasound]\n"
                      "    stage2: stacking\nablation:\n  modalities: [[mammography]]\n  attention:\n"
                      "    ultrasound: [none]\n  stage2: [logistic]\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["ablate", str(config), "--dataset", "synthetic", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "ablation.csv")
    assert list(table.columns) == ABLATION_COLUMNS
    assert list(table["variant"]) == ["us", "full", "modalities=mammography", "ultrasound.attention=none",
                                      "stage2=logistic"]
    assert table.loc[table["variant"] == "full", "delong_p"].isna().all()
    assert table.loc[table["variant"] != "full", "delong_p"].between(0, 1).all()
    assert (table["auc_ci_low"] <= table["auc"]).all() and (table["auc"] <= table["auc_ci_high"]).all()
    results = json.loads((out / "results.json").read_text())
    assert results["reference_variant"] == "full" and len(results["ablation"]) == 5
    assert results["variants"]["full"]["stage2_feature_importance"]
    assert "| modalities=mammography |" in (out / "ablation.md").read_text()
    bad = CliRunner().invoke(app, ["ablate", str(config), "--dataset", "imagenet", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--dataset should be `synthetic`" in bad.output


def test_stage2_inner_folds_group_by_the_outer_folds_group(small_cohort_dir, tmp_path, monkeypatch):
    """Issue 14's leak: stage 2's inner folds grouped by subject while the outer folds grouped by cv_group, so
    near-duplicates of two subjects could straddle an inner split. They now get the outer folds' group."""
    import shutil

    import breastfusion.experiment.crossval as crossval
    from breastfusion.models.stage2 import Stage2Ensemble

    root = tmp_path / "grouped"
    shutil.copytree(small_cohort_dir, root)
    manifest = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    subjects = sorted(manifest["subject_id"].unique())
    pair = {s: f"g{i // 2}" for i, s in enumerate(subjects)}  # two subjects per duplicate group
    manifest["cv_group"] = manifest["subject_id"].map(pair)
    manifest.to_csv(root / "manifest.csv", index=False)
    seen = []

    class Recording(Stage2Ensemble):
        def __init__(self, cfg, features, y, groups):
            seen.append(np.asarray(groups))
            super().__init__(cfg, features, y, groups)
            for fit, held in self.stack.cv:
                assert not set(np.asarray(groups)[fit]) & set(np.asarray(groups)[held])

    monkeypatch.setattr(crossval, "Stage2Ensemble", Recording)
    config = load_config(None, variants={"s2": {"modalities": ["ultrasound"], "stage2": "logistic"}},
                         model=TINY_MODEL, training={**TINY_TRAINING, "epochs": 1}, cv={"n_splits": 3})
    cross_validate(load_cohort(root), config)
    assert len(seen) == 3 and all(set(g) <= set(pair.values()) for g in seen)
