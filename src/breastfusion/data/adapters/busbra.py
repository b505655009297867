"""BUS-BRA (Gómez-Flores et al. 2024): 1,875 breast ultrasound images of 1,064 patients, biopsy-proven.

Layout read: ``ROOT/bus_data.csv`` (columns include ``ID``, ``Case``,
``Pathology``; e.g. ``bus_0001-l``, ``1``, ``benign``), ``ROOT/Images/<ID>.png``
and ``ROOT/Masks/mask_<NNNN-x>.png``.

Labels: ``Pathology`` (benign / malignant, biopsy-proven; no normal cases).
Subjects: ``Case`` (the patient); a patient's images of one pathology form one
lesion. ``Histology`` and ``BIRADS`` are label proxies and are not exported;
``Device`` is kept as ``device`` (for domain-shift analyses).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from breastfusion.data.adapters.base import DatasetLayoutError, PreparedDataset, register, take_options

__all__ = ["prepare_busbra"]

REQUIRED = ("ID", "Case", "Pathology")


@register("busbra")
def prepare_busbra(root: Path, **options) -> PreparedDataset:
    """Map BUS-BRA to the manifest contract.

    Raises:
        DatasetLayoutError: no ``bus_data.csv`` / ``Images/``, missing columns, unknown pathology or missing image.
    """
    take_options("busbra", options, {})
    root = Path(root)
    if (root / "BUSBRA").is_dir():
        root = root / "BUSBRA"
    table_file = root / "bus_data.csv"
    if not table_file.is_file() or not (root / "Images").is_dir():
        raise DatasetLayoutError(f"{root} is not BUS-BRA: expected bus_data.csv and the folders Images/ and Masks/")
    table = pd.read_csv(table_file, dtype=str)
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise DatasetLayoutError(f"{table_file}: missing column(s) {missing}; found {list(table.columns)}")
    label = table["Pathology"].str.strip().str.lower()
    bad = ~label.isin(["benign", "malignant"])
    if bad.any():
        raise DatasetLayoutError(f"{table_file}: column 'Pathology' lines {[int(i) + 2 for i in table.index[bad]]} "
                                 f"hold {sorted(label[bad].astype(str).unique())}; expected benign or malignant")
    paths = "Images/" + table["ID"] + ".png"
    absent = [f"line {i + 2}: {p}" for i, p in paths.items() if not (root / p).is_file()]
    if absent:
        raise DatasetLayoutError(f"{table_file}: {len(absent)} image(s) listed but missing, e.g. {absent[:3]}")
    masks = "Masks/mask_" + table["ID"].str.replace("bus_", "", regex=False) + ".png"
    subject = "busbra-" + table["Case"].str.strip()
    manifest = pd.DataFrame({
        "subject_id": subject, "lesion_id": subject + "-" + label, "modality": "ultrasound", "view": "",
        "path": paths, "label": label, "source_label": table["Pathology"],
        "mask_path": [m if (root / m).is_file() else "" for m in masks],
        "device": table["Device"] if "Device" in table else ""})
    notes = ["labels: Pathology benign/malignant as given (biopsy-proven); no normal cases",
             "subject = Case (patient ID); Histology and BIRADS are label proxies and are not exported"]
    return PreparedDataset("busbra", root, manifest, notes=notes)
