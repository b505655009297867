"""Patient identity never leaves the DICOM files: not into a run, a report, an explanation, a bundle, the cache,
predictions or the page.

A small cohort is written as DICOMs carrying distinctive identifying values (names, IDs, birth date,
accession number, institution, study dates); it goes through run, report, explain, export, predict and
the page; then every byte written is scanned for those values (in plain files, inside zip archives such
as ``.npz`` / ``.skops``, and inside base64 data URIs of HTML pages), as ASCII/UTF-8 and as UTF-16.
"""

from __future__ import annotations

import base64
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from .conftest import TINY_MODEL
from .data.conftest import write_dicom

PHI = {
    "PatientName": "Quixotl^Zebulonia",
    "PatientID": "PHIID7Q3X9",
    "PatientBirthDate": "19230407",
    "AccessionNumber": "ACC5K2M8W",
    "InstitutionName": "Xyloquent Memorial Hospital",
    "ReferringPhysicianName": "Vrondel^Ophira",
    "StudyDate": "19990311",
    "SeriesDate": "19990312",
    "AcquisitionDate": "19990313",
    "ContentDate": "19990314",
    "StudyID": "STUDY88Q1",
}
#: What is searched: each value, the parts of person names, and the dates as a reader might reformat them.
NEEDLES = sorted({*PHI.values(), "Quixotl", "Zebulonia", "Xyloquent", "Vrondel", "Ophira", "1923-04-07",
                  "1999-03-11", "07/04/1923"})


def _to_dicom(png: Path, out: Path, subject: str) -> None:
    pixels = np.asarray(Image.open(png).convert("L"))
    write_dicom(out, pixels, bits_allocated=8, sop_class="1.2.840.10008.5.1.4.1.1.1.2",
                **{**PHI, "PatientID": f"{PHI['PatientID']}{subject}", "Modality": "MG"})


def _blobs(path: Path):
    """The bytes of ``path``, of each member when it is a zip archive, and of each base64 data URI it holds."""
    data = path.read_bytes()
    yield str(path), data
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for name in archive.namelist():
                yield f"{path}!{name}", archive.read(name)
    for match in re.finditer(rb"base64,([A-Za-z0-9+/=]{16,})", data):
        yield f"{path} (data URI)", base64.b64decode(match.group(1) + b"===")


def _leaks(roots: list[Path]) -> tuple[int, list[str]]:
    needles = [(n, enc, n.encode(enc)) for n in NEEDLES for enc in ("utf-8", "utf-16-le")]
    scanned, leaks = 0, []
    for root in roots:
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            for where, blob in _blobs(path):
                scanned += 1
                lowered = blob.lower()
                leaks += [f"{where}: {n!r} ({enc})" for n, enc, b in needles if b.lower() in lowered]
    return scanned, leaks


def test_no_identifying_dicom_value_reaches_any_output(tmp_path, monkeypatch):
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from breastfusion import export_bundle, load_bundle
    from breastfusion.app import create_app
    from breastfusion.cli.main import app as cli
    from breastfusion.config import load_config
    from breastfusion.data.manifest import load_cohort
    from breastfusion.data.synthetic.cohort import generate_cohort
    from breastfusion.explain.runner import explain_run
    from breastfusion.experiment.run import run_experiment

    cache = tmp_path / "cache"
    monkeypatch.setenv("BREASTFUSION_CACHE", str(cache))
    source, cohort_dir = tmp_path / "source", tmp_path / "cohort"
    generate_cohort(source, n_subjects=16, seed=2, image_px=32, masks=False)
    manifest = pd.read_csv(source / "manifest.csv", dtype=str, keep_default_na=False)
    (cohort_dir / "images").mkdir(parents=True)
    paths = []
    for i, row in manifest.iterrows():
        target = cohort_dir / "images" / f"image{i:03d}.dcm"
        _to_dicom(source / row["path"], target, row["subject_id"])
        paths.append(str(target.relative_to(cohort_dir)))
    manifest.assign(path=paths).to_csv(cohort_dir / "manifest.csv", index=False)
    (cohort_dir / "clinical.csv").write_bytes((source / "clinical.csv").read_bytes())
    assert PHI["InstitutionName"].encode() in (cohort_dir / "images" / "image000.dcm").read_bytes()

    run_dir = tmp_path / "run"
    config = load_config(None, name="privacy", manifest=cohort_dir,
                         variants={"fused": ["mammography", "ultrasound", "clinical"]}, model=TINY_MODEL,
                         training={"epochs": 1, "batch_size": 16}, cv={"n_splits": 2, "bootstrap": 100})
    run_experiment(load_cohort(cohort_dir), config, run_dir)  # results.json, report.html, figures, checkpoints
    explain_run(run_dir, method="gradcam", n_cases=1, importance_repeats=1, faithfulness_methods=["gradcam"])
    bundle_dir = export_bundle(run_dir, tmp_path / "bundle")
    predictions = tmp_path / "predictions" / "predictions.csv"
    result = CliRunner().invoke(cli, ["predict", str(bundle_dir), str(cohort_dir), "--out", str(predictions)])
    assert result.exit_code == 0, result.output
    assert "Quixotl" not in result.output and "Xyloquent" not in result.output

    page_dir = tmp_path / "page"
    page_dir.mkdir()
    rows = manifest.assign(path=paths)[manifest["subject_id"] == manifest["subject_id"].iloc[0]]
    names = {("mammography", "CC"): "mammography_cc", ("mammography", "MLO"): "mammography_mlo"}
    files = [(names.get((r.modality, r.view), "ultrasound"), (Path(r.path).name,
                                                               (cohort_dir / r.path).read_bytes(), "application/dicom"))
             for r in rows.itertuples()]
    client = TestClient(create_app(load_bundle(bundle_dir)))
    html = client.post("/predict", files=files, data={"method": "gradcam"})
    assert html.status_code == 200 and html.text.count("data:image/png;base64,") == len(rows)
    (page_dir / "page.html").write_text(html.text)
    (page_dir / "api.json").write_text(client.post("/api/predict", files=files, data={"method": "gradcam"}).text)
    (page_dir / "model.json").write_text(client.get("/api/model").text)

    # the scanner finds the values where they are: in the DICOMs, and inside a compressed archive
    archive = tmp_path / "control" / "control.npz"
    archive.parent.mkdir()
    np.savez_compressed(archive, note=np.frombuffer(PHI["AccessionNumber"].encode() * 50, dtype=np.uint8))
    assert PHI["AccessionNumber"].encode() not in archive.read_bytes()
    assert _leaks([cohort_dir / "images"])[1] and _leaks([archive])[1]

    scanned, leaks = _leaks([run_dir, bundle_dir, cache, predictions.parent, page_dir])
    assert scanned > 30 and list(cache.rglob("*")), "the scan must cover the cache and every output"
    assert not leaks, "\n".join(leaks[:20])
