"""Repeated cross-validation: which rows belong to which repeat, and mean ± sd across repeats.

With ``cv.repeats = R`` the out-of-fold predictions carry an integer
``repeat`` column (0 .. R-1; each repeat reshuffles the folds with seed
``cv.seed + repeat``). A frame without the column is one repeat (repeat 0).
Intervals and DeLong tests need each subject once, so they are computed on
repeat 0; the spread across repeats is reported as mean ± sd.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

__all__ = ["REPEAT", "with_repeat", "repeat_ids", "first_repeat", "mean_sd_across_repeats"]

REPEAT = "repeat"


def with_repeat(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with an integer ``repeat`` column (all 0 when it had none); the input is not changed."""
    if REPEAT in frame.columns:
        return frame.astype({REPEAT: int})
    return frame.assign(**{REPEAT: 0})


def repeat_ids(frame: pd.DataFrame) -> list[int]:
    """Sorted repeat ids present in ``frame`` (``[0]`` without a ``repeat`` column)."""
    if REPEAT not in frame.columns:
        return [0]
    return sorted(int(r) for r in pd.unique(frame[REPEAT]))


def first_repeat(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the lowest repeat (the whole frame without a ``repeat`` column)."""
    if REPEAT not in frame.columns:
        return frame
    return frame[frame[REPEAT] == repeat_ids(frame)[0]]


def mean_sd_across_repeats(frame: pd.DataFrame,
                           metrics: Callable[[pd.DataFrame], Mapping[str, float]]) -> dict[str, dict] | None:
    """Each metric's mean, sd (ddof=1) and per-repeat values across the repeats of ``frame``.

    Args:
        frame: rows of every repeat, with a ``repeat`` column (absent: one repeat).
        metrics: computes ``{name: value}`` from one repeat's rows.

    Returns:
        ``{name: {"mean", "sd", "per_repeat"}}``, or ``None`` when there is one repeat only
        (nothing to spread; the headline numbers are that repeat's).
    """
    ids = repeat_ids(frame)
    if len(ids) < 2:
        return None
    values = [dict(metrics(frame[frame[REPEAT] == r])) for r in ids]
    out = {}
    for name in values[0]:
        column = np.array([v[name] for v in values], dtype=float)
        finite = column[np.isfinite(column)]
        out[name] = {"mean": float(finite.mean()) if finite.size else float("nan"),
                     "sd": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
                     "per_repeat": column.tolist()}
    return out
