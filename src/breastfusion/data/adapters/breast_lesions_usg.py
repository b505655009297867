"""BrEaST / Breast-Lesions-USG (Pawłowska et al. 2024, TCIA): ultrasound with a clinical spreadsheet.

Layout read: ``ROOT/BrEaST-Lesions-USG-clinical-data-*.xlsx`` (first sheet, 21
columns) and ``ROOT/BrEaST-Lesions_USG-images_and_masks/caseNNN.png`` with
``caseNNN_tumor.png`` masks.

* Target: ``Classification`` (benign / malignant); the 4 ``normal`` cases are
  left out by default (``normal="benign"`` keeps them as benign).
* Never exported: ``Diagnosis``, ``Verification``, ``Interpretation``,
  ``BIRADS`` (recorded with or after the diagnosis: label proxies).
* ``clinical.csv``: the variables known before diagnosis: ``Age`` (numeric),
  ``Tissue_composition`` (categorical; ``lactating`` split off as a binary),
  ``Signs`` and ``Symptoms`` (multi-valued with ``&``: one 0/1 column per value).
* BI-RADS lexicon descriptors (Shape, Margin, Echogenicity, Posterior_features,
  Halo, Calcifications, Skin_thickening) are read off the image by a
  radiologist: they go to ``lexicon.csv`` (never read by ``load_cohort``)
  unless ``features="lexicon"`` adds them to ``clinical.csv`` as ``lexicon_*``.
* ``not available`` (and ``not applicable``) become missing values.
* CaseID is the subject (one scan per case). Images are RGBA with colour
  overlays; the readers flag chromatic pixels for the ultrasound preprocessing.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from breastfusion.data.adapters.base import DatasetLayoutError, PreparedDataset, register, take_options

__all__ = ["prepare_breast_lesions_usg", "LEAKING_COLUMNS", "LEXICON_COLUMNS", "PRE_DIAGNOSIS_COLUMNS"]

LEAKING_COLUMNS = ("Diagnosis", "Verification", "Interpretation", "BIRADS")
LEXICON_COLUMNS = ("Shape", "Margin", "Echogenicity", "Posterior_features", "Halo", "Calcifications",
                   "Skin_thickening")
PRE_DIAGNOSIS_COLUMNS = ("Age", "Tissue_composition", "Signs", "Symptoms")
REQUIRED = ("CaseID", "Image_filename", "Mask_tumor_filename", "Classification", *PRE_DIAGNOSIS_COLUMNS,
            *LEXICON_COLUMNS)
MISSING = ("not available", "not applicable")
IMAGE_DIR = "BrEaST-Lesions_USG-images_and_masks"


def _multi_hot(values: pd.Series, prefix: str) -> pd.DataFrame:
    """``a&b`` strings → 0/1 columns ``prefix_a``, ``prefix_b``; missing rows stay missing; ``no`` is all-zero."""
    dummies = values.fillna("").str.get_dummies(sep="&").drop(columns=["no"], errors="ignore")
    dummies.columns = [f"{prefix}_" + re.sub(r"[^0-9a-z]+", "_", c.strip().lower()).strip("_") for c in dummies.columns]
    dummies = dummies.astype(float)
    dummies[values.isna().to_numpy()] = np.nan
    return dummies


@register("breast_lesions_usg")
def prepare_breast_lesions_usg(root: Path, **options) -> PreparedDataset:
    """Map BrEaST-Lesions-USG to the manifest contract (with ``clinical.csv``).

    Args:
        root: the dataset folder.
        normal: ``exclude`` (default) or ``benign``.
        features: ``clinical`` (default: pre-diagnosis variables only) or ``lexicon`` (add the descriptors).

    Raises:
        DatasetLayoutError: no clinical spreadsheet, missing columns, or no image folder.
    """
    opts = take_options("breast_lesions_usg", options, {"normal": ("exclude", "benign"),
                                                        "features": ("clinical", "lexicon")})
    root = Path(root)
    sheets = sorted(root.glob("BrEaST-Lesions-USG-clinical-data*.xlsx")) if root.is_dir() else []
    if not sheets or not (root / IMAGE_DIR).is_dir():
        raise DatasetLayoutError(f"{root} is not BrEaST-Lesions-USG: expected "
                                 f"BrEaST-Lesions-USG-clinical-data-*.xlsx and the folder {IMAGE_DIR}/")
    sheet = sheets[-1]
    table = pd.read_excel(sheet, sheet_name=0, dtype=object)
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise DatasetLayoutError(f"{sheet}: missing column(s) {missing}; expected the 21 published columns, "
                                 f"found {list(table.columns)}")
    table = table.replace(list(MISSING), np.nan)
    table["subject_id"] = table["CaseID"].map(lambda v: f"breast-{int(v):03d}")
    label = table["Classification"].astype(str).str.strip().str.lower()
    bad = ~label.isin(["benign", "malignant", "normal"])
    if bad.any():
        rows = [int(i) + 2 for i in table.index[bad]]
        raise DatasetLayoutError(f"{sheet}: column 'Classification' rows {rows} hold "
                                 f"{sorted(label[bad].unique())}; expected benign, malignant or normal")
    table["source_label"] = label
    table["path"] = IMAGE_DIR + "/" + table["Image_filename"].astype(str)
    table["mask_path"] = table["Mask_tumor_filename"].map(lambda v: f"{IMAGE_DIR}/{v}" if isinstance(v, str) else "")
    excluded = pd.DataFrame(columns=["path", "reason"])
    if opts["normal"] == "exclude":
        normal = label == "normal"
        excluded = table.loc[normal, ["path"]].assign(reason="normal: no lesion (normal='exclude')")
        table = table[~normal]
    table["label"] = table["source_label"].replace({"normal": "benign"})
    manifest = table.assign(lesion_id=table["subject_id"], modality="ultrasound", view="")[
        ["subject_id", "lesion_id", "modality", "view", "path", "label", "source_label", "mask_path"]]

    tissue = table["Tissue_composition"].astype("string")
    clinical = pd.DataFrame({
        "subject_id": table["subject_id"],
        "age": pd.to_numeric(table["Age"], errors="coerce"),
        "tissue_composition": tissue.str.replace("lactating&", "").str.replace("lactating", "").replace("", pd.NA),
        "lactating": tissue.str.contains("lactating").astype("Float64"),
    })
    clinical = pd.concat([clinical, _multi_hot(table["Signs"].astype("string").str.lower(), "signs"),
                          _multi_hot(table["Symptoms"].astype("string").str.lower(), "symptoms")], axis=1)
    lexicon = table[["subject_id", *LEXICON_COLUMNS]].rename(columns={c: f"lexicon_{c.lower()}"
                                                                     for c in LEXICON_COLUMNS})
    tables = {}
    if opts["features"] == "lexicon":
        clinical = clinical.merge(lexicon, on="subject_id")
    else:
        tables["lexicon.csv"] = lexicon
    notes = [
        "labels: Classification benign/malignant as given; normal -> "
        + ("left out (no lesion)" if opts["normal"] == "exclude" else "benign"),
        f"never exported (label proxies): {list(LEAKING_COLUMNS)}",
        "clinical.csv: pre-diagnosis variables only (age, tissue composition, signs, symptoms)"
        + ("; plus the BI-RADS lexicon descriptors (features='lexicon')" if opts["features"] == "lexicon" else
           "; BI-RADS lexicon descriptors are in lexicon.csv, opt in with features='lexicon'"),
        "'not available' / 'not applicable' -> missing; '&'-joined values -> one 0/1 column each",
        "subject = CaseID (one scan per case)",
    ]
    return PreparedDataset("breast_lesions_usg", root, manifest.reset_index(drop=True),
                           clinical=clinical.reset_index(drop=True), tables=tables,
                           excluded=excluded.reset_index(drop=True), notes=notes)
