"""Bundles: export a run's variant, load it safely, apply it to new (possibly unlabelled, incomplete) cases."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from breastfusion import export_bundle, load_bundle
from breastfusion.bundle import BundleError
from breastfusion.cli.main import app
from breastfusion.data.manifest import ManifestError, load_cohort
from breastfusion.evaluation.summary import score_subjects
from breastfusion.predict import PREDICTION_COLUMNS
from breastfusion.data.transforms import prepare_batch
from breastfusion.experiment.run_artifacts import load_run

from .conftest import TINY_MODEL, assert_bundle_refuses_a_changed_then_a_missing

FUSED = ["mammography", "ultrasound", "clinical"]


@pytest.fixture(scope="module")
def run_dir(small_cohort_dir, tmp_path_factory) -> Path:
    """A 2-fold run: a fused network (Platt-recalibrated), the ultrasound network it starts from, and a stage-2
    learner on the fused network's features."""
    from breastfusion.config import load_config
    from breastfusion.experiment.run import run_experiment

    out = tmp_path_factory.mktemp("run")
    config = load_config(None, name="tiny", manifest=small_cohort_dir,
                         variants={"fused": FUSED, "ultrasound": ["ultrasound"],
                                   "fused_logistic": {"modalities": FUSED, "stage2": "logistic"}},
                         model=TINY_MODEL, training={"epochs": 1, "batch_size": 16},
                         cv={"n_splits": 2, "bootstrap": 100}, evaluation={"recalibration": "platt"},
                         stage2={"inner_folds": 2, "n_estimators": 10}, ablation={"reference": "fused"})
    run_experiment(load_cohort(small_cohort_dir), config, out)
    return out


@pytest.fixture(scope="module")
def bundle_dir(run_dir, tmp_path_factory) -> Path:
    return export_bundle(run_dir, tmp_path_factory.mktemp("bundles") / "fused")


@pytest.fixture(scope="module")
def lesions(bundle_dir, small_cohort_dir) -> pd.DataFrame:
    return load_bundle(bundle_dir).predict_lesions(small_cohort_dir)


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


def _cohort_copy(source: Path, target: Path, *, manifest=None, clinical=None) -> Path:
    """A copy of a cohort folder whose manifest / clinical table went through the given edits."""
    shutil.copytree(source, target)
    for name, edit in (("manifest.csv", manifest), ("clinical.csv", clinical)):
        if edit is not None:
            frame = pd.read_csv(target / name, dtype={"subject_id": str}, keep_default_na=False, na_values=[""])
            edit(frame).to_csv(target / name, index=False)
    return target


def _write_files_sha(bundle: Path, name: str) -> None:
    import hashlib

    meta = json.loads((bundle / "bundle.json").read_text())
    meta["files"][name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    (bundle / "bundle.json").write_text(json.dumps(meta))


def test_bundle_folder_holds_what_it_documents(bundle_dir, run_dir):
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    assert meta["variant"] == "fused" and meta["n_folds"] == 2 and meta["modalities"] == FUSED
    assert meta["manifest_sha256"] == results["manifest_sha256"]
    assert meta["metrics"]["auc"] == results["variants"]["fused"]["auc"]
    assert meta["evaluation"]["recalibration"] == "platt"
    assert sorted(meta["files"]) == ["calibration.csv", "clinical_fold0.skops", "clinical_fold1.skops",
                                     "config.yaml", "fold0.safetensors", "fold1.safetensors"]
    # the run's subject ids stay behind; the grouping of lesions into subjects does not
    calibration = pd.read_csv(bundle_dir / "calibration.csv", dtype=str)
    assert calibration["subject_id"].str.fullmatch(r"s\d{4}").all()
    run_ids = set(pd.read_csv(run_dir / "predictions.csv", dtype=str)["subject_id"])
    assert not run_ids & set(calibration["subject_id"]) and "S0" not in (bundle_dir / "calibration.csv").read_text()


def test_fold_lesion_probabilities_are_the_run_networks_outputs(bundle_dir, run_dir, lesions):
    """(a) each fold's lesion output equals the run's fold network recomputed independently through load_run."""
    art = load_run(run_dir)
    everyone = np.arange(len(art.lesions))
    for k in range(art.n_folds):
        net = art.network("fused", k)
        loader = torch.utils.data.DataLoader(art.dataset("fused", k, everyone), batch_size=16)
        with torch.no_grad():
            expected = torch.cat([torch.sigmoid(net(prepare_batch(b))) for b in loader]).numpy()
        got = lesions[lesions["fold"] == k].set_index("lesion_id").loc[art.lesions["lesion_id"], "prob"]
        np.testing.assert_allclose(got.to_numpy(), expected, atol=1e-5)


def test_held_out_fold_reproduces_the_runs_out_of_fold_predictions(bundle_dir, run_dir, lesions,
                                                                   small_cohort_dir):
    """(b) the fold that held a subject out gives the run's out-of-fold lesion prob and its subject score."""
    saved = pd.read_csv(run_dir / "predictions.csv", dtype={"subject_id": str, "lesion_id": str})
    saved = saved[saved["variant"] == "fused"]
    held = lesions.merge(saved[["lesion_id", "fold", "prob"]], on=["lesion_id", "fold"], suffixes=("", "_run"))
    assert len(held) == len(saved) == 60
    np.testing.assert_allclose(held["prob"], held["prob_run"], atol=1e-5)

    bundle = load_bundle(bundle_dir)
    calibration = pd.read_csv(run_dir / "calibration_predictions.csv", dtype={"subject_id": str})
    run_scores = score_subjects(saved, calibration[calibration["variant"] == "fused"], bundle.config.evaluation)
    ours = bundle.score(lesions).merge(run_scores, on=["fold", "subject_id"], suffixes=("", "_run"))
    assert len(ours) == 60
    for column in ("prob", "youden_threshold", "rule_out_threshold"):
        np.testing.assert_allclose(ours[column], ours[f"{column}_run"], atol=1e-5)
    assert (ours["conformal_decision"] == ours["conformal_decision_run"]).all()

    subjects = bundle.predict(small_cohort_dir)
    assert list(subjects.columns) == [*PREDICTION_COLUMNS, "y", "label"] and len(subjects) == 60
    folds = bundle.score(lesions).pivot(index="subject_id", columns="fold")
    np.testing.assert_allclose(subjects["prob"], folds["prob"].mean(axis=1).to_numpy())
    np.testing.assert_allclose(subjects["threshold"], folds["youden_threshold"].median(axis=1).to_numpy())
    assert (subjects["call"] == np.where(subjects["prob"] >= subjects["threshold"], "malignant", "benign")).all()
    votes = (folds["prob"] >= folds["youden_threshold"]).sum(axis=1).to_numpy()
    assert (subjects["fold_votes_malignant"].to_numpy() == votes).all()


def test_tampered_file_is_refused_naming_it(bundle_copy):
    """(c)"""
    assert_bundle_refuses_a_changed_then_a_missing(bundle_copy, "fold1.safetensors",
                                                   r"fold1\.safetensors: sha256 .* differs")


class Smuggled:
    """Not a type a clinical preprocessor file may hold."""

    def __init__(self):
        self.payload = [1, 2, 3]


@pytest.mark.parametrize("obj, refused", [
    (Smuggled(), "tests.test_bundle.Smuggled"),
    ({"f": eval}, "builtins.eval"),  # a builtins name, but a function: a crafted file could call it
    ({"f": np.load}, "numpy.load"),
])
def test_preprocessor_file_with_a_disallowed_type_is_refused(bundle_copy, obj, refused):
    """(d) the skops allowlist: nothing outside it is constructed, and the message names file and type."""
    import skops.io

    skops.io.dump(obj, bundle_copy / "clinical_fold0.skops")
    _write_files_sha(bundle_copy, "clinical_fold0.skops")
    with pytest.raises(BundleError, match=rf"clinical_fold0\.skops: refusing to load type\(s\) \['{refused}'\]"):
        load_bundle(bundle_copy)


def test_a_bundle_exported_before_the_clinical_module_rename_still_loads(bundle_copy, small_cohort_dir):
    """Bundles written while ClinicalPreprocessor lived in ``breastfusion.data.clinical`` name that module."""
    from .test_bundle_renames import as_exported_under

    before = load_bundle(bundle_copy).predict(small_cohort_dir)
    for k in range(2):
        path = bundle_copy / f"clinical_fold{k}.skops"
        path.write_bytes(as_exported_under(path.read_bytes(), "breastfusion.data.clinical",
                                           "breastfusion.data.clinical_features"))
        _write_files_sha(bundle_copy, path.name)
    assert b'"breastfusion.data.clinical"' in zipfile.ZipFile(bundle_copy / "clinical_fold0.skops").read("schema.json")
    pd.testing.assert_frame_equal(load_bundle(bundle_copy).predict(small_cohort_dir), before)


@pytest.mark.parametrize("blank", ["drop_column", "empty_values"])
def test_unlabelled_cases_are_predicted(bundle_dir, small_cohort_dir, tmp_path, lesions, blank):
    """(e) a manifest without labels predicts the same probabilities and reports no label columns."""
    edit = (lambda f: f.drop(columns="label")) if blank == "drop_column" else (lambda f: f.assign(label=""))
    cohort = _cohort_copy(small_cohort_dir, tmp_path / "new", manifest=edit)
    bundle = load_bundle(bundle_dir)
    got = bundle.predict_lesions(cohort)
    assert "y" not in got and "label" not in got
    np.testing.assert_allclose(got["prob"], lesions["prob"], atol=1e-6)
    subjects = bundle.predict(cohort)
    assert list(subjects.columns) == list(PREDICTION_COLUMNS) and subjects["prob"].between(0, 1).all()


def test_labels_are_still_required_for_training_and_consistent_when_optional(small_cohort_dir, tmp_path):
    cohort = _cohort_copy(small_cohort_dir, tmp_path / "new", manifest=lambda f: f.assign(
        label=np.where(np.arange(len(f)) == 1, "", f["label"])))  # row 1 is the second view of lesion S00-L1
    with pytest.raises(ManifestError, match=r"line 3, column 'label': empty"):
        load_cohort(cohort)
    with pytest.raises(ManifestError, match=r"S00-L1.*labelled on some rows and empty on others"):
        load_cohort(cohort, require_labels=False)


def test_stage2_variant_exports_and_reproduces_the_runs_predictions(run_dir, small_cohort_dir, tmp_path):
    """(f) A stage-2 variant's bundle carries each fold's fitted learner (skops, allowlisted like the
    preprocessors): the fold that held a lesion out gives the run's out-of-fold prob for it, so the network's
    deep features and the learner are applied as the run applied them. A run folder whose learner file is gone
    is refused, naming the folds and the exportable network variants; an unknown variant is refused."""
    bundle = load_bundle(export_bundle(run_dir, tmp_path / "stage2", variant="fused_logistic"))
    assert bundle.meta["stage2"] == "logistic" and len(bundle.stage2_learners) == 2
    assert sorted(p.name for p in bundle.root.glob("fold*.stage2.skops")) == ["fold0.stage2.skops",
                                                                             "fold1.stage2.skops"]
    lesions = bundle.predict_lesions(small_cohort_dir)
    saved = pd.read_csv(run_dir / "predictions.csv", dtype={"subject_id": str, "lesion_id": str})
    saved = saved[saved["variant"] == "fused_logistic"]
    held = lesions.merge(saved[["lesion_id", "fold", "prob"]], on=["lesion_id", "fold"], suffixes=("", "_run"))
    assert len(held) == 60
    np.testing.assert_allclose(held["prob"], held["prob_run"], atol=1e-5)
    network = load_bundle(export_bundle(run_dir, tmp_path / "fused", variant="fused")).predict_lesions(
        small_cohort_dir)
    assert not np.allclose(network["prob"], lesions["prob"], atol=1e-3)  # the learner, not the network, predicts

    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    (copy / "checkpoints" / "fused_logistic" / "fold1.stage2.skops").unlink()
    with pytest.raises(BundleError, match=r"fold\(s\) \[1\].*\['fused', 'ultrasound'\]"):
        export_bundle(copy, tmp_path / "b", variant="fused_logistic")
    with pytest.raises(BundleError, match=r"unknown variant 'nope'"):
        export_bundle(run_dir, tmp_path / "b", variant="nope")
    assert not (tmp_path / "b").exists()


def test_cli_export_and_predict_write_the_documented_csv(run_dir, small_cohort_dir, tmp_path):
    """(g)"""
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(run_dir), "--variant", "ultrasound", "--out", str(tmp_path / "us")])
    assert result.exit_code == 0, result.output
    assert "out-of-fold AUC" in result.output
    assert not list((tmp_path / "us").glob("*.skops"))  # the ultrasound variant reads no clinical data
    out = tmp_path / "pred" / "predictions.csv"
    result = runner.invoke(app, ["predict", str(tmp_path / "us"), str(small_cohort_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "note:" in result.output and "mammography" in result.output  # images the bundle does not read
    written = pd.read_csv(out, dtype={"subject_id": str})
    assert list(written.columns) == [*PREDICTION_COLUMNS, "y", "label"] and len(written) == 60
    assert set(written["call"]) <= {"malignant", "benign"} and written["fold_votes_malignant"].between(0, 2).all()
    assert (written["modalities_used"] == "ultrasound").all()
    result = runner.invoke(app, ["predict", str(run_dir), str(small_cohort_dir)])
    assert result.exit_code == 2 and "bundle.json is missing" in " ".join(result.output.split())


def test_a_case_with_none_of_the_bundles_modalities_is_left_out_with_a_warning(run_dir, small_cohort_dir, tmp_path):
    bundle = load_bundle(export_bundle(run_dir, tmp_path / "us", variant="ultrasound"))
    drop_us = (lambda f: f[~((f["subject_id"] == "S05") & (f["modality"] == "ultrasound"))])
    cohort = _cohort_copy(small_cohort_dir, tmp_path / "new", manifest=drop_us)
    with pytest.warns(UserWarning, match=r"lesion\(s\) \['S05-L1'\] have none of the bundle's modalities"):
        subjects = bundle.predict(cohort)
    assert len(subjects) == 59 and "S05" not in set(subjects["subject_id"])
    only_mammography = _cohort_copy(small_cohort_dir, tmp_path / "mg",
                                    manifest=lambda f: f[f["modality"] != "ultrasound"])
    with pytest.raises(BundleError, match=r"no lesion has any of the modalities the bundle reads \(\['ultrasound'\]\)"):
        bundle.predict(only_mammography)


def test_a_case_missing_a_modality_or_clinical_columns_is_still_predicted(bundle_dir, small_cohort_dir, tmp_path,
                                                                          lesions):
    """(h) one subject without ultrasound; a clinical column absent from the new table (imputed, with a warning)."""
    cohort = _cohort_copy(small_cohort_dir, tmp_path / "new",
                          manifest=lambda f: f[~((f["subject_id"] == "S05") & (f["modality"] == "ultrasound"))],
                          clinical=lambda f: f.drop(columns="bmi"))
    bundle = load_bundle(bundle_dir)
    with pytest.warns(UserWarning, match=r"lacks column\(s\) \['bmi'\]"):
        got = bundle.predict_lesions(cohort)
    s05 = got[got["subject_id"] == "S05"]
    assert len(s05) == 2 and (s05["modalities_used"] == "mammography;clinical").all()
    assert np.isfinite(s05["prob"]).all()
    before = lesions[lesions["subject_id"] == "S05"]["prob"].to_numpy()
    assert not np.allclose(s05["prob"].to_numpy(), before, atol=1e-6)
    with pytest.warns(UserWarning, match="bmi"):
        subjects = bundle.predict(cohort)
    assert subjects.set_index("subject_id").loc["S05", "modalities_used"] == "mammography;clinical"


def _uploads(rows: pd.DataFrame) -> list[tuple[str, tuple[str, bytes, str]]]:
    """A lesion's manifest rows as the page's file inputs (CC, MLO, ultrasound frames)."""
    names = {("mammography", "CC"): "mammography_cc", ("mammography", "MLO"): "mammography_mlo"}
    return [(names.get((r.modality, r.view), "ultrasound"), (Path(r.path).name, Path(r.path).read_bytes(), "image/png"))
            for r in rows.itertuples()]


def test_web_page_gives_one_case_the_prediction_predict_gives(bundle_dir, small_cohort_dir, tmp_path):
    """The page decodes an uploaded case (both mammography views, the ultrasound frame, the clinical row typed into
    the form) in memory, and the bundle reads it exactly as `predict` reads the subject from its own folder."""
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from breastfusion.app import create_app

    bundle = load_bundle(bundle_dir)
    cohort = load_cohort(small_cohort_dir)
    subject = cohort.manifest["subject_id"].iloc[0]
    rows = cohort.manifest[cohort.manifest["subject_id"] == subject]
    files = _uploads(rows)
    clinical = cohort.clinical.set_index("subject_id").loc[subject]
    binary = bundle.clinical_preprocessors[0].types_["binary"]
    form = {f"clinical__{c}": "" if pd.isna(v) else str(int(v) if c in binary else v) for c, v in clinical.items()}
    reply = TestClient(create_app(bundle)).post("/api/predict", files=files, data=form)
    assert reply.status_code == 200, reply.text

    alone = tmp_path / "alone"
    alone.mkdir()
    keep = rows.assign(path=[str(Path(p).resolve()) for p in rows["path"]])
    keep.to_csv(alone / "manifest.csv", index=False)
    cohort.clinical[cohort.clinical["subject_id"] == subject].to_csv(alone / "clinical.csv", index=False)
    expected = bundle.predict(load_cohort(alone, allow_outside_root=True)).iloc[0]
    body = reply.json()
    assert body["used"] == ["mammography", "ultrasound", "clinical"]
    assert body["prob"] == pytest.approx(float(expected["prob"]), abs=1e-5)
    assert body["call"] == expected["call"] and body["fold_votes_malignant"] == expected["fold_votes_malignant"]


def test_case_explanation_sums_to_the_fold_mean_prediction(bundle_dir, small_cohort_dir, lesions):
    """explain_case: the fold-averaged Shapley values sum to the mean fold prediction minus the no-information
    value, that mean is what predict_lesions gives, each fold's empty value is its calibration prevalence, and
    every image of the lesion gets a heatmap in [0, 1] of the network's input size."""
    from breastfusion.explain.case import explain_case

    bundle = load_bundle(bundle_dir)
    cohort = load_cohort(small_cohort_dir)
    lesion = cohort.lesions["lesion_id"].iloc[3]
    explanation = explain_case(bundle, cohort, lesion_id=lesion, method="gradcam")
    assert sum(explanation.phi.values()) == pytest.approx(explanation.full - explanation.empty, abs=1e-9)
    assert explanation.full == pytest.approx(lesions.loc[lesions["lesion_id"] == lesion, "prob"].mean(), abs=1e-5)
    prevalence = [bundle.calibration.loc[bundle.calibration["fold"] == k, "y"].mean() for k in range(bundle.n_folds)]
    assert explanation.empty == pytest.approx(np.mean(prevalence), abs=1e-9)
    assert sum(explanation.shares.values()) == pytest.approx(100.0)
    rows = cohort.manifest[cohort.manifest["lesion_id"] == lesion]
    assert sorted((h.modality, h.view) for h in explanation.heatmaps) == sorted(zip(rows["modality"], rows["view"]))
    for h in explanation.heatmaps:
        size = bundle.preprocessing[h.modality].size
        assert h.heatmap.shape == h.image.shape == (size, size)
        assert 0.0 <= h.heatmap.min() and h.heatmap.max() <= 1.0 and np.isfinite(h.heatmap).all()
    with pytest.raises(ValueError, match="not in"):
        explain_case(bundle, cohort, lesion_id="no-such-lesion")
    with pytest.raises(ValueError, match="unknown heatmap method"):
        explain_case(bundle, cohort, method="lime")


def test_web_page_explains_the_case_it_predicts(bundle_dir, small_cohort_dir):
    """With the real explainer, the JSON reply carries the contributions (summing to full - empty) and the HTML
    page one inline heatmap per uploaded image."""
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from breastfusion.app import create_app

    cohort = load_cohort(small_cohort_dir)
    rows = cohort.manifest[cohort.manifest["subject_id"] == cohort.manifest["subject_id"].iloc[0]]
    files = _uploads(rows)
    client = TestClient(create_app(load_bundle(bundle_dir)))
    body = client.post("/api/predict", files=files, data={"method": "gradcam"}).json()
    contributions = body["contributions"]
    assert contributions["phi"]["clinical"] == 0.0  # no clinical value was given
    assert sum(contributions["phi"].values()) == pytest.approx(contributions["full"] - contributions["empty"])
    assert contributions["full"] != pytest.approx(body["prob"], abs=1e-3)  # Platt: Shapley values are of the raw output
    page = client.post("/predict", files=files, data={"method": "gradcam"})
    assert page.status_code == 200 and page.text.count('src="data:image/png;base64,') == len(rows)
    assert client.post("/api/predict", files=files, data={"method": "lime"}).status_code == 400


# -- strict loading: bundle.json values, the folder's contents, half-written files, interrupted exports ----------

def _edit_meta(bundle: Path, edit) -> None:
    meta = json.loads((bundle / "bundle.json").read_text())
    edit(meta)
    (bundle / "bundle.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("edit, pattern", [
    (lambda m: m.update(n_folds="abc"), r"key 'n_folds': got 'abc'; expected a valid integer"),
    (lambda m: m.update(variant=["x"]), r"key 'variant': got \['x'\]; expected a valid string"),
    (lambda m: m.update(n_folds=True), r"key 'n_folds': got True"),
    (lambda m: m["metrics"].update(auc=2.5), r"key 'metrics.auc': got 2.5; expected .*less than or equal to 1"),
    (lambda m: m["files"].update({"../escape.safetensors": "0" * 64}), r"key 'files.\.\./escape.safetensors"),
    (lambda m: m.pop("modalities"), r"key 'modalities' is missing"),
    (lambda m: m.update(pickle="x.pkl"), r"key 'pickle' is not a bundle.json key"),
    (lambda m: m.update(n_folds=3), r"disagrees with config.yaml on n_folds 3 \(config.yaml gives 2\)"),
    (lambda m: m.update(modalities=["ultrasound"]), r"disagrees with config.yaml on modalities \['ultrasound'\]"),
], ids=["n_folds-str", "variant-list", "n_folds-bool", "auc-range", "file-name", "missing-key", "unknown-key",
        "n_folds-config", "modalities-config"])
def test_malformed_bundle_json_values_are_a_bundle_error_naming_the_key(bundle_copy, edit, pattern):
    _edit_meta(bundle_copy, edit)
    with pytest.raises(BundleError, match=pattern) as info:
        load_bundle(bundle_copy)
    assert str(bundle_copy / "bundle.json") in str(info.value)


def test_symlinks_unlisted_files_and_folders_are_refused(bundle_copy, tmp_path):
    weights = bundle_copy / "fold0.safetensors"
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copyfile(weights, outside)  # same bytes: the sha256 alone would accept it
    weights.unlink()
    weights.symlink_to(outside)
    with pytest.raises(BundleError, match=r"fold0\.safetensors is a symbolic link \(to .*elsewhere"):
        load_bundle(bundle_copy)
    weights.unlink()
    shutil.copyfile(outside, weights)
    load_bundle(bundle_copy)  # restored: loads

    (bundle_copy / "extra.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(BundleError, match=r"extra\.pkl: file not listed in bundle\.json"):
        load_bundle(bundle_copy)
    (bundle_copy / "extra.pkl").unlink()
    (bundle_copy / "sub").mkdir()
    with pytest.raises(BundleError, match=r"sub: folder not listed in bundle\.json"):
        load_bundle(bundle_copy)
    (bundle_copy / "sub").rmdir()
    (bundle_copy / "bundle.json").rename(tmp_path / "meta.json")
    (bundle_copy / "bundle.json").symlink_to(tmp_path / "meta.json")
    with pytest.raises(BundleError, match=r"bundle\.json is a symbolic link"):
        load_bundle(bundle_copy)


def test_a_truncated_network_file_is_refused_even_when_its_sha256_was_recorded(bundle_copy):
    """A half-written bundle (the file cut short, bundle.json written after it) is named, not a raw error."""
    path = bundle_copy / "fold1.safetensors"
    path.write_bytes(path.read_bytes()[:2000])
    _write_files_sha(bundle_copy, "fold1.safetensors")
    with pytest.raises(BundleError, match=r"fold1\.safetensors: not a readable safetensors file .* truncated"):
        load_bundle(bundle_copy)
    (bundle_copy / "bundle.json").write_text((bundle_copy / "bundle.json").read_text()[:300])
    with pytest.raises(BundleError, match=r"bundle\.json: not valid JSON .* half-written"):
        load_bundle(bundle_copy)


_KILLED_EXPORT = """
import os, signal, sys
from pathlib import Path
from breastfusion import bundle
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[3] == "folder":
    Path.rename = die  # the folder rename that publishes the bundle
else:
    bundle.os.replace = die  # the rename of bundle.json.partial, after the folder is in place
bundle.export_bundle(sys.argv[1], sys.argv[2], variant="ultrasound")
"""


@pytest.mark.parametrize("step", ["folder", "meta"])
def test_an_export_killed_at_publication_leaves_nothing_that_loads(run_dir, tmp_path, step):
    """kill -9 during export (at each of the two renames): ``out`` is absent or refused as interrupted, the hidden
    work folder is not a bundle, and the next export to a fresh folder works and removes the dead one's leftovers."""
    import os
    import subprocess
    import sys

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _KILLED_EXPORT, str(run_dir), str(out), step], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr  # killed, not failed
    partials = list(tmp_path.glob(".killed.partial-*"))
    if step == "folder":
        assert not out.exists() and len(partials) == 1
        assert {"fold0.safetensors", "fold1.safetensors", "bundle.json.partial"} <= {p.name for p in
                                                                                   partials[0].iterdir()}
        with pytest.raises(BundleError, match="interrupted"):
            load_bundle(partials[0])
    else:
        assert not partials and (out / "bundle.json.partial").is_file()
        with pytest.raises(BundleError, match=r"export that wrote this folder was interrupted"):
            load_bundle(out)
    with pytest.raises(BundleError, match="already exists") if out.exists() else _no_error():
        export_bundle(run_dir, out, variant="ultrasound")
    fresh = export_bundle(run_dir, tmp_path / "fresh", variant="ultrasound")
    load_bundle(fresh)
    shutil.rmtree(fresh)
    export_bundle(run_dir, out if not out.exists() else tmp_path / "again", variant="ultrasound")
    assert not list(tmp_path.glob(".killed.partial-*"))  # the dead export's work folder is gone


def _no_error():
    import contextlib

    return contextlib.nullcontext()


def test_export_copies_the_runs_saved_preprocessors_so_the_cohort_may_be_gone(small_cohort_dir, tmp_path):
    """The cross-validation fits each fold's clinical preprocessor once and saves it in the run folder; export
    copies it, so a clinical variant exports after its cohort folder is deleted, and each bundled preprocessor
    transforms the clinical table exactly as the run's fold preprocessor (fitted as the run fits it) does. A run
    without the saved files (made before they were saved) refits them from the cohort, which it then needs."""
    from breastfusion.config import load_config
    from breastfusion.experiment.crossval import fit_clinical_preprocessor
    from breastfusion.experiment.run import run_experiment
    from breastfusion.experiment.run_artifacts import RunFolderError
    from breastfusion.experiment.run_folder import RunLayout

    cohort_dir = Path(shutil.copytree(small_cohort_dir, tmp_path / "cohort"))
    config = load_config(None, name="tiny", manifest=cohort_dir, variants={"clin": ["ultrasound", "clinical"]},
                         model=TINY_MODEL, training={"epochs": 1, "batch_size": 16},
                         cv={"n_splits": 2, "bootstrap": 100})
    run = tmp_path / "run"
    run_experiment(load_cohort(cohort_dir), config, run)
    art = load_run(run)
    clinical = art.cohort.clinical
    expected = [fit_clinical_preprocessor(art.lesions, clinical, art.config, art.fit_positions(k)).transform(clinical)
                for k in range(art.n_folds)]
    saved = [RunLayout(run).checkpoints.clinical_preprocessor(k) for k in range(art.n_folds)]
    assert all(path.is_file() for path in saved)

    shutil.rmtree(cohort_dir)
    bundle = load_bundle(export_bundle(run, tmp_path / "moved"))
    for k in range(art.n_folds):
        np.testing.assert_array_equal(bundle.clinical_preprocessors[k].transform(clinical), expected[k])
        assert (bundle.root / f"clinical_fold{k}.skops").read_bytes() == saved[k].read_bytes()

    for path in saved:  # an old run: the preprocessors are refitted from the cohort
        path.unlink()
    with pytest.raises(RunFolderError, match="cannot find the run's cohort"):
        export_bundle(run, tmp_path / "old-run-no-cohort")
    shutil.copytree(small_cohort_dir, cohort_dir)
    bundle = load_bundle(export_bundle(run, tmp_path / "old-run"))
    for k in range(art.n_folds):
        np.testing.assert_array_equal(bundle.clinical_preprocessors[k].transform(clinical), expected[k])


def test_the_run_folder_holds_every_file_its_layout_names(run_dir):
    """RunLayout / CheckpointLayout name the files a run writes (the one place that spells them)."""
    from breastfusion.config import load_config
    from breastfusion.experiment.crossval import network_spec
    from breastfusion.experiment.run_folder import RUN_FILES, RunLayout

    layout = RunLayout(run_dir)
    assert layout.missing_file() is None and all((run_dir / name).is_file() for name in RUN_FILES)
    for path in (layout.config, layout.results, layout.predictions, layout.calibration, layout.preprocessing,
                 layout.roc, layout.report, layout.checkpoints.variants):  # ablation files: `ablate` only
        assert path.is_file(), path
    config = load_config(layout.config)
    checkpoints = layout.checkpoints
    for k in range(config.n_folds):
        assert checkpoints.clinical_preprocessor(k).is_file()
        assert checkpoints.learner("fused_logistic", k, "stage2").is_file()
        for variant in config.variants:
            key = network_spec(config, variant).key
            assert checkpoints.variant_weights(variant, k).read_bytes() == \
                checkpoints.network_weights(key, k).read_bytes()
            assert checkpoints.network_predictions(key, k).is_file() and checkpoints.network_description(key).is_file()
            assert not checkpoints.network_work_dir(key, k).exists()  # cleared once the fold finished
