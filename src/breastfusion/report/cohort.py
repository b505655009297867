"""The cohort section of a run: counts per modality and the findings of ``breastfusion data check``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from breastfusion.data.manifest import Cohort
from breastfusion.evaluation.splits import training_only

__all__ = ["CHECK_FILENAME", "cohort_summary", "data_check_findings"]

#: Where ``breastfusion data check DIR --json DIR/check.json`` leaves its report; a run picks it up from there.
CHECK_FILENAME = "check.json"
_EXAMPLES = 5


def data_check_findings(path: str | Path) -> dict[str, Any]:
    """The headline findings of a ``data check --json`` report.

    Args:
        path: the JSON file written by ``breastfusion data check DIR --json FILE``.

    Returns:
        ``source``, ``n_images``, ``n_unreadable`` (and up to five ``unreadable_examples``),
        ``subjects_missing`` (count per modality), ``n_duplicate_pairs``, ``n_cross_subject_pairs``,
        ``n_cross_label_pairs``, ``n_leaking_groups`` (near-duplicate groups spanning several
        subjects), ``max_distance`` (pHash bits).

    Raises:
        ValueError: the file is not JSON or lacks a key a check report has (named).
    """
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a JSON data-check report ({exc})") from None
    missing = [k for k in ("n_images", "unreadable", "duplicate_pairs", "leaking_groups") if k not in report]
    if missing:
        raise ValueError(f"{path}: a data-check report should have keys {missing}; "
                         "write it with `breastfusion data check DIR --json DIR/check.json`")
    pairs = report["duplicate_pairs"]
    return {
        "source": str(path),
        "n_images": int(report["n_images"]),
        "n_unreadable": len(report["unreadable"]),
        "unreadable_examples": [f"{u.get('path')}: {u.get('error')}" for u in report["unreadable"][:_EXAMPLES]],
        "subjects_missing": {m: len(ids) for m, ids in report.get("subjects_missing", {}).items()},
        "n_duplicate_pairs": len(pairs),
        "n_cross_subject_pairs": sum(bool(p.get("cross_subject")) for p in pairs),
        "n_cross_label_pairs": sum(bool(p.get("cross_label")) for p in pairs),
        "n_leaking_groups": len(report["leaking_groups"]),
        "max_distance": report.get("max_distance"),
    }


def cohort_summary(cohort: Cohort, *, training_only_column: str | None = None) -> dict[str, Any]:
    """Counts of the cohort a run used, and ``data check`` findings when the folder has ``check.json``.

    Returns:
        ``root``, ``n_subjects``, ``n_lesions``, ``n_malignant`` (subjects with a malignant lesion),
        ``n_images``, ``modalities``, ``subjects_per_modality`` (subjects with at least one image, or
        a clinical row, of each modality), ``images_per_modality``, ``n_cv_groups`` (cross-validation
        groups: subjects, or duplicate groups with a ``cv_group`` column), ``data_check`` (or ``None``), and with
        ``training_only_column`` (``cv.training_only_column``) ``n_training_only`` (lesions pooled into every
        training fold, never tested; they are in the counts above).
    """
    lesions, manifest = cohort.lesions, cohort.manifest
    per_modality = {m: int(manifest.loc[manifest["modality"] == m, "subject_id"].nunique())
                    for m in cohort.modalities if m != "clinical"}
    if "clinical" in cohort.modalities:
        per_modality["clinical"] = int(cohort.clinical["subject_id"].isin(lesions["subject_id"]).sum())
    check = cohort.root / CHECK_FILENAME
    return {
        "root": str(cohort.root),
        "n_subjects": int(lesions["subject_id"].nunique()),
        "n_lesions": int(len(lesions)),
        "n_malignant": int(lesions.groupby("subject_id")["y"].max().sum()),
        "n_images": int(len(manifest)),
        "modalities": list(cohort.modalities),
        "subjects_per_modality": per_modality,
        "images_per_modality": {m: int(n) for m, n in manifest["modality"].value_counts().sort_index().items()},
        "n_cv_groups": int(lesions["group"].nunique()),
        "data_check": data_check_findings(check) if check.is_file() else None,
        **({"n_training_only": int(training_only(manifest, lesions, training_only_column).sum())}
           if training_only_column is not None else {}),
    }
