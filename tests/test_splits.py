"""Subject-grouped folds: a subject is never on both sides of a split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from breastfusion.evaluation.splits import subject_folds


def _lesions(n_subjects: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_subjects):
        y = int(rng.random() < 0.4)
        for k in range(rng.integers(1, 4)):  # 1-3 lesions per subject
            rows.append({"subject_id": f"S{s}", "lesion_id": f"S{s}-{k}", "y": y})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_subject_in_train_and_test(seed):
    lesions = _lesions(90, seed)
    folds = subject_folds(lesions, n_splits=5, seed=seed)
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested) == list(range(len(lesions)))  # every lesion tested exactly once
    for train, test in folds:
        assert not set(lesions.iloc[train]["subject_id"]) & set(lesions.iloc[test]["subject_id"])
        assert lesions.iloc[test]["y"].nunique() == 2  # stratified: both classes in every test fold


def test_same_seed_same_folds_other_seed_other_folds():
    lesions = _lesions(60)
    a = subject_folds(lesions, n_splits=5, seed=7)
    b = subject_folds(lesions, n_splits=5, seed=7)
    c = subject_folds(lesions, n_splits=5, seed=8)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c))


def test_too_few_subjects_per_class():
    lesions = pd.DataFrame({"subject_id": list("abcdefg"), "lesion_id": list("abcdefg"), "y": [1, 1, 0, 0, 0, 0, 0]})
    with pytest.raises(ValueError, match="2 malignant subject"):
        subject_folds(lesions, n_splits=5, seed=0)
