"""Subject-grouped, label-stratified cross-validation folds.

One seeded splitter per experiment, shared by every variant: all lesions of a
subject land in the same fold, so no subject is ever on both sides of a split.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

__all__ = ["subject_folds", "official_split", "training_only", "SplitError", "TRAIN_VALUES", "VALIDATION_VALUES",
           "TEST_VALUES", "TRAINING_ONLY_VALUES"]

#: Values of a split column that mean train / validation / test (case-insensitive).
TRAIN_VALUES = ("train", "training")
VALIDATION_VALUES = ("val", "valid", "validation", "tune")
TEST_VALUES = ("test", "testing")
#: Values of a training-only column that mean "train on it, never test it" / "an ordinary lesion" (case-insensitive;
#: a blank cell is an ordinary lesion).
TRAINING_ONLY_VALUES = ("1", "true", "yes")
ORDINARY_VALUES = ("0", "false", "no", "")


class SplitError(ValueError):
    """A dataset's own split column is missing, inconsistent or lacks a part; the message names it."""


def subject_folds(lesions: pd.DataFrame, *, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split lesions into folds grouped by subject and stratified by ``y``.

    Args:
        lesions: one row per lesion with ``subject_id`` and ``y`` (0/1), and optionally
            ``group`` (a coarser grouping, e.g. subjects sharing duplicate images), which
            then decides the folds.
        n_splits: number of folds.
        seed: shuffling seed.

    Returns:
        ``n_splits`` pairs of (train positions, test positions) into ``lesions``.

    Raises:
        ValueError: fewer subjects of a class than folds.
    """
    subject_label = lesions.groupby("subject_id")["y"].max()
    counts = subject_label.value_counts()
    for label in (0, 1):
        if counts.get(label, 0) < n_splits:
            name = "malignant" if label else "benign"
            raise ValueError(f"{counts.get(label, 0)} {name} subject(s) cannot fill {n_splits} folds; "
                             f"lower cv.n_splits or add subjects")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    groups = lesions["group"] if "group" in lesions else lesions["subject_id"]
    return [(train, test) for train, test in splitter.split(lesions, lesions["y"], groups=groups)]


def official_split(manifest: pd.DataFrame, lesions: pd.DataFrame, column: str
                   ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """A dataset's own train / validation / test split, as positions into ``lesions``.

    Args:
        manifest: the cohort's manifest (one row per image) holding ``column``.
        lesions: one row per lesion (``Cohort.lesions``), in the order positions index.
        column: the manifest column with values from :data:`TRAIN_VALUES`, :data:`VALIDATION_VALUES` and
            :data:`TEST_VALUES` (case-insensitive), e.g. BreastMNIST's ``split``.

    Returns:
        (train positions, validation positions or ``None`` when there is no validation part, test positions).

    Raises:
        SplitError: no such column, a value outside those lists, a lesion or a subject (or duplicate group)
            whose images sit in two parts, or no train or no test lesion.
    """
    if column not in manifest:
        raise SplitError(f"cv.split_column: the manifest has no column {column!r}; it has {list(manifest.columns)}")
    values = manifest[column].astype(str).str.strip().str.lower()
    known = TRAIN_VALUES + VALIDATION_VALUES + TEST_VALUES
    bad = manifest.loc[~values.isin(known), column]
    if len(bad):
        raise SplitError(f"manifest column {column!r}, line {int(bad.index[0]) + 2}: {bad.iloc[0]!r}; expected one "
                         f"of {list(known)}")
    part = values.map(lambda v: "train" if v in TRAIN_VALUES else "val" if v in VALIDATION_VALUES else "test")
    per_lesion = part.groupby(manifest["lesion_id"].astype(str)).agg(set)
    mixed = per_lesion[per_lesion.map(len) > 1]
    if len(mixed):
        raise SplitError(f"lesion {mixed.index[0]!r} has images in {sorted(mixed.iloc[0])} of {column!r}; a lesion "
                         "belongs to one part")
    lesion_part = per_lesion.map(lambda s: next(iter(s))).reindex(lesions["lesion_id"].astype(str)).to_numpy()
    for key in ("subject_id", "group"):
        if key not in lesions:
            continue
        spread = pd.Series(lesion_part).groupby(lesions[key].to_numpy()).nunique()
        if not (spread > 1).any():
            continue
        message = (f"{key} {spread[spread > 1].index[0]!r} ({int((spread > 1).sum())} in all) has lesions in two "
                   f"parts of {column!r}")
        if key == "subject_id":
            raise SplitError(message + ": that leaks a subject across the split")
        # A published split is what a benchmark reports on; duplicate groups straddling it are its defect.
        warnings.warn(message + ": the published split leaks these near-duplicate groups; figures on it are "
                      "optimistic", stacklevel=2)
    train, val, test = (np.flatnonzero(lesion_part == p) for p in ("train", "val", "test"))
    if not len(train) or not len(test):
        raise SplitError(f"manifest column {column!r} has {len(train)} train and {len(test)} test lesions; "
                         "both are needed")
    return train, (val if len(val) else None), test


def training_only(manifest: pd.DataFrame, lesions: pd.DataFrame, column: str) -> np.ndarray:
    """Which lesions only ever train: another cohort pooled into every training fold, never tested.

    Why: a small cohort's network learns from more images when a second cohort (another site's scans of the same
    task) joins each training fold, while every reported figure stays on the first cohort's held-out folds
    (:func:`breastfusion.data.pooling.pool_cohorts` writes such a manifest).

    Args:
        manifest: the cohort's manifest (one row per image) holding ``column``.
        lesions: one row per lesion (``Cohort.lesions``), in the order positions index.
        column: the manifest column, :data:`TRAINING_ONLY_VALUES` for a training-only lesion and
            ``0`` / ``false`` / ``no`` / blank for an ordinary one (case-insensitive).

    Returns:
        A boolean mask over ``lesions``.

    Raises:
        SplitError: no such column, another value, a lesion with rows of both kinds, a subject (or duplicate group)
            with lesions of both kinds, or no ordinary lesion.
    """
    if column not in manifest:
        raise SplitError(f"cv.training_only_column: the manifest has no column {column!r}; it has "
                         f"{list(manifest.columns)}. Write a pooled manifest folder with `breastfusion data pool "
                         "COHORT --add NAME=OTHER --out DIR`, or unset the key")
    values = manifest[column].fillna("").astype(str).str.strip().str.lower()
    bad = manifest.loc[~values.isin(TRAINING_ONLY_VALUES + ORDINARY_VALUES), column]
    if len(bad):
        raise SplitError(f"manifest column {column!r}, line {int(bad.index[0]) + 2}: {bad.iloc[0]!r}; expected one "
                         f"of {list(TRAINING_ONLY_VALUES)} (training only) or {list(ORDINARY_VALUES[:-1])} / blank")
    flag = pd.Series(values.isin(TRAINING_ONLY_VALUES).to_numpy(), index=manifest["lesion_id"].astype(str).to_numpy())
    per_lesion = flag.groupby(level=0).agg(["min", "max"])
    mixed = per_lesion.index[per_lesion["min"] != per_lesion["max"]]
    if len(mixed):
        raise SplitError(f"lesion {mixed[0]!r} is training-only on some rows of {column!r} and not on others; "
                         "mark all of a lesion's rows alike")
    mask = per_lesion["max"].reindex(lesions["lesion_id"].astype(str)).to_numpy(dtype=bool)
    for key in ("subject_id", "group"):
        if key in lesions:
            spread = pd.Series(mask).groupby(lesions[key].to_numpy()).nunique()
            if (spread > 1).any():
                raise SplitError(f"{key} {spread[spread > 1].index[0]!r} has training-only and ordinary lesions "
                                 f"({column!r}); an ordinary lesion would be tested beside its own subject's "
                                 "training images")
    if mask.all():
        raise SplitError(f"every lesion is training-only ({column!r}); nothing is left to test")
    return mask
