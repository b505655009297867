"""Bundle.predict on a manifest DataFrame and on one case held in memory: the numbers a folder gives, no file
written, bad input named by its key."""

from __future__ import annotations

import builtins
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from breastfusion import export_bundle, load_bundle
from breastfusion.data.in_memory import InMemoryCaseError
from breastfusion.data.manifest import ManifestError, load_cohort
from breastfusion.data.readers import ImageReadError

from .test_bundle import bundle_dir, run_dir  # noqa: F401  (the 2-fold run and its fused bundle)

SUBJECTS = ("S00", "S03", "S07")  # S07 has both mammography views and an ultrasound frame, as every subject
# One case in memory is a batch of one; the folder predicts its lesions in batches. float32 convolution kernels
# differ by batch size (CI's CPU: 1.1e-6 on prob_sd), so in-memory vs folder compares to 1e-4, far below any
# decoding or normalisation mistake (those move probabilities by 1e-2 and more).
BATCH_TOLERANCE = 1e-4
SCORES = ["prob", "prob_sd", "threshold", "call", "fold_votes_malignant", "n_lesions", "modalities_used"]


@pytest.fixture(scope="module")
def bundle(bundle_dir):  # noqa: F811
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def folder_predictions(bundle, small_cohort_dir) -> pd.DataFrame:
    return bundle.predict(small_cohort_dir).set_index("subject_id")


def _case(small_cohort_dir: Path, subject: str, as_bytes: bool = False) -> tuple[dict, dict | None]:
    """A subject's images ({modality: {view: array or file bytes}}) and clinical row, read from its folder."""
    cohort = load_cohort(small_cohort_dir)
    images: dict[str, dict] = {}
    for row in cohort.manifest[cohort.manifest["subject_id"] == subject].itertuples():
        with Image.open(row.path) as image:
            pixels = Path(row.path).read_bytes() if as_bytes else np.asarray(image)
        images.setdefault(row.modality, {})[row.view] = pixels
    table = cohort.clinical.set_index("subject_id")
    clinical = table.loc[subject].to_dict() if subject in table.index else None
    return images, clinical


def test_a_manifest_dataframe_predicts_as_its_folder(bundle, small_cohort_dir, folder_predictions):
    manifest = pd.read_csv(small_cohort_dir / "manifest.csv", dtype=str, keep_default_na=False)
    clinical = pd.read_csv(small_cohort_dir / "clinical.csv")
    got = bundle.predict(manifest.drop(columns="label"), clinical=clinical, root=small_cohort_dir)
    pd.testing.assert_frame_equal(got.set_index("subject_id"), folder_predictions.drop(columns=["y", "label"]))
    labelled = bundle.predict(manifest, clinical=clinical, root=small_cohort_dir).set_index("subject_id")
    pd.testing.assert_frame_equal(labelled, folder_predictions)
    bad = manifest.copy()
    bad.loc[3, "modality"] = "sonography"
    with pytest.raises(ManifestError, match=r"<manifest DataFrame>: 1 problem\(s\)\n  - line 5, column 'modality': "
                                            r"got 'sonography'"):
        bundle.predict(bad, clinical=clinical, root=small_cohort_dir)
    stranger = pd.concat([clinical, clinical.iloc[:1].assign(subject_id="ZZ")], ignore_index=True)
    with pytest.raises(ManifestError, match=r"<clinical DataFrame>: 1 problem\(s\)\n  - subject_id\(s\) \['ZZ'\] "
                                            r"have clinical data but no image in the manifest DataFrame"):
        bundle.predict(manifest, clinical=stranger, root=small_cohort_dir)
    with pytest.raises(TypeError, match="go with a manifest DataFrame"):
        bundle.predict(small_cohort_dir, root=small_cohort_dir)


@pytest.mark.parametrize("as_bytes", [False, True], ids=["arrays", "bytes"])
def test_one_case_in_memory_predicts_as_the_folder_and_writes_nothing(bundle, small_cohort_dir, folder_predictions,
                                                                      monkeypatch, tmp_path, as_bytes):
    cases = {s: _case(small_cohort_dir, s, as_bytes) for s in SUBJECTS}
    real_open = builtins.open

    def read_only_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            raise AssertionError(f"in-memory prediction opened {file} for writing")
        return real_open(file, mode, *args, **kwargs)

    for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryDirectory"):
        monkeypatch.setattr(tempfile, name, lambda *a, **k: pytest.fail("in-memory prediction made a temporary file"))
    monkeypatch.setattr(builtins, "open", read_only_open)
    monkeypatch.setattr(pd.DataFrame, "to_csv", lambda *a, **k: pytest.fail("in-memory prediction wrote a CSV"))
    monkeypatch.chdir(tmp_path)
    for subject, (images, clinical) in cases.items():
        got = bundle.predict(images=images, clinical=clinical).iloc[0]
        expected = folder_predictions.loc[subject]
        assert got["subject_id"] == "case"
        for column in SCORES:
            if isinstance(expected[column], str):
                assert got[column] == expected[column], (subject, column)
            else:
                assert got[column] == pytest.approx(expected[column], abs=BATCH_TOLERANCE), (subject, column)
    assert not list(tmp_path.iterdir())


def test_explain_case_reads_the_in_memory_case(bundle, small_cohort_dir):
    from breastfusion.explain.case import explain_case

    images, clinical = _case(small_cohort_dir, "S03")
    from_memory = explain_case(bundle, images=images, clinical=clinical, method="gradcam")
    cohort = load_cohort(small_cohort_dir)
    from_folder = explain_case(bundle, cohort, lesion_id=cohort.lesions.set_index("subject_id").loc["S03", "lesion_id"],
                               method="gradcam")
    assert from_memory.phi == pytest.approx(from_folder.phi, abs=BATCH_TOLERANCE)
    assert sorted((h.modality, h.view) for h in from_memory.heatmaps) == [("mammography", "CC"),
                                                                         ("mammography", "MLO"),
                                                                         ("ultrasound", "frame1")]


@pytest.mark.parametrize("images, clinical, error, pattern", [
    ({"ultrasond": np.zeros((8, 8))}, None, InMemoryCaseError,
     r"images: unknown modality 'ultrasond'; expected one of \['mammography', 'ultrasound'\] \(did you mean "
     r"'ultrasound'\?\)"),
    ({"ultrasound": np.zeros((2, 8, 8))}, None, ImageReadError,
     r"images\['ultrasound'\]: array of shape \(2, 8, 8\); expected a 2-D greyscale image"),
    ({"ultrasound": [np.zeros((8, 8)), np.full((8, 8), np.nan)]}, None, ImageReadError,
     r"images\['ultrasound'\]\[1\]: .*NaN"),
    ({"mammography": {"CC": b"not an image"}}, None, ImageReadError,
     r"images\['mammography'\]\['CC'\]: not a recognised image format"),
    ({"ultrasound": "images/S00_ultrasound_frame1.png"}, None, InMemoryCaseError,
     r"images\['ultrasound'\]: got str; expected a numpy array .*pass a cohort folder"),
    ({"ultrasound": []}, None, InMemoryCaseError, r"images\['ultrasound'\]: empty"),
    ({}, None, InMemoryCaseError, r"images: none given"),
    ({"ultrasound": np.zeros((8, 8))}, {"age": 50}, InMemoryCaseError,
     r"clinical: missing column\(s\) \['bmi', .*\] the bundle's model was trained with"),
    ({"ultrasound": np.zeros((8, 8))}, "AGE_BMI", InMemoryCaseError, r"clinical: unknown column\(s\) \['weight'\]"),
    ({"ultrasound": np.zeros((8, 8))}, "AGE_TEXT", InMemoryCaseError,
     r"clinical\['age'\]: got 'fifty'; expected a number"),
], ids=["unknown-modality", "3d-array", "nan-in-list", "bad-bytes", "path-string", "empty-list", "no-image",
        "missing-clinical", "unknown-clinical", "non-numeric"])
def test_a_bad_in_memory_case_names_the_key(bundle, images, clinical, error, pattern):
    full = {"age": 50, "bmi": 25.0, "menopausal_status": "post", "family_history": 0, "palpable": 1}
    if isinstance(clinical, str):  # a named edit of a complete clinical row
        clinical = {"AGE_BMI": {**full, "weight": 70}, "AGE_TEXT": {**full, "age": "fifty"}}[clinical]
    with pytest.raises(error, match=pattern):
        bundle.predict(images=images, clinical=clinical)


def test_in_memory_case_and_bundle_disagree_on_modalities(run_dir, tmp_path):  # noqa: F811
    ultrasound = load_bundle(export_bundle(run_dir, tmp_path / "us", variant="ultrasound"))
    with pytest.raises(InMemoryCaseError, match=r"images\['mammography'\]: the bundle's variant 'ultrasound' does "
                                                r"not read mammography; it reads \['ultrasound'\]"):
        ultrasound.predict(images={"mammography": np.zeros((8, 8))})
    with pytest.raises(InMemoryCaseError, match=r"clinical: the bundle's variant 'ultrasound' reads no clinical"):
        ultrasound.predict(images={"ultrasound": np.zeros((8, 8))}, clinical={"age": 50})
    with pytest.raises(TypeError, match="either a cohort or images="):
        ultrasound.predict(tmp_path, images={"ultrasound": np.zeros((8, 8))})
    assert 0 <= ultrasound.predict(images={"ultrasound": np.zeros((8, 8), np.uint8)})["prob"].iloc[0] <= 1


def test_web_page_predicts_uploads_in_memory_as_the_folder(bundle, small_cohort_dir, folder_predictions, monkeypatch,
                                                           tmp_path):
    """The page decodes uploads in memory and calls the in-memory predict: no temporary folder or manifest is
    made (those calls fail here), and the reply is the folder's prediction of the subject."""
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from breastfusion.app import create_app

    cohort = load_cohort(small_cohort_dir)
    subject = "S03"
    rows = cohort.manifest[cohort.manifest["subject_id"] == subject]
    names = {("mammography", "CC"): "mammography_cc", ("mammography", "MLO"): "mammography_mlo"}
    files = [(names.get((r.modality, r.view), "ultrasound"), (Path(r.path).name, Path(r.path).read_bytes(),
                                                              "image/png")) for r in rows.itertuples()]
    binary = bundle.clinical_preprocessors[0].types_["binary"]
    values = cohort.clinical.set_index("subject_id").loc[subject]
    form = {f"clinical__{c}": "" if pd.isna(v) else str(int(v) if c in binary else v) for c, v in values.items()}
    calls = []
    real_predict = type(bundle).predict

    def spy(self, cohort=None, **kwargs):
        calls.append((cohort, sorted(kwargs.get("images") or {})))
        return real_predict(self, cohort, **kwargs)

    monkeypatch.setattr(type(bundle), "predict", spy)
    for name in ("mkdtemp", "TemporaryDirectory"):
        monkeypatch.setattr(tempfile, name, lambda *a, **k: pytest.fail("the page made a temporary folder"))
    monkeypatch.setattr(pd.DataFrame, "to_csv", lambda *a, **k: pytest.fail("the page wrote a manifest"))
    monkeypatch.chdir(tmp_path)
    reply = TestClient(create_app(bundle, explainer=None)).post("/api/predict", files=files, data=form)
    assert reply.status_code == 200, reply.text
    assert calls == [(None, ["mammography", "ultrasound"])]
    expected = folder_predictions.loc[subject]
    assert reply.json()["prob"] == pytest.approx(float(expected["prob"]), abs=BATCH_TOLERANCE)
    assert reply.json()["call"] == expected["call"]
    assert not list(tmp_path.iterdir())
