"""Pool other cohorts into one cohort's training folds: one manifest, the pooled lesions marked training-only.

Why: a cohort of a few hundred lesions is small for a network; another site's scans of the same task, added to
every training fold, give it more to learn from, while every figure stays on the first cohort's own held-out
folds (``cv.training_only_column``, :func:`breastfusion.evaluation.splits.training_only`). The first cohort keeps
its ids, so its folds are the ones it gets alone; a pooled cohort's subject, lesion and duplicate-group ids get
its name as a prefix, so no id is shared across sites.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from breastfusion.data.adapters.base import place_file
from breastfusion.data.manifest import CLINICAL_FILENAME, MANIFEST_FILENAME, Cohort, cohort_from_frame, load_cohort

__all__ = ["TRAINING_ONLY_COLUMN", "pool_cohorts", "write_pooled"]

#: The manifest column :func:`pool_cohorts` writes (``1``: training only).
TRAINING_ONLY_COLUMN = "training_only"
_ID_COLUMNS = ("subject_id", "lesion_id", "cv_group")


def _absolute_masks(value: object, root: Path) -> str:
    """A ``mask_path`` cell (``|``-separated, relative to ``root``) with absolute paths."""
    if not isinstance(value, str) or not value.strip():
        return ""
    return "|".join(str((root / part).resolve()) for part in value.split("|") if part)


def _marked(cohort: Cohort, prefix: str, flag: str, column: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``cohort``'s manifest (absolute paths, ids prefixed, ``column`` = ``flag``) and clinical table."""
    manifest = cohort.manifest.copy()
    if column in manifest:
        raise ValueError(f"cohort {cohort.root}: its manifest already has a column {column!r}; pool into another "
                         "column name")
    if "mask_path" in manifest:
        manifest["mask_path"] = manifest["mask_path"].map(lambda v: _absolute_masks(v, cohort.root))
    clinical = cohort.clinical.copy()
    if prefix:
        for key in _ID_COLUMNS:
            if key in manifest:
                filled = manifest[key].notna() & (manifest[key].astype(str).str.strip() != "")
                manifest.loc[filled, key] = prefix + manifest.loc[filled, key].astype(str)
        clinical["subject_id"] = prefix + clinical["subject_id"].astype(str)
    manifest[column] = flag
    return manifest, clinical


def pool_cohorts(primary: Cohort, others: Mapping[str, Cohort], *, column: str = TRAINING_ONLY_COLUMN) -> Cohort:
    """``primary`` with every cohort of ``others`` added as training-only lesions.

    Args:
        primary: the cohort the folds and figures are on; its ids and rows are kept as they are (first).
        others: ``{name: cohort}`` pooled into training; ``name:`` prefixes their ids.
        column: the marking column; run with ``cv.training_only_column`` set to it.

    Returns:
        A validated in-memory cohort (image and mask paths absolute). Clinical tables are stacked (the union of
        their columns; a variable a cohort lacks is missing for its subjects).

    Raises:
        ValueError: no other cohort, a name that is empty or has a colon, or a manifest that already has ``column``.
    """
    if not others:
        raise ValueError("pool_cohorts: no cohort to pool; give at least one {name: cohort}")
    for name in others:
        if not name or ":" in name:
            raise ValueError(f"pool_cohorts: cohort name {name!r}: expected a non-empty name without ':'")
    parts = [_marked(primary, "", "0", column)] + [_marked(c, f"{n}:", "1", column) for n, c in others.items()]
    manifest = pd.concat([m for m, _ in parts], ignore_index=True)
    clinical = pd.concat([c for _, c in parts], ignore_index=True)
    return cohort_from_frame(manifest, clinical if len(clinical.columns) > 1 else None, root=primary.root,
                             allow_outside_root=True)


def _linked(cohort: Cohort, name: str, out: Path) -> Cohort:
    """``cohort`` with its images and masks hard-linked (copied where a link fails) under ``out/images/name``,
    its paths pointing there (absolute)."""
    def place(path: str) -> str:
        source = Path(path)
        try:
            rel = source.resolve().relative_to(cohort.root.resolve())
        except ValueError:  # outside its own folder (allow_outside_root): its whole path, so no two names collide
            rel = Path("outside", *source.resolve().parts[1:])
        target = out / "images" / name / rel
        place_file(source, target, "link")
        return str(target.resolve())

    manifest = cohort.manifest.copy()
    manifest["path"] = manifest["path"].map(place)
    if "mask_path" in manifest:
        manifest["mask_path"] = manifest["mask_path"].map(
            lambda v: "|".join(place(m) for m in _absolute_masks(v, cohort.root).split("|") if m))
    return Cohort(root=cohort.root, manifest=manifest, clinical=cohort.clinical)


def write_pooled(primary: Cohort | str | Path, others: Mapping[str, Cohort | str | Path], out: str | Path, *,
                 column: str = TRAINING_ONLY_COLUMN) -> Path:
    """Write the manifest folder ``out``: the cohort ``primary`` with the cohorts ``others`` pooled into its
    training folds (:func:`pool_cohorts`), every image hard-linked under ``out/images/NAME`` (``primary``'s under
    ``out/images/primary``), so the folder is self-contained like ``breastfusion data prepare``'s.

    Args:
        primary, others: cohorts, or manifest folders / CSVs to load.
        out: the folder to write.
        column: as for :func:`pool_cohorts`.

    Returns:
        ``out``; run it with ``cv.training_only_column`` set to ``column``.
    """
    out = Path(out).resolve()
    if "primary" in others:
        raise ValueError("write_pooled: 'primary' names the first cohort's images; give the others other names")
    out.mkdir(parents=True, exist_ok=True)
    cohorts = {n: c if isinstance(c, Cohort) else load_cohort(c) for n, c in {"primary": primary, **others}.items()}
    linked = {n: _linked(c, n, out) for n, c in cohorts.items()}
    pooled = pool_cohorts(linked.pop("primary"), linked, column=column)
    manifest = pooled.manifest.copy()
    for key in ("path", "mask_path"):
        if key in manifest:
            manifest[key] = manifest[key].map(lambda v: "|".join(os.path.relpath(p, out) for p in v.split("|"))
                                              if isinstance(v, str) and v else v)
    manifest.to_csv(out / MANIFEST_FILENAME, index=False)
    if len(pooled.clinical.columns) > 1:
        pooled.clinical.to_csv(out / CLINICAL_FILENAME, index=False)
    elif (out / CLINICAL_FILENAME).exists():  # an earlier pooling's table would be read as this one's
        (out / CLINICAL_FILENAME).unlink()
    return out
