"""The real-data recipe pieces: test-time flips, warm-up, score-level fusion, and a dataset's own split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from breastfusion.config import ConfigError, load_config
from breastfusion.data.manifest import load_cohort
from breastfusion.experiment.crossval import cross_validate, fold_positions
from breastfusion.evaluation.splits import SplitError, official_split
from breastfusion.models.network import build_network
from breastfusion.models.score_fusion import average_scores, fit_clinical_model
from breastfusion.data.transforms import flip_images
from breastfusion.training.module import LesionClassifier, tta_logits

from .conftest import TINY_MODEL, TINY_TRAINING
from .test_models import MODALITIES, _batch

SCORE_VARIANTS = {"clinical": ["clinical"], "ultrasound": ["ultrasound"],
                  "fused_score": {"modalities": ["ultrasound", "clinical"], "model": {"fusion": "score"}}}


# -- test-time augmentation and the schedule -------------------------------------------------------------------
def test_hflip_tta_is_the_mean_of_the_image_and_its_mirror():
    torch.manual_seed(0)
    net = build_network(MODALITIES, load_config(None, model=TINY_MODEL).model, 5).eval()
    batch = _batch()
    with torch.no_grad():
        expected = (net(batch) + net(flip_images(batch))) / 2
        assert torch.allclose(tta_logits(net, batch, "hflip"), expected, atol=1e-6)
        assert torch.equal(tta_logits(net, batch, "none"), net(batch))
        # flip_images mirrors images only; masks and clinical values are untouched
        flipped = flip_images(batch)
        assert torch.equal(flipped["ultrasound"], batch["ultrasound"].flip(-1))
        assert torch.equal(flipped["clinical"], batch["clinical"])
        assert torch.equal(flipped["ultrasound_views"], batch["ultrasound_views"])
    with pytest.raises(ValueError, match="tta should be one of"):
        tta_logits(net, batch, "vflip")


class _LeftMinusRight(torch.nn.Module):
    """A 'network' whose logit is the left half's mean minus the right half's: mirror-antisymmetric."""

    def forward(self, batch):
        x = batch["ultrasound"]
        half = x.shape[-1] // 2
        return x[..., :half].mean(dim=(1, 2, 3, 4)) - x[..., half:].mean(dim=(1, 2, 3, 4))


def test_hflip_tta_cancels_a_mirror_antisymmetric_score():
    batch = {"ultrasound": torch.rand(3, 1, 1, 8, 8), "ultrasound_views": torch.ones(3, 1, dtype=torch.bool)}
    assert _LeftMinusRight()(batch).abs().max() > 0.01
    assert tta_logits(_LeftMinusRight(), batch, "hflip").abs().max() < 1e-6


def test_warmup_rises_linearly_then_decays_by_cosine():
    module = LesionClassifier(torch.nn.Linear(2, 1), lr=1e-3, weight_decay=0.0, epochs=10, warmup_epochs=2)
    setup = module.configure_optimizers()
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(1e-4) and rates[2] == pytest.approx(1e-3)
    assert rates[1] > rates[0] and all(a > b for a, b in zip(rates[2:], rates[3:]))
    plain = LesionClassifier(torch.nn.Linear(2, 1), lr=1e-3, weight_decay=0.0, epochs=10).configure_optimizers()
    assert plain["optimizer"].param_groups[0]["lr"] == pytest.approx(1e-3)


# -- score-level fusion -----------------------------------------------------------------------------------------
def test_average_scores_falls_back_to_the_modality_that_is_there():
    image, clinical = np.array([0.2, 0.8, 0.6, 0.4]), np.array([0.6, 0.2, np.nan, 0.9])
    out = average_scores(image, clinical, image_present=np.array([True, True, True, False]),
                         clinical_present=np.array([True, True, False, True]))
    assert out == pytest.approx([0.4, 0.5, 0.6, 0.9])


def test_clinical_calibration_scores_never_come_from_a_model_that_saw_the_group():
    """Every row's group is two identical rows; with grouping, a row's twin is never in the fit of its score."""
    rng = np.random.default_rng(0)
    n = 60
    base = rng.normal(size=(n, 3))
    y = rng.integers(0, 2, n)
    features, labels, groups = np.repeat(base, 2, axis=0), np.repeat(y, 2), np.repeat(np.arange(n), 2)
    features = features + np.repeat(labels[:, None] * 0.0, 1, axis=1)  # labels carry no signal at all
    model, oof = fit_clinical_model("gradient_boosting", features, labels, groups, inner_folds=4)
    assert oof.shape == (2 * n,) and np.all((oof >= 0) & (oof <= 1))
    # a memorising learner fed its own group would score its in-sample rows near perfectly
    in_sample = roc_auc_score(labels, model.predict_proba(features)[:, 1])
    assert roc_auc_score(labels, oof) < 0.7 < in_sample


@pytest.fixture(scope="module")
def score_run(small_cohort_dir):
    cohort = load_cohort(small_cohort_dir)
    config = load_config(None, variants=SCORE_VARIANTS, model=TINY_MODEL, training=TINY_TRAINING,
                         cv={"n_splits": 3})
    return cohort, config, cross_validate(cohort, config)


def test_score_fusion_shares_the_image_network_and_averages_its_probability(score_run):
    cohort, config, cv = score_run
    assert cv.networks["fused_score"] == cv.networks["ultrasound"]  # no network of its own
    pred = cv.predictions.set_index(["variant", "lesion_id"])["prob"]
    image = pred.loc["ultrasound"]
    fused = pred.loc["fused_score"].loc[image.index]
    lesions = cohort.lesions.set_index("lesion_id")
    y = lesions["y"].to_numpy()
    # the clinical learner's part, recovered from the average, is one probability per subject in [0, 1]
    clinical = 2 * fused - image
    assert clinical.between(-1e-9, 1 + 1e-9).all()
    assert not np.allclose(fused, image)
    used = cv.predictions[cv.predictions["variant"] == "fused_score"]["modalities_used"]
    assert set(used) <= {"ultrasound;clinical", "clinical", "ultrasound"} and "ultrasound;clinical" in set(used)
    assert len(y) == len(image)


def test_score_fusion_test_predictions_do_not_move_when_test_labels_do(small_cohort_dir, score_run, tmp_path):
    """The clinical learner and its inner CV see training folds only."""
    cohort, config, cv = score_run
    folds = [(p.train, p.test) for p in fold_positions(cohort, config)[0]]
    manifest = pd.read_csv(Path(small_cohort_dir) / "manifest.csv", dtype=str, keep_default_na=False)
    test = set(cohort.lesions.iloc[folds[0][1]]["lesion_id"])
    flip = manifest["lesion_id"].isin(test)
    manifest.loc[flip, "label"] = manifest.loc[flip, "label"].map({"benign": "malignant", "malignant": "benign"})
    root = tmp_path / "flipped"
    shutil.copytree(small_cohort_dir, root)
    manifest.to_csv(root / "manifest.csv", index=False)
    other = cross_validate(load_cohort(root), config.model_copy(update={"variants": {
        "fused_score": config.variants["fused_score"]}}), folds=folds)
    a = cv.predictions[(cv.predictions["variant"] == "fused_score") & (cv.predictions["fold"] == 0)]
    b = other.predictions[other.predictions["fold"] == 0]
    assert np.allclose(a["prob"].to_numpy(), b["prob"].to_numpy(), atol=1e-6)


def test_score_fusion_needs_clinical_and_an_image():
    config = load_config(None, variants={"bad": {"modalities": ["ultrasound"], "model": {"fusion": "score"}}})
    from breastfusion.experiment.crossval import network_spec

    with pytest.raises(ValueError, match="needs clinical and an image modality"):
        network_spec(config, "bad")
    with pytest.raises(ConfigError, match="fusion"):
        load_config(None, model={"fusion": "average"})


# -- a dataset's own split --------------------------------------------------------------------------------------
def _with_split(source: Path, target: Path, parts: dict[str, str] | None = None) -> Path:
    shutil.copytree(source, target)
    manifest = pd.read_csv(source / "manifest.csv", dtype=str, keep_default_na=False)
    subjects = sorted(manifest["subject_id"].unique())
    parts = parts or {s: ("train" if i % 5 < 3 else "val" if i % 5 == 3 else "test") for i, s in enumerate(subjects)}
    manifest["split"] = manifest["subject_id"].map(parts)
    manifest.to_csv(target / "manifest.csv", index=False)
    return target


@pytest.mark.parametrize("edit, pattern", [
    (lambda m: m.drop(columns="split"), "has no column 'split'"),
    (lambda m: m.assign(split=m["split"].where(m.index != 3, "holdout")), "line 5: 'holdout'"),
    (lambda m: m.assign(split=m["split"].where(m.index != 0, "test" if m["split"][0] != "test" else "train")),
     "two parts|in \\["),
    (lambda m: m.assign(split="train"), "0 test lesions"),
])
def test_official_split_errors_name_the_problem(small_cohort_dir, tmp_path, edit, pattern):
    root = _with_split(small_cohort_dir, tmp_path / "c")
    manifest = edit(pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False))
    cohort = load_cohort(root)
    with pytest.raises(SplitError, match=pattern):
        official_split(manifest, cohort.lesions, "split")


def test_official_split_trains_on_train_validates_on_val_and_reports_on_test(small_cohort_dir, tmp_path):
    from breastfusion.bundle import export_bundle, load_bundle
    from breastfusion.experiment.run import run_experiment

    root = _with_split(small_cohort_dir, tmp_path / "c")
    cohort = load_cohort(root)
    part = cohort.manifest.drop_duplicates("subject_id").set_index("subject_id")["split"]
    config = load_config(None, variants={"ultrasound": ["ultrasound"]}, model=TINY_MODEL,
                         training={**TINY_TRAINING, "tta": "hflip"}, cv={"split_column": "split"})
    [[fold]] = fold_positions(cohort, config)
    lesions = cohort.lesions
    assert set(part[lesions.iloc[fold.fit]["subject_id"]]) == {"train"}
    assert set(part[lesions.iloc[fold.validation]["subject_id"]]) == {"val"}
    assert set(part[lesions.iloc[fold.test]["subject_id"]]) == {"test"}
    run_experiment(cohort, config, tmp_path / "run")
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv", dtype={"subject_id": str})
    calibration = pd.read_csv(tmp_path / "run" / "calibration_predictions.csv", dtype={"subject_id": str})
    assert set(part[predictions["subject_id"]]) == {"test"}
    assert set(calibration["split"]) == {"validation"} and set(part[calibration["subject_id"]]) == {"val"}
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["variants"]["ultrasound"]["n_subjects"] == int((part == "test").sum())
    # the exported bundle (one network) reproduces the test predictions, test-time flips included
    export_bundle(tmp_path / "run", tmp_path / "bundle")
    subjects = load_bundle(tmp_path / "bundle").predict(root).set_index("subject_id")
    run_probs = predictions.groupby("subject_id")["prob"].mean()
    assert np.allclose(subjects.loc[run_probs.index, "prob"], run_probs, atol=1e-5)


def test_a_score_fusion_variant_exports_and_its_bundle_reproduces_the_run(small_cohort_dir, tmp_path):
    from breastfusion.bundle import export_bundle, load_bundle
    from breastfusion.predict import predict_lesions
    from breastfusion.experiment.run import run_experiment

    cohort = load_cohort(small_cohort_dir)
    config = load_config(None, variants={k: SCORE_VARIANTS[k] for k in ("ultrasound", "fused_score")},
                         model=TINY_MODEL, training={**TINY_TRAINING, "tta": "hflip"}, cv={"n_splits": 3})
    run_experiment(cohort, config, tmp_path / "run")
    assert all((tmp_path / "run" / "checkpoints" / "fused_score" / f"fold{k}.score.skops").is_file()
               for k in range(3))
    export_bundle(tmp_path / "run", tmp_path / "bundle", variant="fused_score")
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.score_learners is not None and len(bundle.score_learners) == 3
    lesions = predict_lesions(bundle, small_cohort_dir)
    run = pd.read_csv(tmp_path / "run" / "predictions.csv", dtype={"subject_id": str, "lesion_id": str})
    run = run[run["variant"] == "fused_score"]
    held_out = lesions.merge(run[["fold", "lesion_id", "prob"]], on=["fold", "lesion_id"], suffixes=("", "_run"))
    assert len(held_out) == len(run)
    assert np.allclose(held_out["prob"], held_out["prob_run"], atol=1e-5)


def test_explain_passes_over_score_fusion_and_refuses_it_by_name():
    from types import SimpleNamespace

    from breastfusion.explain.runner import check_explainable, default_variant

    art = SimpleNamespace(config=load_config(None, variants=SCORE_VARIANTS))
    assert default_variant(art) == "ultrasound"
    with pytest.raises(ValueError, match="score-level fusion.*'clinical', 'ultrasound'"):
        check_explainable(art, "fused_score")
    check_explainable(art, "ultrasound")
