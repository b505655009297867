"""Synthetic out-of-fold and calibration prediction frames, shaped like a run's CSV files."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit


def fake_predictions(*, n_subjects: int = 120, n_folds: int = 3, repeats: int | None = None,
                     lesions: int = 1, variants: dict[str, float] | None = None, scale: float = 1.0,
                     shift: float = 0.0, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(predictions, calibration)`` for a cohort of ``n_subjects`` with known labels.

    Each variant's lesion logit is ``separation * (2y - 1) + noise``, passed through
    ``expit(scale * logit + shift)`` (``scale``/``shift`` != 1/0 make the probabilities
    miscalibrated). A fold's calibration rows are its training subjects (in-sample scores drawn
    the same way). ``repeats=None`` leaves the ``repeat`` column out; otherwise each repeat
    reassigns folds and redraws the noise.
    """
    rng = np.random.default_rng(seed)
    variants = variants or {"weak": 0.6, "strong": 1.5}
    y = (rng.random(n_subjects) < 0.4).astype(int)
    y[:2] = [0, 1]
    subjects = [f"S{i:03d}" for i in range(n_subjects)]
    test_rows, calib_rows = [], []
    for repeat in range(repeats or 1):
        fold = rng.permutation(np.arange(n_subjects) % n_folds)
        for name, separation in variants.items():
            for split in ("test", "training"):
                for k in range(n_folds):
                    members = np.flatnonzero(fold == k) if split == "test" else np.flatnonzero(fold != k)
                    for i in members:
                        for lesion in range(lesions):
                            z = separation * (2 * y[i] - 1) + rng.normal()
                            row = {"variant": name, "fold": k, "subject_id": subjects[i],
                                   "lesion_id": f"{subjects[i]}-L{lesion + 1}", "y": int(y[i]),
                                   "prob": float(expit(scale * z + shift))}
                            if repeats is not None:
                                row["repeat"] = repeat
                            (test_rows if split == "test" else calib_rows).append(
                                row if split == "test" else {**row, "split": "training"})
    return pd.DataFrame(test_rows), pd.DataFrame(calib_rows)
