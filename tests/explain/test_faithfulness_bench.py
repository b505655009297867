"""bench/explain_faithfulness.py's paired comparison, on the per-image scores the explain runner writes."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from ..bench_scripts import load_bench


def _bench():
    return load_bench("explain_faithfulness")


def test_centre_prior_peaks_at_the_centre_and_is_symmetric():
    from breastfusion.explain.faithfulness import centre_heatmap

    heat = centre_heatmap((9, 9))
    assert np.unravel_index(heat.argmax(), heat.shape) == (4, 4) and heat.max() == pytest.approx(1.0)
    np.testing.assert_allclose(heat, heat[::-1, ::-1])
    np.testing.assert_allclose(heat, heat.T)


def test_paired_differences_match_the_per_image_scores(run_copy, tmp_path):
    from breastfusion.explain.runner import explain_run

    subjects = pd.read_csv(run_copy / "predictions.csv", dtype={"subject_id": str})["subject_id"].unique()[:3]
    explain_run(run_copy, subjects=list(subjects), method="gradcam", out=tmp_path / "x", update_run=False)
    scores = pd.read_csv(tmp_path / "x" / "faithfulness.csv")
    # one row per image and CAM method, eight per image for the random baseline
    us = scores[scores["modality"] == "ultrasound"]
    assert us.groupby("method").size().to_dict() == {"gradcam": 3, "gradcam++": 3, "scorecam": 3, "centre": 3,
                                                     "random": 24}
    rows = _bench().paired_differences(tmp_path / "x" / "faithfulness.csv", n_boot=200)
    assert {(r["method"], r["baseline"]) for r in rows} == {(m, b) for m in ("gradcam", "gradcam++", "scorecam")
                                                            for b in ("random", "centre")}
    row = next(r for r in rows if r["method"] == "scorecam" and r["baseline"] == "random")
    per_image = us.groupby(["lesion_id", "method"])["energy_in_mask"].mean().unstack()
    assert row["energy_diff"] == pytest.approx((per_image["scorecam"] - per_image["random"]).mean())
    assert row["energy_n"] == 3 and row["energy_ci"][0] <= row["energy_diff"] <= row["energy_ci"][1]
