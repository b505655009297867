"""data check: balance, missing modalities, unreadable files, and near-duplicates across subjects (BUSI's too)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from breastfusion.cli.main import app
from breastfusion.data.adapters import get_adapter, write_prepared
from breastfusion.data.check import check_cohort, group_duplicates
from breastfusion.data.manifest import load_cohort

from .conftest import shared


def _cohort(root):
    """Five images: P1's scan re-saved slightly brighter under P2, one distinct, one truncated, one mammogram."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    scene = (np.kron(rng.integers(0, 255, (12, 16)), np.ones((10, 10))) ).astype(np.uint8)
    Image.fromarray(scene).save(root / "a.png")
    Image.fromarray(np.clip(scene.astype(int) + 6, 0, 255).astype(np.uint8)[:118]).save(root / "b.png")
    Image.fromarray(rng.integers(0, 255, (90, 70), dtype=np.uint8)).save(root / "c.png")
    Image.fromarray(scene).save(root / "d.png")
    (root / "d.png").write_bytes((root / "d.png").read_bytes()[:200])
    Image.fromarray(np.kron(rng.integers(0, 255, (8, 8)), np.ones((8, 8))).astype(np.uint8)).save(root / "m.png")
    rows = [("P1", "P1-L", "ultrasound", "a.png", "benign"), ("P2", "P2-L", "ultrasound", "b.png", "malignant"),
            ("P3", "P3-L", "ultrasound", "c.png", "benign"), ("P4", "P4-L", "ultrasound", "d.png", "benign"),
            ("P1", "P1-L", "mammography", "m.png", "benign")]
    pd.DataFrame(rows, columns=["subject_id", "lesion_id", "modality", "path", "label"]).assign(view="").to_csv(
        root / "manifest.csv", index=False)
    return root


def test_check_reports_everything_on_a_small_cohort(tmp_path):
    report = check_cohort(load_cohort(_cohort(tmp_path)))
    assert (report.n_images, report.n_subjects) == (5, 4)
    assert report.class_balance == {"mammography": {"benign": 1}, "ultrasound": {"benign": 3, "malignant": 1}}
    assert report.subjects_missing["mammography"] == ["P2", "P3", "P4"]
    assert [u["path"].endswith("d.png") for u in report.unreadable] == [True]
    assert "truncated" in report.unreadable[0]["error"]
    assert report.bit_depths["ultrasound"] == {"8": 3}
    pair = [p for p in report.duplicate_pairs if {p["a"][-5:], p["b"][-5:]} == {"a.png", "b.png"}]
    assert len(pair) == 1 and pair[0]["cross_subject"] and pair[0]["cross_label"]
    assert all("c.png" not in p["a"] + p["b"] for p in report.duplicate_pairs)
    assert report.leaking_groups == [0]
    grouped = pd.read_csv(group_duplicates(load_cohort(tmp_path), report))
    assert grouped.set_index("path")["cv_group"].loc[["a.png", "b.png", "m.png"]].tolist() == ["P1+P2"] * 3
    assert grouped.set_index("path")["cv_group"]["c.png"] == "P3"
    assert load_cohort(tmp_path / "manifest.grouped.csv").manifest["subject_id"].tolist()[:2] == ["P1", "P2"]


def test_check_cli_writes_json_and_fails_on_unreadable_files(tmp_path):
    root = _cohort(tmp_path / "c")
    result = CliRunner().invoke(app, ["data", "check", str(root), "--json", str(tmp_path / "r.json"),
                                      "--group-duplicates"])
    assert result.exit_code == 1, result.output
    assert "1 unreadable file" in result.output and "d.png" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert {"n_images", "n_subjects", "unreadable", "duplicate_groups"} <= set(report)
    assert isinstance(report["duplicate_groups"][0], list) and (root / "manifest.grouped.csv").is_file()


@pytest.fixture(scope="module")
def busi_report(tmp_path_factory):
    busi = shared("busi")
    out = write_prepared(get_adapter("busi")(busi, normal="benign"), tmp_path_factory.mktemp("busi"))
    return check_cohort(load_cohort(out))


def test_busi_known_duplicates_are_found(busi_report):
    """Every pair of near_duplicates.csv (a ground truth found by thumbnail correlation) is found by pHash."""
    truth = pd.read_csv(shared("busi") / "near_duplicates.csv")
    found = {frozenset(p.split("/images/")[-1] for p in (d["a"], d["b"])) for d in busi_report.duplicate_pairs}
    expected = {frozenset(pair) for pair in zip(truth["file_a"], truth["file_b"])}
    assert expected <= found
    assert frozenset({"benign/benign (433).png", "malignant/malignant (145).png"}) in found
    assert busi_report.n_images == 780 and not busi_report.unreadable
    assert len(busi_report.leaking_groups) == len(busi_report.duplicate_groups) > 50
    assert len(found) < 4 * len(expected)  # the extra pairs are the list's admitted incompleteness, not noise


def test_one_bad_file_never_stops_the_check_and_blank_images_are_suspicious(tmp_path, monkeypatch):
    """A multi-frame colour DICOM (pydicom's own) decodes; a file whose hashing fails (simulated: a reader that
    returns a 4-D array, as colour cine loops once did) and a garbage file are listed with their reason; a
    constant image is listed as suspicious; the rest of the cohort is still checked."""
    import shutil

    from pydicom.data import get_testdata_file

    from breastfusion.data import check as check_module

    root = _cohort(tmp_path / "c")
    shutil.copyfile(get_testdata_file("SC_rgb_rle_2frame.dcm"), root / "cine.dcm")
    Image.fromarray(np.full((40, 40), 3, np.uint8)).save(root / "flat.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "weird.png")
    (root / "junk.png").write_bytes(b"\x89PNG not really" * 20)
    manifest = pd.read_csv(root / "manifest.csv", dtype=str)
    extra = [("P5", "P5-L", "ultrasound", name, "benign", "") for name in ("cine.dcm", "flat.png", "weird.png",
                                                                           "junk.png")]
    pd.concat([manifest, pd.DataFrame(extra, columns=manifest.columns)]).to_csv(root / "manifest.csv", index=False)

    real = check_module.read_image

    def flaky(path):
        image = real(path)
        if str(path).endswith("weird.png"):
            image.pixels = np.zeros((1, 1, 40, 3), np.float32)
        return image

    monkeypatch.setattr(check_module, "read_image", flaky)
    report = check_cohort(load_cohort(root))
    errors = {Path(u["path"]).name: u["error"] for u in report.unreadable}
    assert set(errors) == {"d.png", "junk.png", "weird.png"}
    assert errors["weird.png"].startswith(str(root / "weird.png")) and "TypeError" in errors["weird.png"]
    assert [Path(s["path"]).name for s in report.suspicious] == ["flat.png"]
    assert "nearly constant" in report.suspicious[0]["problem"]
    assert report.n_images == 9 and report.bit_depths["ultrasound"]["8"] == 5  # cine.dcm, flat.png among them
