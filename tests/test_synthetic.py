"""The synthetic cohort: exact, calibrated oracle; every modality informative; reproducible files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from breastfusion.data.manifest import load_cohort
from breastfusion.data.synthetic.cohort import generate_cohort, load_oracle
from breastfusion.data.synthetic.latents import MODALITY_LATENTS, oracle_posterior, sample_latents


def test_oracle_posterior_is_calibrated():
    rng = np.random.default_rng(11)
    latents = sample_latents(60_000, prevalence=0.42, rng=rng)
    p = oracle_posterior(latents, prevalence=0.42)
    y = latents["label"].to_numpy()
    bins = np.quantile(p, np.linspace(0, 1, 11))
    idx = np.clip(np.digitize(p, bins[1:-1]), 0, 9)
    observed = np.bincount(idx, weights=y, minlength=10)
    expected = np.bincount(idx, weights=p, minlength=10)
    variance = np.bincount(idx, weights=p * (1 - p), minlength=10)
    # Hosmer-Lemeshow-style statistic; a miscalibrated posterior (e.g. a wrong prior) fails it by far.
    chi2 = float(((observed - expected) ** 2 / variance).sum())
    assert stats.chi2.sf(chi2, df=10) > 0.001, chi2
    # The same check with a wrong prior must fail: the test has power.
    wrong = oracle_posterior(latents, prevalence=0.3)
    expected_w = np.bincount(idx, weights=wrong, minlength=10)
    chi2_w = float(((observed - expected_w) ** 2 / np.bincount(idx, weights=wrong * (1 - wrong), minlength=10)).sum())
    assert stats.chi2.sf(chi2_w, df=10) < 1e-6


def test_each_modality_carries_signal_and_fusion_adds_to_each():
    rng = np.random.default_rng(5)
    latents = sample_latents(40_000, prevalence=0.42, rng=rng)
    y = latents["label"]
    full = roc_auc_score(y, oracle_posterior(latents, prevalence=0.42))
    for modality, observed in MODALITY_LATENTS.items():
        auc = roc_auc_score(y, oracle_posterior(latents, prevalence=0.42, observed=observed))
        assert 0.65 < auc < full - 0.04, (modality, auc, full)


@pytest.mark.parametrize("modality", ["mammography", "ultrasound"])
def test_rendered_images_carry_signal(small_cohort_dir, modality):
    """Even a linear model on 16-px thumbnails separates the classes above chance."""
    extra = generate_cohort(small_cohort_dir.parent / f"signal_{modality}", n_subjects=300, seed=8, image_px=64)
    rows = extra.manifest[extra.manifest["modality"] == modality].drop_duplicates("subject_id")
    thumbnails = [Image.open(extra.root / p).convert("L").resize((16, 16), Image.Resampling.BILINEAR, reducing_gap=2.0)
                  for p in rows["path"]]  # the cohort's PNGs are square 8-bit greyscale
    x = np.stack([np.asarray(t) for t in thumbnails]).reshape(len(rows), -1) / 255.0
    y = (rows["label"] == "malignant").astype(int).to_numpy()
    scores = cross_val_predict(LogisticRegression(C=0.05, max_iter=2000), x, y, cv=5, method="predict_proba")[:, 1]
    assert roc_auc_score(y, scores) > 0.6


def test_clinical_table_carries_signal(small_cohort_dir):
    extra = generate_cohort(small_cohort_dir.parent / "signal_clinical", n_subjects=400, seed=9, image_px=32)
    table = extra.clinical.merge(extra.truth[["subject_id", "label"]], on="subject_id")
    x = pd.get_dummies(table.drop(columns=["subject_id", "label"]), dtype=float).to_numpy()
    x = (x - x.mean(0)) / x.std(0)
    scores = cross_val_predict(LogisticRegression(), x, table["label"], cv=5, method="predict_proba")[:, 1]
    assert roc_auc_score(table["label"], scores) > 0.62


def test_same_seed_same_cohort(tmp_path):
    a = generate_cohort(tmp_path / "a", n_subjects=12, seed=4, image_px=32)
    b = generate_cohort(tmp_path / "b", n_subjects=12, seed=4, image_px=32)
    c = generate_cohort(tmp_path / "c", n_subjects=12, seed=5, image_px=32)
    pd.testing.assert_frame_equal(a.truth, b.truth)
    for rel in a.manifest["path"]:
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes()
    assert not a.truth["label"].equals(c.truth["label"]) or not a.truth["age"].equals(c.truth["age"])


def test_cohort_files_follow_the_contract(small_cohort_dir):
    cohort = load_cohort(small_cohort_dir)
    oracle = load_oracle(small_cohort_dir)
    assert oracle is not None and len(oracle.posterior()) == 60
    assert set(cohort.manifest["modality"]) == {"mammography", "ultrasound"}
    assert cohort.modalities == ("mammography", "ultrasound", "clinical")
    views = cohort.manifest[cohort.manifest["modality"] == "mammography"].groupby("subject_id")["view"].apply(set)
    assert all(v == {"CC", "MLO"} for v in views)
    assert len(cohort.clinical) == 60
    assert "label" not in cohort.clinical.columns  # the clinical table never carries the target


def test_missing_rate_keeps_an_image_modality(tmp_path):
    cohort = generate_cohort(tmp_path, n_subjects=80, seed=2, image_px=32, missing_rate=0.4)
    per_subject = cohort.manifest.groupby("subject_id")["modality"].apply(set)
    assert len(per_subject) == 80  # every subject keeps at least one image
    assert (per_subject.apply(len) == 1).sum() > 10  # and many lost one modality
    assert 30 < len(cohort.clinical) < 70


def test_prevalence_and_frames(tmp_path):
    cohort = generate_cohort(tmp_path, n_subjects=400, seed=1, image_px=32, prevalence=0.2, us_frames=2)
    assert abs(cohort.truth["label"].mean() - 0.2) < 0.06
    frames = cohort.manifest[cohort.manifest["modality"] == "ultrasound"].groupby("subject_id").size()
    assert (frames == 2).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"n_subjects": 5}, "n_subjects"),
    ({"missing_rate": 1.0}, "missing_rate"),
    ({"us_frames": 0}, "us_frames"),
    ({"prevalence": 1.5}, "prevalence"),
])
def test_generator_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_cohort(tmp_path, **kwargs)
