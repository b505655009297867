"""CBIS-DDSM (Lee et al. 2017, TCIA): scanned-film mammograms as DICOM, with case-description CSVs.

Layout read: ``ROOT/{mass,calc}_case_description_{train,test}_set.csv`` (any
of the four) and the TCIA download tree ``ROOT/CBIS-DDSM/<folder>/<date-study>/<series>/1-1.dcm``,
where ``<folder>`` is the first component of the CSV's ``image file path``
(e.g. ``Mass-Training_P_00001_LEFT_CC``); the CSV's full path (UIDs) is used
when it exists instead.

Labels: ``pathology`` MALIGNANT → malignant; BENIGN and BENIGN_WITHOUT_CALLBACK
→ benign. One row per full mammogram; a breast's lesion is malignant if any of
its abnormalities (of that type) is. Subject = ``patient_id``; lesion =
patient + side + abnormality type; ``split`` keeps the official train/test.
``assessment`` (BI-RADS) and the descriptors are not exported.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from breastfusion.data.adapters.base import DatasetLayoutError, PreparedDataset, register, take_options

__all__ = ["prepare_cbis_ddsm"]

CSV_NAMES = {f"{kind}_case_description_{split}_set.csv": (kind, split)
             for kind in ("mass", "calc") for split in ("train", "test")}
PATHOLOGY = {"MALIGNANT": "malignant", "BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign"}


def _dicoms_by_folder(images: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    if images.is_dir():
        for entry in os.scandir(images):
            if entry.is_dir():
                found[entry.name] = sorted(Path(entry.path).rglob("*.dcm"))
    return found


@register("cbis_ddsm")
def prepare_cbis_ddsm(root: Path, **options) -> PreparedDataset:
    """Map CBIS-DDSM to the manifest contract.

    Raises:
        DatasetLayoutError: no case-description CSV, missing columns, unknown pathology, or a missing DICOM.
    """
    take_options("cbis_ddsm", options, {})
    root = Path(root)
    csvs = {name: spec for name, spec in CSV_NAMES.items() if (root / name).is_file()}
    if not csvs:
        raise DatasetLayoutError(f"{root} is not CBIS-DDSM: expected one of {sorted(CSV_NAMES)} and the CBIS-DDSM/ "
                                 "folder of the TCIA download")
    folders = _dicoms_by_folder(root / "CBIS-DDSM")
    records, problems = [], []
    for name, (kind, split) in csvs.items():
        table = pd.read_csv(root / name, dtype=str)
        need = ["patient_id", "left or right breast", "image view", "pathology", "image file path"]
        missing = [c for c in need if c not in table.columns]
        if missing:
            raise DatasetLayoutError(f"{root / name}: missing column(s) {missing}; found {list(table.columns)}")
        for i, row in table.iterrows():
            line = int(i) + 2
            pathology = str(row["pathology"]).strip()
            if pathology not in PATHOLOGY:
                problems.append(f"{name} line {line}, column 'pathology': got {pathology!r}; expected {list(PATHOLOGY)}")
                continue
            listed = str(row["image file path"]).strip().strip('"')
            folder = listed.split("/")[0]
            direct = root / "CBIS-DDSM" / listed
            dicoms = [direct] if direct.is_file() else folders.get(folder, [])
            if len(dicoms) != 1:
                problems.append(f"{name} line {line}: {'no' if not dicoms else len(dicoms)} DICOM file(s) under "
                                f"CBIS-DDSM/{folder}/; expected exactly one full mammogram")
                continue
            side = str(row["left or right breast"]).strip().upper()
            records.append({"subject_id": row["patient_id"].strip(),
                            "lesion_id": f"{row['patient_id'].strip()}-{side}-{kind}",
                            "modality": "mammography", "view": str(row["image view"]).strip().upper(),
                            "path": dicoms[0].relative_to(root).as_posix(), "pathology": PATHOLOGY[pathology],
                            "laterality": side[:1], "abnormality": kind, "split": split})
    if problems:
        raise DatasetLayoutError(f"{root}: {len(problems)} problem(s) in the CBIS-DDSM tables:\n  - "
                                 + "\n  - ".join(problems[:20]))
    frame = pd.DataFrame(records)
    malignant = frame.groupby("lesion_id")["pathology"].transform(lambda s: (s == "malignant").any())
    frame["label"] = malignant.map({True: "malignant", False: "benign"})
    frame["source_label"] = frame.groupby("path")["pathology"].transform(lambda s: "+".join(sorted(set(s))))
    frame = frame.drop_duplicates("path").drop(columns="pathology")
    notes = ["labels: MALIGNANT -> malignant; BENIGN, BENIGN_WITHOUT_CALLBACK -> benign; "
             "a breast's lesion (per abnormality type) is malignant if any abnormality is",
             "subject = patient_id; split = the official train/test; BI-RADS assessment not exported"]
    return PreparedDataset("cbis_ddsm", root, frame.reset_index(drop=True), notes=notes)
