"""BUSI (Al-Dhabyani et al. 2020, ``Dataset_BUSI_with_GT``): breast ultrasound, three classes.

Layout read: ``ROOT/{benign,malignant,normal}/<class> (N).png`` with masks
``<class> (N)_mask.png`` (and ``_mask_1``, ``_mask_2``) beside them; ``ROOT`` may
also be the folder holding ``Dataset_BUSI_with_GT/``.

Labels: ``benign`` and ``malignant`` as filed; ``normal`` (no lesion) is left
out by default (``normal="benign"`` merges it into benign, as MedMNIST does).
BUSI has no patient IDs, so every image is its own subject: near-duplicate
frames of one woman can then fall into different folds; run ``data check``
and use its duplicate groups.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from breastfusion.data.adapters.base import DatasetLayoutError, PreparedDataset, register, take_options

__all__ = ["prepare_busi"]

_IMAGE = re.compile(r"^(benign|malignant|normal) \((\d+)\)\.png$")
_MASK = re.compile(r"^(benign|malignant|normal) \((\d+)\)_mask(?:_\d+)?\.png$")


@register("busi")
def prepare_busi(root: Path, **options) -> PreparedDataset:
    """Map BUSI to the manifest contract.

    Args:
        root: the dataset folder.
        normal: ``exclude`` (default) or ``benign``.

    Raises:
        DatasetLayoutError: ``root`` has no ``benign/`` and ``malignant/`` folders of BUSI-named PNGs.
    """
    opts = take_options("busi", options, {"normal": ("exclude", "benign")})
    root = Path(root)
    if (root / "Dataset_BUSI_with_GT").is_dir():
        root = root / "Dataset_BUSI_with_GT"
    rows, excluded, masks = [], [], {}
    for label in ("benign", "malignant", "normal"):
        folder = root / label
        if not folder.is_dir():
            if label == "normal":
                continue
            found = sorted(p.name for p in root.iterdir())[:10] if root.is_dir() else "nothing (not a folder)"
            raise DatasetLayoutError(f"{root} is not BUSI: expected folders benign/, malignant/ (and normal/) of "
                                     f"'<class> (N).png' images; found {found}")
        for file in sorted(folder.iterdir()):
            if (m := _MASK.match(file.name)) and m.group(1) == label:
                masks.setdefault((label, int(m.group(2))), []).append(f"{label}/{file.name}")
            elif (m := _IMAGE.match(file.name)) and m.group(1) == label:
                rows.append({"number": int(m.group(2)), "source_label": label, "path": f"{label}/{file.name}"})
    if not any(r["source_label"] == "malignant" for r in rows) or not any(r["source_label"] == "benign" for r in rows):
        raise DatasetLayoutError(f"{root} is not BUSI: no 'benign (N).png' / 'malignant (N).png' images in "
                                 "benign/ and malignant/")
    frame = pd.DataFrame(rows)
    frame["mask_path"] = [("|".join(sorted(masks.get((r.source_label, r.number), [])))) for r in frame.itertuples()]
    frame["subject_id"] = frame["source_label"].str[0].str.upper() + frame["number"].map("{:03d}".format)
    frame["subject_id"] = "busi-" + frame["subject_id"]
    frame["lesion_id"] = frame["subject_id"]
    frame["modality"] = "ultrasound"
    frame["view"] = ""
    normal = frame["source_label"] == "normal"
    if opts["normal"] == "exclude":
        excluded = frame.loc[normal, ["path"]].assign(reason="normal: no lesion (normal='exclude')")
        frame = frame[~normal]
    frame["label"] = frame["source_label"].replace({"normal": "benign"})
    notes = [
        "labels: benign -> benign, malignant -> malignant, "
        + ("normal -> left out (no lesion)" if opts["normal"] == "exclude" else "normal -> benign (as MedMNIST)"),
        "no patient IDs in BUSI: each image is its own subject (busi-<B|M|N><number>); near-duplicates across "
        "subjects exist, see `breastfusion data check`",
        "mask_path: every mask file of the image, '|'-separated (the ROI is their union)",
    ]
    manifest = frame[["subject_id", "lesion_id", "modality", "view", "path", "label", "source_label", "mask_path"]]
    return PreparedDataset("busi", root, manifest.reset_index(drop=True),
                           excluded=pd.DataFrame(excluded) if len(excluded) else
                           pd.DataFrame(columns=["path", "reason"]), notes=notes)
