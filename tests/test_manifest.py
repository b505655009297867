"""The manifest contract: every violation is reported with file, line, column and expectation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from breastfusion.data.manifest import ManifestError, load_cohort

GOOD = [
    dict(subject_id="P1", lesion_id="P1-L1", modality="mammography", view="CC", path="a.png", label="benign"),
    dict(subject_id="P1", lesion_id="P1-L1", modality="ultrasound", view="", path="b.png", label="benign"),
    dict(subject_id="P2", lesion_id="P2-L1", modality="ultrasound", view="", path="c.png", label="malignant"),
]


def _write(root: Path, rows: list[dict], clinical: pd.DataFrame | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "b.png", "c.png"):
        (root / name).write_bytes(b"png")
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    if clinical is not None:
        clinical.to_csv(root / "clinical.csv", index=False)
    return root


def _with(i: int, **changes) -> list[dict]:
    rows = [dict(r) for r in GOOD]
    rows[i].update(changes)
    return rows


def test_a_good_manifest_loads(tmp_path):
    clinical = pd.DataFrame({"subject_id": ["P1", "P2"], "age": [50, 61]})
    cohort = load_cohort(_write(tmp_path, GOOD, clinical))
    assert list(cohort.lesions["y"]) == [0, 1]
    assert cohort.modalities == ("mammography", "ultrasound", "clinical")
    assert all(Path(p).is_absolute() for p in cohort.manifest["path"])


@pytest.mark.parametrize("rows, pattern", [
    (_with(1, modality="MRI"), r"line 3, column 'modality': got 'MRI'; expected one of \['mammography', 'ultrasound'\]"),
    (_with(2, label="maligant"), r"line 4, column 'label': got 'maligant'; expected one of \['benign', 'malignant'\]"),
    (_with(0, subject_id=""), r"line 2, column 'subject_id': empty"),
    (_with(2, path="missing.png"), r"line 4, column 'path': file not found: .*missing.png"),
    (_with(2, path="../outside.png"), r"line 4, column 'path': '../outside.png' resolves outside the manifest folder"),
    (_with(2, path="b.png"), r"lines \[3, 4\], column 'path': 'b.png' listed more than once"),
    (_with(1, label="malignant"), r"lesion_id 'P1-L1' \(lines \[2, 3\]\): labels \['benign', 'malignant'\] disagree"),
    (_with(2, lesion_id="P1-L1", label="benign"), r"lesion_id 'P1-L1' .* belongs to subjects \['P1', 'P2'\]"),
])
def test_manifest_errors_name_line_column_and_expectation(tmp_path, rows, pattern):
    with pytest.raises(ManifestError, match=pattern) as info:
        load_cohort(_write(tmp_path, rows))
    assert "manifest.csv" in str(info.value)


def test_every_problem_is_listed_not_just_the_first(tmp_path):
    rows = _with(1, modality="MRI")
    rows[2]["label"] = "unknown"
    with pytest.raises(ManifestError) as info:
        load_cohort(_write(tmp_path, rows))
    assert len(info.value.problems) == 2


def test_missing_columns_are_named(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "lesion_id"} for r in GOOD]
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['lesion_id'\]"):
        load_cohort(_write(tmp_path, rows))


def test_no_manifest_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest at .*manifest.csv"):
        load_cohort(tmp_path)


@pytest.mark.parametrize("clinical, pattern", [
    (pd.DataFrame({"subject_id": ["P1", "P1"], "age": [1, 2]}), r"'P1' appears more than once"),
    (pd.DataFrame({"patient": ["P1"], "age": [1]}), r"missing column 'subject_id'"),
    (pd.DataFrame({"subject_id": ["P1", "P9"], "age": [1, 2]}), r"\['P9'\] have clinical data but no image"),
])
def test_clinical_table_errors(tmp_path, clinical, pattern):
    with pytest.raises(ManifestError, match=pattern) as info:
        load_cohort(_write(tmp_path, GOOD, clinical))
    assert "clinical.csv" in str(info.value)
