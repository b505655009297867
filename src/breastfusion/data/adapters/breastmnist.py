"""BreastMNIST (MedMNIST v2): BUSI at 28x28 in one ``breastmnist.npz``, with the official split.

Keys read: ``{train,val,test}_images`` (N, 28, 28) uint8 and ``{train,val,test}_labels`` (N, 1).
Label 0 means **malignant**; label 1 means normal *or* benign, which the file
cannot tell apart, so it maps to ``benign`` (say so when reporting). Each image
is written as a PNG under ``images/<split>/`` in the output folder and is its own
subject (no patient IDs); the official split is kept in the ``split`` column.
It is BUSI again (see ``../busi``): not an independent test set for a BUSI model.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from breastfusion.data.adapters.base import DatasetLayoutError, PreparedDataset, register, take_options

__all__ = ["prepare_breastmnist"]

SPLITS = ("train", "val", "test")
LABELS = {0: "malignant", 1: "benign"}


@register("breastmnist")
def prepare_breastmnist(root: Path, **options) -> PreparedDataset:
    """Map ``breastmnist.npz`` to the manifest contract.

    Args:
        root: the folder holding ``breastmnist.npz`` (or the file itself).

    Raises:
        DatasetLayoutError: no such file, or it lacks the official keys, or labels other than 0/1.
    """
    take_options("breastmnist", options, {})
    root = Path(root)
    file = root if root.suffix == ".npz" else root / "breastmnist.npz"
    if not file.is_file():
        raise DatasetLayoutError(f"{root} is not BreastMNIST: expected the file breastmnist.npz (MedMNIST v2)")
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetLayoutError(f"{file}: cannot read as NPZ ({exc})") from exc
    expected = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
    missing = [k for k in expected if k not in arrays]
    if missing:
        raise DatasetLayoutError(f"{file} is not BreastMNIST: missing arrays {missing}; found {sorted(arrays)}")
    rows, generated = [], {}
    for split in SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"].reshape(-1)
        if images.ndim != 3 or len(images) != len(labels):
            raise DatasetLayoutError(f"{file}: {split}_images of shape {images.shape} and {split}_labels of "
                                     f"{len(labels)} rows; expected (N, H, W) and N labels")
        bad = sorted(set(np.unique(labels).tolist()) - set(LABELS))
        if bad:
            raise DatasetLayoutError(f"{file}: {split}_labels holds {bad}; expected 0 (malignant) or 1 (normal/benign)")
        for i, (image, label) in enumerate(zip(images, labels)):
            rel = f"images/{split}/{split}_{i:04d}.png"
            generated[rel] = np.asarray(image, dtype=np.uint8)
            sid = f"breastmnist-{split}-{i:04d}"
            rows.append({"subject_id": sid, "lesion_id": sid, "modality": "ultrasound", "view": "", "path": rel,
                         "label": LABELS[int(label)], "split": split, "source_label": int(label)})
    notes = ["labels: 0 -> malignant, 1 (normal + benign, not separable) -> benign",
             "split: MedMNIST's official train/val/test, kept as a column; it leaks near-duplicates",
             "no patient IDs: each image is its own subject; these are BUSI's images at 28x28"]
    return PreparedDataset("breastmnist", file.parent, pd.DataFrame(rows), notes=notes, generated=generated)
