"""Subject-grouped, label-stratified cross-validation folds.

One seeded splitter per experiment, shared by every variant: all lesions of a
subject land in the same fold, so no subject is ever on both sides of a split.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

__all__ = ["subject_folds"]


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
