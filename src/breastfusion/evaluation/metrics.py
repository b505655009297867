"""Subject-level metrics with bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

__all__ = ["subject_level", "auc_with_ci"]


def subject_level(predictions: pd.DataFrame, *, prob: str = "prob") -> pd.DataFrame:
    """Aggregate lesion-level predictions to one row per subject (mean probability, max label)."""
    return predictions.groupby("subject_id", sort=True).agg(y=("y", "max"), prob=(prob, "mean")).reset_index()


def auc_with_ci(y: np.ndarray, p: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """ROC AUC with a stratified-bootstrap percentile confidence interval.

    Positives and negatives are resampled separately (with replacement), so
    every replicate keeps the class counts and has a defined AUC.

    Args:
        y: 0/1 labels, shape (n,).
        p: scores, shape (n,).
        n_boot: bootstrap replicates.
        seed: seed of the resampling.
        level: confidence level.

    Returns:
        ``(auc, (low, high))``.
    """
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    if len(np.unique(y)) < 2:
        raise ValueError("AUC needs both classes among the subjects")
    auc = float(roc_auc_score(y, p))
    rng = np.random.default_rng(seed)
    pos, neg = p[y == 1], p[y == 0]
    boot = np.empty(n_boot)
    for b in range(n_boot):
        bp = rng.choice(pos, len(pos))
        bn = rng.choice(neg, len(neg))
        # Mann-Whitney form of the AUC, ties counted half.
        boot[b] = ((bp[:, None] > bn[None, :]).mean() + 0.5 * (bp[:, None] == bn[None, :]).mean())
    alpha = (1 - level) / 2
    return auc, (float(np.quantile(boot, alpha)), float(np.quantile(boot, 1 - alpha)))
