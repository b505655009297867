"""A dataset of your own: a folder per class, or a CSV whose columns you map.

* Folder per class: ``ROOT/<class>/**/<image>`` (DICOM, PNG, JPEG, PGM, TIFF,
  NPY, NPZ). Folder names map to labels through ``label_map`` (default:
  ``benign`` and ``malignant`` as themselves); a folder mapped to ``exclude`` is
  left out (recorded); an unmapped folder is an error. Without patient IDs,
  each image is its own subject.
* CSV: ``csv="table.csv"`` (relative to ROOT or absolute) and ``columns`` mapping
  manifest fields to its columns, e.g. ``{"path": "file", "label": "dx",
  "subject_id": "patient"}``; ``path`` and ``label`` are required; other
  columns are kept. Label values map through ``label_map`` (case-insensitive).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from breastfusion.data.adapters.base import (
    AdapterOptionError,
    DatasetLayoutError,
    PreparedDataset,
    register,
    take_options,
)
from breastfusion.data.manifest import IMAGE_MODALITIES, LABELS

__all__ = ["prepare_generic", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".pgm", ".tif", ".tiff", ".npy", ".npz", ".bmp")
FIELDS = ("path", "label", "subject_id", "lesion_id", "view")


def _label_map(given: dict | None) -> dict[str, str]:
    mapping = {label: label for label in LABELS}
    for key, value in (given or {}).items():
        if value not in (*LABELS, "exclude"):
            raise AdapterOptionError(f"label_map[{key!r}] should be one of {[*LABELS, 'exclude']}, got {value!r}")
        mapping[str(key).strip().lower()] = value
    return mapping


@register("generic")
def prepare_generic(root: Path, **options) -> PreparedDataset:
    """Map a folder-per-class tree or a mapped CSV to the manifest contract.

    Args:
        root: the dataset folder.
        modality: ``mammography`` or ``ultrasound`` (required).
        csv: a CSV file to read instead of class folders.
        columns: ``{manifest field: CSV column}`` (with ``csv``).
        label_map: ``{dataset label or folder: benign | malignant | exclude}``.

    Raises:
        AdapterOptionError: no or bad modality, unknown fields in ``columns``.
        DatasetLayoutError: no class folders / CSV, unmapped labels, missing columns or files.
    """
    opts = take_options("generic", options, {"modality": (), "csv": (), "columns": (), "label_map": ()})
    if opts["modality"] not in IMAGE_MODALITIES:
        raise AdapterOptionError(f"dataset 'generic' needs modality, one of {list(IMAGE_MODALITIES)}; "
                                 f"got {opts['modality']!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: not a folder")
    mapping = _label_map(opts["label_map"])
    if opts["csv"]:
        frame, notes = _from_csv(root, Path(opts["csv"]), opts["columns"] or {}, mapping)
    else:
        frame, notes = _from_folders(root, mapping)
    frame["modality"] = opts["modality"]
    excluded = frame[frame["label"] == "exclude"][["path", "source_label"]]
    excluded = excluded.assign(reason="label '" + excluded["source_label"].astype(str) + "' mapped to exclude")
    frame = frame[frame["label"] != "exclude"].reset_index(drop=True)
    notes.append(f"label map: {mapping}")
    return PreparedDataset("generic", root, frame, excluded=excluded[["path", "reason"]].reset_index(drop=True),
                           notes=notes)


def _from_folders(root: Path, mapping: dict[str, str]) -> tuple[pd.DataFrame, list[str]]:
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DatasetLayoutError(f"{root}: no class folders; expected e.g. benign/ and malignant/ holding images, "
                                 "or pass csv=")
    unmapped = [f.name for f in folders if f.name.lower() not in mapping]
    if unmapped:
        raise DatasetLayoutError(f"{root}: folder(s) {unmapped} have no label; map them with label_map, e.g. "
                                 f"{{{unmapped[0]!r}: 'benign' | 'malignant' | 'exclude'}}")
    rows = []
    for folder in folders:
        for file in sorted(folder.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                rel = file.relative_to(root).as_posix()
                sid = rel.rsplit(".", 1)[0]
                rows.append({"subject_id": sid, "lesion_id": sid, "view": "", "path": rel,
                             "label": mapping[folder.name.lower()], "source_label": folder.name})
    if not rows:
        raise DatasetLayoutError(f"{root}: class folders {[f.name for f in folders]} hold no image "
                                 f"(looked for {list(IMAGE_SUFFIXES)})")
    return pd.DataFrame(rows), ["folder per class; no patient IDs: each image is its own subject"]


def _from_csv(root: Path, csv: Path, columns: dict[str, str], mapping: dict[str, str]):
    file = csv if csv.is_absolute() else root / csv
    if not file.is_file():
        raise DatasetLayoutError(f"{file}: CSV not found")
    unknown = sorted(set(columns) - set(FIELDS))
    if unknown:
        raise AdapterOptionError(f"columns: unknown field(s) {unknown}; expected some of {list(FIELDS)}")
    table = pd.read_csv(file, dtype=str, keep_default_na=False, na_values=[""])
    columns = {"path": "path", "label": "label", **columns}
    absent = {f: c for f, c in columns.items() if c not in table.columns}
    if absent:
        raise DatasetLayoutError(f"{file}: column(s) {sorted(absent.values())} (for {sorted(absent)}) not found; "
                                 f"columns are {list(table.columns)}")
    frame = table.rename(columns={c: f for f, c in columns.items()})
    frame["source_label"] = frame["label"]
    labels = frame["label"].astype(str).str.strip().str.lower()
    unmapped = ~labels.isin(mapping)
    if unmapped.any():
        lines = [int(i) + 2 for i in frame.index[unmapped]]
        raise DatasetLayoutError(f"{file}: column {columns['label']!r} lines {lines[:10]} hold "
                                 f"{sorted(labels[unmapped].unique())}; map them with label_map to benign, "
                                 "malignant or exclude")
    frame["label"] = labels.map(mapping)
    notes = [f"CSV {file.name}, columns {columns}"]
    if "subject_id" not in columns:
        frame["subject_id"] = frame["path"]
        notes.append("no subject column: each image is its own subject")
    if "lesion_id" not in columns:
        frame["lesion_id"] = frame["subject_id"]
    if "view" not in columns:
        frame["view"] = ""
    missing = [f"line {i + 2}: {p}" for i, p in frame["path"].items() if not (root / p).is_file()]
    if missing:
        raise DatasetLayoutError(f"{file}: {len(missing)} listed file(s) not found under {root}, e.g. {missing[:3]}")
    return frame, notes
