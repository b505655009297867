"""The local web page: form fields from the bundle, the case written as an unlabelled cohort, errors named."""

from __future__ import annotations

import io
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from breastfusion.app.server import (CaseError, ClinicalField, clinical_fields, create_app,  # noqa: E402
                                     parse_clinical, write_case)
from breastfusion.data.clinical import ClinicalPreprocessor  # noqa: E402


def _png(value: int = 128, size: int = 24) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _preprocessor() -> ClinicalPreprocessor:
    frame = pd.DataFrame({"subject_id": ["a", "b", "c"], "age": [40.0, 55.0, 63.0],
                          "density": ["A", "C", "B"], "palpable": [0, 1, 1]})
    return ClinicalPreprocessor().fit(frame)


class StubBundle:
    """What the page needs of a bundle; its predict reads the cohort folder the page wrote."""

    variant, n_folds = "fused", 5
    modalities = ("mammography", "ultrasound", "clinical")
    meta = {"metrics": {"auc": 0.8, "auc_ci": [0.7, 0.9]}}
    config = SimpleNamespace(training=SimpleNamespace(modality_dropout=0.5),
                             evaluation=SimpleNamespace(recalibration="none"))

    def __init__(self):
        self.clinical_preprocessors = [_preprocessor()]
        self.seen: dict[str, pd.DataFrame] = {}

    def predict(self, cohort):
        root = Path(cohort)
        self.seen["manifest"] = pd.read_csv(root / "manifest.csv", keep_default_na=False)
        clinical = root / "clinical.csv"
        self.seen["clinical"] = pd.read_csv(clinical) if clinical.is_file() else None
        self.seen["files"] = sorted(p.name for p in root.iterdir())
        return pd.DataFrame([{"subject_id": "case", "prob": 0.7, "prob_sd": 0.05, "threshold": 0.4,
                              "call": "malignant", "fold_votes_malignant": 4}])


def test_form_fields_follow_the_fitted_preprocessor():
    fields = clinical_fields(_preprocessor())
    assert fields == [ClinicalField("age", "numeric"), ClinicalField("density", "categorical", ("A", "B", "C")),
                      ClinicalField("palpable", "binary", ("0", "1"))]


def test_clinical_values_parse_and_bad_ones_are_named():
    fields = clinical_fields(_preprocessor())
    row = parse_clinical(fields, {"clinical__age": " 51 ", "clinical__density": "B", "clinical__palpable": ""})
    assert row["age"] == 51.0 and row["density"] == "B" and math.isnan(row["palpable"])
    with pytest.raises(CaseError) as info:
        parse_clinical(fields, {"clinical__age": "fifty", "clinical__density": "Z", "clinical__palpable": "2"})
    message = str(info.value)
    assert "age: 'fifty' is not a number" in message
    assert "density: 'Z' is not one of ['A', 'B', 'C']" in message and "palpable: '2'" in message


def test_write_case_makes_an_unlabelled_cohort_and_refuses_bad_files(tmp_path):
    folder = write_case(tmp_path, [("ultrasound", "frame1", "../../etc/x.PNG", _png())], {"age": 50.0})
    manifest = pd.read_csv(folder / "manifest.csv", keep_default_na=False)
    assert manifest.to_dict("records") == [{"subject_id": "case", "lesion_id": "case", "modality": "ultrasound",
                                            "view": "frame1", "path": "ultrasound_0.png", "label": ""}]
    assert (tmp_path / "ultrasound_0.png").read_bytes() == _png()  # the upload's name never becomes a path
    assert pd.read_csv(folder / "clinical.csv").to_dict("records") == [{"subject_id": "case", "age": 50.0}]
    for images, clinical, expected in [([("ultrasound", "frame1", "x.exe", b"1")], None, "has type .exe"),
                                       ([("ultrasound", "frame1", "x.png", b"")], None, "is empty"),
                                       ([], {"age": math.nan}, "nothing to predict from")]:
        with pytest.raises(CaseError, match=expected):
            write_case(tmp_path / expected.replace(" ", "_"), images, clinical)


def test_page_posts_a_case_to_the_bundle_and_shows_the_call():
    bundle = StubBundle()
    client = TestClient(create_app(bundle, explainer=None))
    page = client.get("/")
    assert page.status_code == 200
    for name in ("mammography_cc", "mammography_mlo", "ultrasound", "clinical__age", "clinical__density"):
        assert f'name="{name}"' in page.text
    files = [("mammography_cc", ("cc.png", _png(10), "image/png")), ("ultrasound", ("a.png", _png(20), "image/png")),
             ("ultrasound", ("b.png", _png(30), "image/png"))]
    reply = client.post("/api/predict", files=files, data={"clinical__age": "61", "clinical__density": "C"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["call"] == "malignant" and body["fold_votes_malignant"] == 4
    assert body["used"] == ["mammography", "ultrasound", "clinical"]
    manifest = bundle.seen["manifest"]
    assert list(zip(manifest["modality"], manifest["view"])) == [("mammography", "CC"), ("ultrasound", "frame1"),
                                                                 ("ultrasound", "frame2")]
    assert (manifest["label"] == "").all()
    assert bundle.seen["clinical"].loc[0, "age"] == 61.0
    html = client.post("/predict", files=files[:1], data={"clinical__age": ""})
    assert html.status_code == 200 and "malignant" in html.text and "4 of 5" in html.text


def test_bad_input_is_a_400_that_names_the_field():
    client = TestClient(create_app(StubBundle(), explainer=None))
    reply = client.post("/api/predict", data={"clinical__age": "old"})
    assert reply.status_code == 400 and "age: 'old' is not a number" in reply.json()["detail"]
    page = client.post("/predict", data={})
    assert page.status_code == 400 and "nothing to predict from" in page.text


def test_serve_binds_to_loopback_by_default_and_warns_otherwise(monkeypatch, caplog):
    """The page is reachable from this machine only unless the user names another interface (then a warning)."""
    import uvicorn

    from breastfusion.app import server

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    server.serve(StubBundle())
    assert calls[-1]["host"] == "127.0.0.1" and calls[-1]["port"] == 8765
    with caplog.at_level("WARNING", logger="breastfusion.app.server"):
        server.serve(StubBundle(), host="0.0.0.0", port=9000)
    assert calls[-1]["host"] == "0.0.0.0" and "reachable from other machines" in caplog.text


def test_serve_cli_refuses_a_folder_that_is_not_a_bundle(tmp_path):
    from typer.testing import CliRunner

    from breastfusion.cli import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path)])
    assert result.exit_code == 2 and "bundle.json is missing" in " ".join(result.output.split())
