"""The corpus of bad inputs: each gives its own clear error, and nothing is dropped silently."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from breastfusion.cli.main import app
from breastfusion.data.adapters import DatasetLayoutError, get_adapter, write_prepared
from breastfusion.data.cache import ArrayCache, preprocess_cohort
from breastfusion.data.manifest import ManifestError, load_cohort
from breastfusion.data.preprocess import params_for
from breastfusion.data.readers import ImageReadError

from .conftest import make_dicom


def _folder(root, rows, clinical=None):
    root.mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.random.default_rng(len(name)).integers(0, 255, (40, 40), dtype=np.uint8)).save(root / name)
    data = (root / "b.png").read_bytes()
    (root / "b.png").write_bytes(data[: len(data) // 2])  # truncated
    make_dicom(root / "c.dcm", np.zeros((8, 8), np.uint16), pixel_data=False)
    pd.DataFrame(rows, columns=["subject_id", "lesion_id", "modality", "view", "path", "label"]).to_csv(
        root / "manifest.csv", index=False)
    if clinical is not None:
        clinical.to_csv(root / "clinical.csv", index=False)
    return root


GOOD = [("P1", "L1", "ultrasound", "", "a.png", "benign"), ("P2", "L2", "ultrasound", "", "c.dcm", "malignant")]


@pytest.mark.parametrize("rows, clinical, pattern", [
    ([*GOOD, ("P3", "L3", "ultrasound", "", "a2.png", "BIRADS4")], None,
     r"line 4, column 'label': got 'BIRADS4'; expected one of \['benign', 'malignant'\]"),
    ([*GOOD, ("P3", "L3", "ultrasound", "", "gone.png", "benign")], None, r"line 4, column 'path': file not found"),
    ([*GOOD, ("P3", "L3", "ultrasound", "", "../../etc/passwd", "benign")], None,
     r"line 4, column 'path': '../../etc/passwd' resolves outside the manifest folder"),
    ([*GOOD, ("P1", "L1", "ultrasound", "", "b.png", "malignant")], None,
     r"lesion_id 'L1' \(lines \[2, 4\]\): labels \['benign', 'malignant'\] disagree"),
    (GOOD, pd.DataFrame({"subject_id": ["P1", None], "age": [50, 60]}),
     r"(?s)clinical.csv: 1 problem.*line 3, column 'subject_id': empty; expected a value"),
], ids=["unknown-label", "missing-file", "outside-root", "subject-two-labels", "nan-in-required-clinical-column"])
def test_manifest_level_errors(tmp_path, rows, clinical, pattern):
    with pytest.raises(ManifestError, match=pattern):
        load_cohort(_folder(tmp_path, rows, clinical))


def test_a_subject_with_two_labels_in_a_mapped_csv_is_refused(tmp_path):
    for name in ("x.png", "y.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / name)
    pd.DataFrame({"path": ["x.png", "y.png"], "label": ["benign", "malignant"], "pid": ["p1", "p1"]}).to_csv(
        tmp_path / "t.csv", index=False)
    prepared = get_adapter("generic")(tmp_path, modality="ultrasound", csv="t.csv", columns={"subject_id": "pid"})
    with pytest.raises(ManifestError, match=r"lesion_id 'p1' .*labels \['benign', 'malignant'\] disagree"):
        write_prepared(prepared, tmp_path / "out")
    pd.DataFrame({"path": ["x.png"], "label": ["probably benign"]}).to_csv(tmp_path / "u.csv", index=False)
    with pytest.raises(DatasetLayoutError, match=r"lines \[2\] hold \['probably benign'\]; map them with label_map"):
        get_adapter("generic")(tmp_path, modality="ultrasound", csv="u.csv")


def test_unreadable_images_are_all_listed_and_excluding_them_is_explicit_and_recorded(tmp_path):
    rows = [*GOOD, ("P3", "L3", "ultrasound", "", "b.png", "benign")]
    cohort = load_cohort(_folder(tmp_path / "m", rows))
    params = {"ultrasound": params_for("ultrasound", size=16)}
    with pytest.raises(ImageReadError) as info:
        preprocess_cohort(cohort, params, cache=ArrayCache(tmp_path / "c"))
    message = str(info.value)
    assert "2 of 3 image(s) could not be read" in message
    assert "c.dcm: DICOM without pixel data" in message and "b.png: cannot decode image" in message
    result = preprocess_cohort(cohort, params, cache=ArrayCache(tmp_path / "c"), exclude_unreadable=True)
    assert len(result.arrays) == 1 and len(result.excluded) == 2 and len(result.failures) == 2

    cli = CliRunner()
    out = cli.invoke(app, ["data", "preprocess", str(tmp_path / "m"), "--size", "16", "--cache-dir",
                           str(tmp_path / "c")])
    assert out.exit_code == 2 and "2 of 3 image(s) could not be read" in out.output
    out = cli.invoke(app, ["data", "preprocess", str(tmp_path / "m"), "--size", "16", "--cache-dir",
                           str(tmp_path / "c"), "--exclude-unreadable"])
    assert out.exit_code == 0, out.output
    record = json.loads((tmp_path / "m" / "preprocess.json").read_text())
    assert len(record["excluded_unreadable"]) == 2 and record["cache_hits"] == 1
    assert record["params"]["ultrasound"]["size"] == 16
    assert "1 arrays" in cli.invoke(app, ["cache", "info", "--dir", str(tmp_path / "c")]).output
    assert "removed 1 arrays" in cli.invoke(app, ["cache", "clear", "--dir", str(tmp_path / "c")]).output


def test_a_decompression_bomb_is_an_unreadable_file_that_exclude_unreadable_leaves_out(tmp_path):
    """A 20000 x 20000 PNG of a few hundred KB was a raw DecompressionBombError; it is now one more unreadable file."""
    from breastfusion.data.check import check_cohort

    from .test_reader_corpus import _bomb_png

    root = _folder(tmp_path / "m", GOOD)
    _bomb_png(root / "bomb.png")
    rows = [*GOOD, ("P3", "L3", "ultrasound", "", "bomb.png", "benign")]
    pd.DataFrame(rows, columns=["subject_id", "lesion_id", "modality", "view", "path", "label"]).to_csv(
        root / "manifest.csv", index=False)
    cohort = load_cohort(root)
    params = {"ultrasound": params_for("ultrasound", size=16)}
    with pytest.raises(ImageReadError, match=r"bomb\.png: refused as a possible decompression bomb"):
        preprocess_cohort(cohort, params, cache=ArrayCache(tmp_path / "c"))
    result = preprocess_cohort(cohort, params, cache=ArrayCache(tmp_path / "c"), exclude_unreadable=True)
    assert any("bomb.png" in str(path) for path in result.excluded)
    assert any(u["path"].endswith("bomb.png") and "decompression bomb" in u["error"]
               for u in check_cohort(cohort).unreadable)
