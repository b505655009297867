"""CMMD (Cui et al. 2021, TCIA): Chinese Mammography Database, DICOM with a clinical spreadsheet.

Layout read: ``ROOT/CMMD_clinicaldata_revision.xlsx`` (columns ``ID1``,
``LeftRight``, ``Age``, ``number``, ``abnormality``, ``classification``,
``subtype``; one row per patient and breast) and the TCIA tree
``ROOT/CMMD/<ID1>/<study>/<series>/1-N.dcm``. Each DICOM's breast side is read
from its ``ImageLaterality`` tag (headers only; no identifying tag is kept).

Labels: ``classification`` Benign / Malignant per breast. A DICOM whose breast
has no row is left out (recorded). Subject = ``ID1``; lesion = ID1 + side.
``clinical.csv``: ``age`` only. ``subtype`` (molecular subtype, malignant
only) is a label proxy and never exported; ``abnormality`` (calcification /
mass / both) is read off the image and is an opt-in group (``features="lexicon"``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from breastfusion.data.adapters.base import DatasetLayoutError, PreparedDataset, register, take_options

__all__ = ["prepare_cmmd"]

REQUIRED = ("ID1", "LeftRight", "Age", "abnormality", "classification")


@register("cmmd")
def prepare_cmmd(root: Path, **options) -> PreparedDataset:
    """Map CMMD to the manifest contract (with ``clinical.csv``).

    Raises:
        DatasetLayoutError: no spreadsheet / ``CMMD/`` folder, missing columns, bad values, unreadable headers.
    """
    import pydicom

    opts = take_options("cmmd", options, {"features": ("clinical", "lexicon")})
    root = Path(root)
    sheets = sorted(root.glob("CMMD_clinicaldata_revision*.xlsx")) if root.is_dir() else []
    if not sheets or not (root / "CMMD").is_dir():
        raise DatasetLayoutError(f"{root} is not CMMD: expected CMMD_clinicaldata_revision.xlsx and the CMMD/ folder "
                                 "of the TCIA download")
    table = pd.read_excel(sheets[-1], sheet_name=0, dtype=object)
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise DatasetLayoutError(f"{sheets[-1]}: missing column(s) {missing}; found {list(table.columns)}")
    table["side"] = table["LeftRight"].astype(str).str.strip().str.upper().str[:1]
    table["label"] = table["classification"].astype(str).str.strip().str.lower()
    bad = ~table["label"].isin(["benign", "malignant"]) | ~table["side"].isin(["L", "R"])
    if bad.any():
        raise DatasetLayoutError(f"{sheets[-1]}: rows {[int(i) + 2 for i in table.index[bad]]} have LeftRight not "
                                 "L/R or classification not Benign/Malignant")
    label_of = {(str(r.ID1).strip(), r.side): r.label for r in table.itertuples()}
    rows, excluded = [], []
    for file in sorted((root / "CMMD").rglob("*.dcm")):
        rel = file.relative_to(root).as_posix()
        subject = file.relative_to(root / "CMMD").parts[0]
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001  (pydicom raises several types for a bad header)
            raise DatasetLayoutError(f"{file}: cannot read the DICOM header ({exc})") from exc
        side = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "")).upper()[:1]
        label = label_of.get((subject, side))
        if label is None:
            excluded.append({"path": rel, "reason": f"no clinical row for {subject} side {side or '?'}"})
            continue
        rows.append({"subject_id": subject, "lesion_id": f"{subject}-{side}", "modality": "mammography",
                     "view": str(ds.get("ViewPosition", "") or ""), "path": rel, "label": label,
                     "laterality": side})
    if not rows:
        raise DatasetLayoutError(f"{root / 'CMMD'}: no DICOM matched a row of {sheets[-1].name}")
    manifest = pd.DataFrame(rows)
    per_subject = table.assign(ID1=table["ID1"].astype(str).str.strip()).groupby("ID1")
    clinical = pd.DataFrame({"subject_id": per_subject["Age"].first().index,
                             "age": pd.to_numeric(per_subject["Age"].first(), errors="coerce").to_numpy()})
    lexicon = per_subject["abnormality"].agg(lambda s: "+".join(sorted(set(s.dropna().astype(str)))))
    lexicon = pd.DataFrame({"subject_id": lexicon.index, "lexicon_abnormality": lexicon.to_numpy()})
    clinical = clinical[clinical["subject_id"].isin(manifest["subject_id"])]
    lexicon = lexicon[lexicon["subject_id"].isin(manifest["subject_id"])]
    tables = {}
    if opts["features"] == "lexicon":
        clinical = clinical.merge(lexicon, on="subject_id")
    else:
        tables["lexicon.csv"] = lexicon
    notes = ["labels: classification Benign/Malignant per breast; DICOMs of a breast with no row are left out",
             "never exported: subtype (malignant only: a label proxy), number",
             "clinical.csv: age; abnormality type is an opt-in group (features='lexicon')"]
    return PreparedDataset("cmmd", root, manifest, clinical=clinical.reset_index(drop=True), tables=tables,
                           excluded=pd.DataFrame(excluded, columns=["path", "reason"]), notes=notes)
