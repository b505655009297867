"""Manifest and clinical tables: any common encoding is read (or refused naming file and line); numbers are finite."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from breastfusion.data.manifest import ManifestError, load_cohort

HEADER = "subject_id,lesion_id,modality,view,path,label\n"


def _folder(root, manifest: bytes, clinical: bytes | None = None):
    root.mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(root / name)
    (root / "manifest.csv").write_bytes(manifest)
    if clinical is not None:
        (root / "clinical.csv").write_bytes(clinical)
    return root


ROWS = "P1,L1,ultrasound,,a.png,benign\nP2,L2,ultrasound,,b.png,malignant\n"


@pytest.mark.parametrize("name, encode", [("manifest.csv", "cp1252"), ("clinical.csv", "latin-1")])
def test_a_latin1_export_is_read_with_a_warning_naming_the_file_and_line(tmp_path, name, encode):
    manifest = (HEADER + ROWS.replace("P1,L1,ultrasound,,", "P1,L1,ultrasound,Réf,")).encode(
        encode if name == "manifest.csv" else "utf-8")
    clinical = "subject_id,age,origin\nP1,50,Zürich\nP2,61,Genève\n".encode(encode if name == "clinical.csv"
                                                                           else "utf-8")
    root = _folder(tmp_path, manifest, clinical)
    with pytest.warns(UserWarning, match=rf"{name}: not UTF-8 \(byte 0x(e9|fc) on line 2\); read as cp1252"):
        cohort = load_cohort(root)
    assert cohort.manifest["view"].tolist() == ["Réf", ""]
    assert cohort.clinical["origin"].tolist() == ["Zürich", "Genève"]


def test_utf8_with_bom_reads_silently_and_binary_or_undecodable_bytes_are_refused(tmp_path, recwarn):
    root = _folder(tmp_path / "bom", (HEADER + ROWS).encode("utf-8-sig"))
    assert load_cohort(root).manifest["subject_id"].tolist() == ["P1", "P2"] and not recwarn.list
    root = _folder(tmp_path / "utf16", (HEADER + ROWS).encode("utf-16"))
    with pytest.raises(ManifestError, match=r"manifest\.csv: 1 problem.*\n.*line 1: NUL byte .* UTF-16"):
        load_cohort(root)
    root = _folder(tmp_path / "hole", (HEADER + ROWS).encode() + b"P3,L3,ultrasound,\x81\xff,a.png,benign\n")
    with pytest.raises(ManifestError, match=r"line 4: byte 0x81 is not UTF-8, and byte 0x81 \(line 4\) is not "
                                            r"cp1252 either"):
        load_cohort(root)


@pytest.mark.parametrize("value", ["inf", "-inf"])
def test_non_finite_clinical_numbers_are_refused_naming_subject_and_column(tmp_path, value):
    root = _folder(tmp_path, (HEADER + ROWS).encode(), f"subject_id,age,bmi\nP1,50,22\nP2,{value},\n".encode())
    with pytest.raises(ManifestError, match=rf"clinical\.csv: 1 problem.*\n.*line 3 \(subject 'P2'\), column "
                                            rf"'age': {value} is not a finite number"):
        load_cohort(root)
    ok = _folder(tmp_path / "ok", (HEADER + ROWS).encode(), b"subject_id,age,bmi\nP1,50,22\nP2,,\n")
    assert pd.isna(load_cohort(ok).clinical["age"].iloc[1])  # empty stays a missing value
