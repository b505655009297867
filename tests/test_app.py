"""The local web page: form fields from the bundle, the case decoded in memory (nothing written), errors named."""

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
                                     parse_clinical, read_case)
from breastfusion.data.clinical_features import ClinicalPreprocessor  # noqa: E402


def _png(value: int = 128, size: int = 24) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _preprocessor() -> ClinicalPreprocessor:
    frame = pd.DataFrame({"subject_id": ["a", "b", "c"], "age": [40.0, 55.0, 63.0],
                          "density": ["A", "C", "B"], "palpable": [0, 1, 1]})
    return ClinicalPreprocessor().fit(frame)


class StubBundle:
    """What the page needs of a bundle; its predict records the in-memory case the page hands it."""

    variant, n_folds = "fused", 5
    modalities = ("mammography", "ultrasound", "clinical")
    meta = {"metrics": {"auc": 0.8, "auc_ci": [0.7, 0.9]}}
    config = SimpleNamespace(training=SimpleNamespace(modality_dropout=0.5),
                             evaluation=SimpleNamespace(recalibration="none"))

    def __init__(self):
        self.clinical_preprocessors = [_preprocessor()]
        self.seen: dict[str, pd.DataFrame] = {}

    def predict(self, cohort=None, *, images=None, clinical=None):
        assert cohort is None, "the page must predict the case in memory, not from a folder"
        self.seen["images"] = images
        self.seen["clinical"] = clinical
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


def test_read_case_decodes_uploads_in_memory_and_refuses_bad_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images, clinical = read_case([("ultrasound", "frame1", "../../etc/x.PNG", _png())], {"age": 50.0})
    assert list(images) == ["ultrasound"] and list(images["ultrasound"]) == ["frame1"]
    np.testing.assert_allclose(images["ultrasound"]["frame1"].pixels, 128 / 255, atol=1e-7)
    assert clinical == {"age": 50.0}
    assert read_case([("ultrasound", "frame1", "x.png", _png())], {"age": math.nan})[1] is None  # all missing
    assert not list(tmp_path.iterdir())  # nothing written, and the upload's name never becomes a path
    for images, clinical, expected in [([("ultrasound", "frame1", "x.exe", b"1")], None, "has type .exe"),
                                       ([("ultrasound", "frame1", "x.png", b"")], None, "is empty"),
                                       ([("mammography", "CC", "a.png", _png()), ("mammography", "CC", "b.png",
                                                                                   _png())], None,
                                        "a second mammography CC image"),
                                       ([], {"age": math.nan}, "nothing to predict from")]:
        with pytest.raises(CaseError, match=expected):
            read_case(images, clinical)


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
    images = bundle.seen["images"]
    assert [(m, v) for m, views in images.items() for v in views] == [("mammography", "CC"), ("ultrasound", "frame1"),
                                                                      ("ultrasound", "frame2")]
    np.testing.assert_allclose(images["ultrasound"]["frame2"].pixels, 30 / 255, atol=1e-7)
    assert bundle.seen["clinical"]["age"] == 61.0 and bundle.seen["clinical"]["density"] == "C"
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

    from breastfusion.cli.main import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path)])
    assert result.exit_code == 2 and "bundle.json is missing" in " ".join(result.output.split())


# -- abuse and load ------------------------------------------------------------------------------------------------

def test_a_body_over_the_upload_limit_is_a_413_naming_the_limit():
    client = TestClient(create_app(StubBundle(), explainer=None, max_upload_bytes=20_000))
    small = client.post("/api/predict", files=[("ultrasound", ("a.png", _png(), "image/png"))])
    assert small.status_code == 200, small.text
    over = client.post("/api/predict", files=[("ultrasound", ("a.png", b"\x89PNG" + b"0" * 20_000, "image/png"))])
    assert over.status_code == 413 and "the limit is 20000 bytes" in over.json()["detail"]
    assert "max_upload_bytes" in over.json()["detail"]
    streamed = client.post("/api/predict", content=iter([b"-" * 15_000, b"-" * 15_000]),
                           headers={"content-type": "multipart/form-data; boundary=xyz"})  # chunked: no length
    assert streamed.status_code == 413 and "more than" in streamed.json()["detail"]
    assert client.get("/").status_code == 200  # still up
    with pytest.raises(ValueError, match="max_upload_bytes should be a positive number"):
        create_app(StubBundle(), explainer=None, max_upload_bytes=0)


@pytest.mark.parametrize("name", ["../../../../../tmp/evil.png", "..\\..\\evil.png", "/etc/cron.d/evil.png",
                                  "evil\x00.png", "a" * 5000 + ".png"],
                         ids=["dotdot", "backslash", "absolute", "nul", "long"])
def test_uploaded_file_names_never_become_paths(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    bundle = StubBundle()
    reply = TestClient(create_app(bundle, explainer=None)).post(
        "/api/predict", files=[("ultrasound", (name, _png(), "image/png"))])
    assert reply.status_code in (200, 400), reply.text
    if reply.status_code == 200:
        assert list(bundle.seen["images"]) == ["ultrasound"]
        assert not list(tmp_path.iterdir())  # nothing written
    else:  # a part header too long for Starlette's parser is refused before any field is read
        assert "field 'ultrasound'" in reply.json()["detail"] or reply.json()["detail"] == "Invalid multipart data."
    assert not list(tmp_path.rglob("evil*")) and not Path("/tmp/evil.png").exists()


@pytest.mark.parametrize("name, content, pattern", [
    ("scan.png", b"this is not an image" * 10, r"field 'ultrasound': file 'scan.png' cannot be read as an image: "
                                               r"not a recognised image format"),
    ("scan.dcm", b"\x00" * 128 + b"DICM" + b"\x01" * 50, r"field 'ultrasound': file 'scan.dcm' cannot be read"),
    ("scan.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, r"field 'ultrasound': file 'scan.png' cannot be read"),
], ids=["text-as-png", "broken-dicom", "png-header-only"])
def test_non_image_bytes_are_a_400_naming_the_field_and_the_file(name, content, pattern):
    bundle = StubBundle()
    reply = TestClient(create_app(bundle, explainer=None)).post(
        "/api/predict", files=[("ultrasound", (name, content, "image/png"))])
    assert reply.status_code == 400
    import re

    assert re.search(pattern, reply.json()["detail"]), reply.json()["detail"]
    assert "breastfusion-case-" not in reply.json()["detail"]  # the temporary path is not shown
    assert "images" not in bundle.seen  # the bundle never saw it


def test_fifty_concurrent_requests_all_answered_and_no_temporary_file_left(tmp_path, monkeypatch):
    """50 requests at once (good cases, bad files, bad values, one 1.5 MB upload that the form spools to disk):
    each gets its own answer, the page stays up, and the temporary folder is empty afterwards."""
    import asyncio
    import tempfile

    import httpx

    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    app = create_app(StubBundle(), explainer=None, max_upload_bytes=4 * 2**20)
    cases = []
    for i in range(50):
        kind = ("good", "not-image", "bad-value", "big", "too-big")[i % 5]
        files = {"good": [("ultrasound", ("a.png", _png(10 + i), "image/png"))],
                 "not-image": [("mammography_cc", ("cc.png", b"garbage" * 30, "image/png"))],
                 "bad-value": [("ultrasound", ("a.png", _png(), "image/png"))],
                 "big": [("ultrasound", ("big.png", b"x" * (3 * 2**19), "image/png"))],
                 "too-big": [("ultrasound", ("huge.png", b"x" * (5 * 2**20), "image/png"))]}[kind]
        data = {"clinical__age": "old"} if kind == "bad-value" else {}
        cases.append((kind, files, data))
    expected = {"good": 200, "not-image": 400, "bad-value": 400, "big": 400, "too-big": 413}
    field = {"not-image": "field 'mammography_cc'", "bad-value": "age: 'old'", "big": "field 'ultrasound'",
             "too-big": "limit is"}

    async def hammer():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            replies = await asyncio.gather(*(client.post("/api/predict", files=f, data=d) for _, f, d in cases))
            alive = await client.get("/api/model")
        return replies, alive

    replies, alive = asyncio.run(hammer())
    for (kind, _, _), reply in zip(cases, replies):
        assert reply.status_code == expected[kind], (kind, reply.text)
        if kind != "good":
            assert field[kind] in reply.json()["detail"]
    assert alive.status_code == 200
    assert not list(spool.iterdir())


def test_the_default_heatmap_method_is_the_servers_choice(monkeypatch):
    """Score-CAM is one forward pass per channel for each image and fold network: a server of a large bundle can
    preselect gradcam (or none), and a form without ``method`` gets that."""
    seen = []

    def explainer(bundle, *, images, clinical, method):
        seen.append(method)
        raise RuntimeError("not needed here")

    files = [("ultrasound", ("a.png", _png(20), "image/png"))]
    for method in ("scorecam", "gradcam"):
        client = TestClient(create_app(StubBundle(), explainer=explainer, heatmap_method=method))
        page = client.get("/").text
        assert f"<option selected>{method}</option>" in page and page.count(" selected>") == 1
        assert client.post("/predict", files=files).status_code == 200
        assert client.post("/predict", files=files, data={"method": "gradcam++"}).status_code == 200
        assert seen[-2:] == [method, "gradcam++"]
    with pytest.raises(ValueError, match="heatmap_method: 'fastcam'"):
        create_app(StubBundle(), heatmap_method="fastcam")

    import uvicorn

    from breastfusion.app import server

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(app))
    server.serve(StubBundle(), heatmap_method="gradcam")
    assert TestClient(calls[-1]).get("/").text.count("<option selected>gradcam</option>") == 1


def test_serve_cli_refuses_an_unknown_heatmap_method(tmp_path):
    from typer.testing import CliRunner

    from breastfusion.cli.main import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--heatmap", "fastcam"])
    assert result.exit_code == 2 and "--heatmap: 'fastcam'" in result.output
