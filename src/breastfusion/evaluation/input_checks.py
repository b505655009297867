"""Input checks shared by the evaluation statistics (metrics, DeLong, clinical utility, conformal, curves, aggregation).

Every public statistic validates its inputs here, so a bad call fails the
same way everywhere: a typed exception whose message names the argument,
the value received and what was expected.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MetricInputError", "SingleClassError", "check_labels_scores", "check_probability", "check_unit_interval"]


class MetricInputError(ValueError):
    """Labels, scores or a parameter given to a metric are unusable."""


class SingleClassError(MetricInputError):
    """The labels hold one class only, so a two-class statistic is undefined."""


def check_labels_scores(y, scores, *, name: str = "scores", probabilities: bool = False,
                        need_both: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validate 0/1 labels against scores of the same subjects.

    Args:
        y: labels, shape (n,), values in {0, 1} (1 = malignant / positive).
        scores: shape (n,) or (k, n) for k models scored on the same subjects.
        name: the argument name to use in messages.
        probabilities: also require scores in [0, 1].
        need_both: require at least one positive and one negative.

    Returns:
        ``(y, scores)`` as an int array of shape (n,) and a float array of
        the shape given.

    Raises:
        MetricInputError: empty input, labels other than 0/1, a length
            mismatch, NaN or infinite scores, probabilities outside [0, 1].
        SingleClassError: ``need_both`` and one class is absent.
    """
    y_arr = np.asarray(y)
    s_arr = np.asarray(scores, dtype=float)
    if y_arr.ndim != 1 or y_arr.size == 0:
        raise MetricInputError(f"y should be a non-empty 1-D array of 0/1 labels, got shape {y_arr.shape}")
    if s_arr.ndim not in (1, 2):
        raise MetricInputError(f"{name} should have shape (n,) or (k, n), got shape {s_arr.shape}")
    if s_arr.shape[-1] != y_arr.shape[0]:
        raise MetricInputError(f"length mismatch: y has {y_arr.shape[0]} subjects but {name} has "
                               f"{s_arr.shape[-1]} (shape {s_arr.shape}); pass one score per subject")
    values = np.unique(y_arr)
    if not np.all(np.isin(values, (0, 1))):
        raise MetricInputError(f"y should hold 0/1 labels (1 = malignant), got values {values[:10].tolist()}")
    if not np.all(np.isfinite(s_arr)):
        bad = int(np.sum(~np.isfinite(s_arr)))
        raise MetricInputError(f"{name} should be finite, got {bad} NaN or infinite value(s); "
                               "drop or impute those subjects first")
    if probabilities and (s_arr.min() < 0 or s_arr.max() > 1):
        raise MetricInputError(f"{name} should be probabilities in [0, 1], got range "
                               f"[{s_arr.min():.4g}, {s_arr.max():.4g}]")
    y_int = y_arr.astype(int)
    if need_both and values.size < 2:
        raise SingleClassError(f"y should hold both classes, got only class {int(values[0])} in "
                               f"{y_arr.size} subjects; this statistic needs positives and negatives")
    return y_int, s_arr


def check_probability(value: float, *, name: str, low_open: bool = True, high_open: bool = True) -> float:
    """Check that a level or rate lies in (0, 1) (ends closed on request).

    Raises:
        MetricInputError: naming ``name``, the value and the allowed interval.
    """
    v = float(value)
    low_ok = v > 0 if low_open else v >= 0
    high_ok = v < 1 if high_open else v <= 1
    if not (np.isfinite(v) and low_ok and high_ok):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise MetricInputError(f"{name} should be in {interval}, got {value!r}")
    return v


def check_unit_interval(values, *, name: str) -> np.ndarray:
    """Check an array of thresholds lies strictly inside (0, 1).

    Raises:
        MetricInputError: naming ``name`` and the offending values.
    """
    arr = np.atleast_1d(np.asarray(values, dtype=float))
    bad = arr[~((arr > 0) & (arr < 1))]
    if arr.size == 0 or bad.size:
        raise MetricInputError(f"{name} should be non-empty and inside (0, 1), got {bad[:5].tolist() or 'nothing'}")
    return arr
