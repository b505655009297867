"""External validation in `breastfusion predict`: figures on a labelled new cohort, and the shift warnings."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import fisher_exact, ks_2samp
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import precision_score, recall_score, roc_auc_score
from typer.testing import CliRunner

from breastfusion import export_bundle, load_bundle
from breastfusion.cli.main import app
from breastfusion.data.synthetic.cohort import generate_cohort
from breastfusion.evaluation.input_checks import MetricInputError
from breastfusion.evaluation.external import TRANSFER_ADVICE, decision_metrics, prevalence_shift, score_shift
from breastfusion.predict import external_validation, training_scores

from .conftest import TINY_MODEL


@pytest.fixture(scope="module")
def bundle_dir(small_cohort_dir, tmp_path_factory) -> Path:
    """A 2-fold ultrasound bundle trained on the 60-subject synthetic cohort (prevalence 0.42)."""
    from breastfusion.config import load_config
    from breastfusion.data.manifest import load_cohort
    from breastfusion.experiment.run import run_experiment

    out = tmp_path_factory.mktemp("run")
    config = load_config(None, name="tiny", manifest=small_cohort_dir, variants={"ultrasound": ["ultrasound"]},
                         model=TINY_MODEL, training={"epochs": 2, "batch_size": 16},
                         cv={"n_splits": 2, "bootstrap": 200})
    run_experiment(load_cohort(small_cohort_dir), config, out)
    return export_bundle(out, tmp_path_factory.mktemp("bundles") / "us")


def _cohort(tmp_path_factory, name: str, **kwargs) -> Path:
    root = tmp_path_factory.mktemp(name)
    with warnings.catch_warnings():  # the generator's oracle AUCs are undefined for a one-class modality subset
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        generate_cohort(root, image_px=64, masks=False, **kwargs)
    return root


@pytest.fixture(scope="module")
def new_cohort(tmp_path_factory) -> Path:
    """New subjects from the training cohort's distribution (another seed)."""
    return _cohort(tmp_path_factory, "new", n_subjects=40, seed=11)


@pytest.fixture(scope="module")
def malignant_cohort(tmp_path_factory) -> Path:
    """New subjects drawn with prevalence 0.97: nearly all malignant."""
    return _cohort(tmp_path_factory, "malignant", n_subjects=30, seed=12, prevalence=0.97)


def _predict(bundle: Path, cohort: Path, tmp_path: Path) -> tuple[str, pd.DataFrame, dict]:
    out, summary = tmp_path / "pred.csv", tmp_path / "summary.json"
    result = CliRunner().invoke(app, ["predict", str(bundle), str(cohort), "--out", str(out), "--json", str(summary)])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split()), pd.read_csv(out, dtype={"subject_id": str}), json.loads(
        summary.read_text())


def test_labelled_cohort_figures_equal_sklearns_on_the_written_csv(bundle_dir, new_cohort, tmp_path):
    output, written, summary = _predict(bundle_dir, new_cohort, tmp_path)
    y, called = written["y"].to_numpy(), (written["call"] == "malignant").astype(int).to_numpy()
    assert summary["labelled"] and summary["n_subjects"] == len(written) == 40
    assert summary["n_malignant"] == int(y.sum())
    assert summary["auc"] == pytest.approx(roc_auc_score(y, written["prob"]), abs=1e-12)
    low, high = summary["auc_ci"]
    assert low <= summary["auc"] <= high and high - low > 0
    at = summary["at_threshold"]
    assert at["sensitivity"] == pytest.approx(recall_score(y, called))
    assert at["specificity"] == pytest.approx(recall_score(1 - y, 1 - called))
    assert at["ppv"] == pytest.approx(precision_score(y, called))
    assert at["npv"] == pytest.approx(precision_score(1 - y, 1 - called))
    assert summary["predictions_csv"] == str(tmp_path / "pred.csv")
    # a summary and a short head of the table on screen, not 40 rows
    assert "External validation" in output and f"{summary['auc']:.3f}" in output
    assert f"first 10 of 40 subjects; all are in {tmp_path / 'pred.csv'}" in output
    assert sum(s in output for s in written["subject_id"]) == 10
    # prevalence against the training cohort's, by the documented rule
    train, shift = load_bundle(bundle_dir).meta["metrics"], summary["prevalence_shift"]
    k, n = int(y.sum()), len(y)
    p = fisher_exact([[k, n - k], [train["n_malignant"], train["n_subjects"] - train["n_malignant"]]]).pvalue
    assert shift["p_value"] == pytest.approx(p)
    assert shift["shifted"] == (p < 0.01 or abs(k / n - train["n_malignant"] / train["n_subjects"]) > 0.15)


def _summary_rows(output: str) -> dict[str, list[str]]:
    """The cells of each row of ``predict``'s printed summary table, by row label (a label rich wraps onto a
    second line is keyed by its first line, where the row's figures are)."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if line.lstrip().startswith("│") and len(cells) == 3 and cells[0]:
            rows[cells[0]] = cells[1:]
    return rows


def test_labelled_cohort_summary_prints_n_auc_with_ci_sensitivity_and_specificity(bundle_dir, new_cohort, tmp_path):
    """What a user reads on screen: n (malignant), AUC [95% CI], sensitivity and specificity, each equal to the
    figure recomputed from the written predictions (the CI: the JSON summary's bootstrap interval)."""
    out, summary_json = tmp_path / "pred.csv", tmp_path / "summary.json"
    result = CliRunner().invoke(app, ["predict", str(bundle_dir), str(new_cohort), "--out", str(out),
                                      "--json", str(summary_json)])
    assert result.exit_code == 0, result.output
    written, summary = pd.read_csv(out, dtype={"subject_id": str}), json.loads(summary_json.read_text())
    y, called = written["y"].to_numpy(), (written["call"] == "malignant").astype(int).to_numpy()
    rows = _summary_rows(result.output)
    assert rows["subjects (malignant)"][0] == f"{len(y)} ({int(y.sum())})"
    low, high = summary["auc_ci"]
    assert rows["AUC [95% CI]"][0] == f"{roc_auc_score(y, written['prob']):.3f} [{low:.3f}, {high:.3f}]"
    sensitivity = next(cells for label, cells in rows.items() if label.startswith("sensitivity"))
    specificity = next(cells for label, cells in rows.items() if label.startswith("specificity"))
    assert sensitivity[0] == f"{recall_score(y, called):.3f}"
    assert specificity[0] == f"{recall_score(1 - y, 1 - called):.3f}"


def test_prevalence_shift_warns_in_the_dict_the_log_and_the_console(bundle_dir, malignant_cohort, tmp_path,
                                                                      caplog):
    bundle = load_bundle(bundle_dir)
    predictions = bundle.predict(malignant_cohort)
    train = bundle.meta["metrics"]
    with caplog.at_level(logging.WARNING, logger="breastfusion.predict"):
        summary = external_validation(predictions, bundle)
    shift = summary["prevalence_shift"]
    k = int(predictions["y"].sum())
    assert shift["shifted"] and shift["prevalence_new"] == pytest.approx(k / len(predictions))
    assert shift["p_value"] == pytest.approx(fisher_exact(
        [[k, len(predictions) - k], [train["n_malignant"], train["n_subjects"] - train["n_malignant"]]]).pvalue)
    prevalence_warnings = [w for w in summary["warnings"] if w.startswith("prevalence")]
    assert len(prevalence_warnings) == 1 and TRANSFER_ADVICE in prevalence_warnings[0]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == summary["warnings"]
    output, _, written = _predict(bundle_dir, malignant_cohort, tmp_path)
    assert f"warning: {' '.join(prevalence_warnings[0].split())}" in output
    assert written["prevalence_shift"]["shifted"]


def test_score_shift_compares_the_subject_probabilities_with_the_training_subjects_scores(bundle_dir, new_cohort):
    bundle = load_bundle(bundle_dir)
    predictions = bundle.predict(new_cohort)
    reference = training_scores(bundle)
    # every calibration subject once, scored by each fold it calibrated (in-sample: both folds' training subjects)
    assert len(reference) == bundle.meta["metrics"]["n_subjects"] and reference["prob"].between(0, 1).all()
    summary = external_validation(predictions, bundle)
    expected = ks_2samp(predictions["prob"], reference["prob"])
    assert summary["score_shift"]["p_value"] == pytest.approx(expected.pvalue)
    assert summary["score_shift"]["median_training"] == pytest.approx(reference["prob"].median())
    # the same subjects with probabilities pushed towards malignant: the distribution test fires
    shifted = predictions.assign(prob=np.clip(predictions["prob"] + 0.5, 0, 1))
    summary = external_validation(shifted, bundle)
    score_warnings = [w for w in summary["warnings"] if "Kolmogorov-Smirnov" in w]
    assert summary["score_shift"]["shifted"] and len(score_warnings) == 1 and TRANSFER_ADVICE in score_warnings[0]
    assert f"median {summary['score_shift']['median_new']:.3f}" in score_warnings[0]
    assert set(bundle.calibration["split"]) == {"training"} and "in-sample" in score_warnings[0]


def test_unlabelled_cohort_prints_no_metrics_and_does_not_crash(bundle_dir, new_cohort, tmp_path):
    unlabelled = Path(shutil.copytree(new_cohort, tmp_path / "unlabelled"))
    pd.read_csv(new_cohort / "manifest.csv", dtype=str).drop(columns="label").to_csv(unlabelled / "manifest.csv",
                                                                                    index=False)
    output, written, summary = _predict(bundle_dir, unlabelled, tmp_path)
    assert "y" not in written and not summary["labelled"]
    assert summary["auc"] is None and summary["at_threshold"] is None and summary["prevalence_shift"] is None
    assert summary["score_shift"]["n_new"] == 40
    assert "AUC" not in output and "sensitivity" not in output and "no labels" in output


@pytest.mark.parametrize("call, match", [
    (lambda: decision_metrics([0, 1], [1]), r"shapes \(2,\) and \(1,\)"),
    (lambda: decision_metrics([0, 2], [0, 1]), r"y should hold 0/1 only, got values \[0, 2\]"),
    (lambda: prevalence_shift(10, 11, 50, 20), r"new cohort: 11 malignant of 10 subjects"),
    (lambda: score_shift([], [0.5]), r"new scores should be a non-empty array"),
    (lambda: score_shift([0.1, np.nan], [0.5]), r"1 non-finite"),
])
def test_bad_inputs_name_the_argument(call, match):
    with pytest.raises(MetricInputError, match=match):
        call()


def test_decision_metrics_with_one_class_keep_what_is_defined():
    out = decision_metrics([1, 1, 1, 1], [1, 1, 0, 1])
    assert out["sensitivity"] == 0.75 and out["ppv"] == 1.0 and out["npv"] == 0.0
    assert np.isnan(out["specificity"])  # no benign subject: tn + fp = 0
