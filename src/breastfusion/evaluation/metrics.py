"""Subject-level metrics, threshold selection on training data, and stratified bootstrap CIs.

All functions take one row per subject (see :func:`subject_level`): labels
``y`` in {0, 1} (1 = malignant) and scores ``p`` where higher means more
likely malignant. A subject is called positive when ``p >= threshold``.

Bootstrap intervals resample subjects with replacement *within each class*
(stratified), so every replicate keeps the class counts and every metric is
defined; the replicates are drawn as one index matrix and metrics are
computed on all of them at once (``(n_boot, n)`` arrays), chunked to bound
memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import brier_score_loss, roc_auc_score, roc_curve

from breastfusion.evaluation.input_checks import (
    MetricInputError,
    SingleClassError,
    check_labels_scores,
    check_probability,
)

__all__ = [
    "MetricInputError",
    "SingleClassError",
    "THRESHOLD_METRICS",
    "SCORE_METRICS",
    "BootstrapCI",
    "subject_level",
    "auc_with_ci",
    "threshold_metrics",
    "brier_score",
    "expected_calibration_error",
    "bootstrap_ci",
    "bootstrap_cis",
    "youden_threshold",
    "sensitivity_threshold",
    "bin_index",
]

#: Metrics of a thresholded decision (subject positive when ``p >= threshold``).
THRESHOLD_METRICS = ("accuracy", "balanced_accuracy", "f1", "sensitivity", "specificity", "ppv", "npv")
#: Metrics of the scores themselves (no threshold).
SCORE_METRICS = ("auc", "brier", "ece")


class BootstrapCI(NamedTuple):
    """A point estimate with a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float
    n_boot: int


def subject_level(predictions: pd.DataFrame, *, prob: str = "prob", how: str = "mean") -> pd.DataFrame:
    """Aggregate lesion-level predictions to one row per subject (``how`` of the probabilities: mean or max;
    max label), sorted by subject."""
    return predictions.groupby("subject_id", sort=True).agg(y=("y", "max"), prob=(prob, how)).reset_index()


# ---------------------------------------------------------------- batched kernels
# Each takes Y, P of shape (B, n) (B replicates) and returns shape (B,).

def _batched_auc(Y: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC per row from mid-ranks (ties count half)."""
    ranks = rankdata(P, axis=1)
    m = Y.sum(axis=1)
    n_neg = Y.shape[1] - m
    return ((ranks * Y).sum(axis=1) - m * (m + 1) / 2.0) / (m * n_neg)


def _batched_brier(Y: np.ndarray, P: np.ndarray) -> np.ndarray:
    return np.mean((P - Y) ** 2, axis=1)


def bin_index(P: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each probability: bin b holds [b/B, (b+1)/B), the last bin also holds 1.

    The same rule as scikit-learn's ``calibration_curve(strategy="uniform")``.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], P, side="right")


def _batched_ece(Y: np.ndarray, P: np.ndarray, n_bins: int = 10) -> np.ndarray:
    B, n = P.shape
    flat = (bin_index(P, n_bins) + n_bins * np.arange(B)[:, None]).ravel()
    sum_y = np.bincount(flat, weights=Y.ravel().astype(float), minlength=B * n_bins).reshape(B, n_bins)
    sum_p = np.bincount(flat, weights=P.ravel(), minlength=B * n_bins).reshape(B, n_bins)
    return np.abs(sum_y - sum_p).sum(axis=1) / n  # sum_b (n_b/n) |mean_y_b - mean_p_b|


def _confusion(Y: np.ndarray, P: np.ndarray, threshold: float) -> tuple[np.ndarray, ...]:
    pred = P >= threshold
    pos = Y == 1
    tp = np.sum(pred & pos, axis=-1)
    fp = np.sum(pred & ~pos, axis=-1)
    fn = np.sum(~pred & pos, axis=-1)
    tn = np.sum(~pred & ~pos, axis=-1)
    return tp, fp, tn, fn


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _threshold_table(Y: np.ndarray, P: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    tp, fp, tn, fn = _confusion(Y, P, threshold)
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "balanced_accuracy": (sens + spec) / 2.0,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "sensitivity": sens,
        "specificity": spec,
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
    }


# ---------------------------------------------------------------- point metrics

def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not (np.isfinite(t) and 0.0 <= t <= 1.0):
        raise MetricInputError(f"threshold should be a probability in [0, 1], got {threshold!r}; "
                               "choose it on training data with youden_threshold or sensitivity_threshold")
    return t


def threshold_metrics(y, p, threshold: float) -> dict[str, float]:
    """Decision metrics at one threshold (positive when ``p >= threshold``).

    Undefined ratios (e.g. PPV when no subject is called positive) are NaN,
    where scikit-learn would warn and return 0.

    Args:
        y: 0/1 labels, shape (n,), both classes present.
        p: predicted probabilities of malignancy, shape (n,), in [0, 1].
        threshold: decision threshold in [0, 1].

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``f1``, ``sensitivity``,
        ``specificity``, ``ppv``, ``npv`` (floats) and the counts ``tp``,
        ``fp``, ``tn``, ``fn`` (ints).

    Raises:
        MetricInputError: bad labels/probabilities, length mismatch, threshold outside [0, 1].
        SingleClassError: one class absent.
    """
    y, p = check_labels_scores(y, p, name="p", probabilities=True)
    t = _check_threshold(threshold)
    out = {k: float(v) for k, v in _threshold_table(y, p, t).items()}
    tp, fp, tn, fn = _confusion(y, p, t)
    out.update(tp=int(tp), fp=int(fp), tn=int(tn), fn=int(fn))
    return out


def brier_score(y, p) -> float:
    """Mean squared difference between probability and outcome (lower is better).

    Args:
        y: 0/1 labels, shape (n,).
        p: probabilities, shape (n,), in [0, 1].

    Raises:
        MetricInputError: bad labels/probabilities or length mismatch.
    """
    y, p = check_labels_scores(y, p, name="p", probabilities=True, need_both=False)
    return float(brier_score_loss(y, p))


def expected_calibration_error(y, p, *, n_bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins.

    ``ECE = sum_b (n_b / n) * |mean(y in b) - mean(p in b)|`` over ``n_bins``
    bins of width ``1 / n_bins`` on [0, 1]; bin b holds ``[b/B, (b+1)/B)`` and
    the last bin also holds 1 (scikit-learn's ``calibration_curve`` binning).
    Empty bins contribute nothing. ECE depends on ``n_bins`` and is biased
    upwards in small samples (each bin's mean outcome is noisy): compare
    models at the same ``n`` and ``n_bins``, and read it with the Brier score
    and the calibration curve.

    Args:
        y: 0/1 labels, shape (n,).
        p: probabilities, shape (n,), in [0, 1].
        n_bins: number of bins, at least 1.

    Raises:
        MetricInputError: bad labels/probabilities, length mismatch, ``n_bins < 1``.
    """
    y, p = check_labels_scores(y, p, name="p", probabilities=True, need_both=False)
    if int(n_bins) != n_bins or n_bins < 1:
        raise MetricInputError(f"n_bins should be a positive integer, got {n_bins!r}")
    return float(_batched_ece(y[None, :], p[None, :], int(n_bins))[0])


# ---------------------------------------------------------------- bootstrap

def _resolve_metric(metric, threshold, n_bins) -> tuple[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """A batched kernel (Y, P) -> (B,) for a metric name or a per-replicate callable."""
    if callable(metric):
        name = getattr(metric, "__name__", "metric")
        return name, lambda Y, P: np.array([metric(yb, pb) for yb, pb in zip(Y, P)], dtype=float)
    if metric in THRESHOLD_METRICS:
        if threshold is None:
            raise MetricInputError(f"metric {metric!r} needs a threshold; pass threshold= (chosen on training data)")
        t = _check_threshold(threshold)
        return metric, lambda Y, P: _threshold_table(Y, P, t)[metric]
    if metric == "auc":
        return metric, _batched_auc
    if metric == "brier":
        return metric, _batched_brier
    if metric == "ece":
        return metric, lambda Y, P: _batched_ece(Y, P, n_bins)
    raise MetricInputError(f"unknown metric {metric!r}; known: {list(SCORE_METRICS + THRESHOLD_METRICS)} "
                           "or a callable f(y, p) -> float")


def bootstrap_cis(y, p, metrics: Sequence = ("auc",), *, threshold: float | None = None, n_boot: int = 2000,
                  level: float = 0.95, seed: int = 0, n_bins: int = 10,
                  max_cells: int = 4_000_000) -> dict[str, BootstrapCI]:
    """Percentile CIs for several metrics from one shared stratified subject bootstrap.

    Positives and negatives are resampled separately with replacement, so
    each replicate has the original class counts. All metrics see the same
    replicates (their intervals are mutually consistent). The same ``seed``
    gives the same intervals.

    Args:
        y: 0/1 labels, shape (n,), one per subject.
        p: scores, shape (n,); probabilities in [0, 1] for threshold metrics,
            Brier and ECE.
        metrics: names from ``SCORE_METRICS`` / ``THRESHOLD_METRICS``, or
            callables ``f(y, p) -> float`` (evaluated per replicate, slower).
        threshold: decision threshold for threshold metrics.
        n_boot: bootstrap replicates (>= 100).
        level: confidence level in (0, 1).
        seed: seed of the resampling.
        n_bins: bins for ``"ece"``.
        max_cells: replicates are processed in chunks of at most this many
            ``n_boot x n`` cells, to bound memory.

    Returns:
        ``{name: BootstrapCI}`` with the estimate on the original sample.
        Replicates where a metric is undefined (NaN) are left out of its quantiles.

    Raises:
        MetricInputError: bad inputs, unknown metric, two metrics with one
            name, missing threshold, ``n_boot < 100``, ``level`` outside (0, 1).
        SingleClassError: one class absent.
    """
    needs_prob = any(not callable(m) and m != "auc" for m in metrics)
    y, p = check_labels_scores(y, p, name="p", probabilities=needs_prob)
    level = check_probability(level, name="level")
    if int(n_boot) != n_boot or n_boot < 100:
        raise MetricInputError(f"n_boot should be an integer >= 100, got {n_boot!r}")
    resolved = [_resolve_metric(m, threshold, n_bins) for m in metrics]
    kernels = dict(resolved)
    if len(kernels) != len(resolved):
        raise MetricInputError(f"metrics should have distinct names, got {[name for name, _ in resolved]}; "
                               "give callables distinct __name__s")
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(pos, (n_boot, pos.size)), rng.choice(neg, (n_boot, neg.size))], axis=1)
    reps = {name: np.empty(n_boot) for name in kernels}
    step = max(1, int(max_cells) // y.size)
    for start in range(0, n_boot, step):
        block = idx[start:start + step]  # (b, n)
        Y, P = y[block], p[block]
        for name, kernel in kernels.items():
            reps[name][start:start + step] = kernel(Y, P)
    alpha = (1.0 - level) / 2.0
    out = {}
    for name, kernel in kernels.items():
        estimate = float(kernel(y[None, :], p[None, :])[0])
        r = reps[name][np.isfinite(reps[name])]
        low, high = (np.quantile(r, [alpha, 1 - alpha]) if r.size else (np.nan, np.nan))
        out[name] = BootstrapCI(estimate, float(low), float(high), level, int(n_boot))
    return out


def bootstrap_ci(y, p, metric="auc", *, threshold: float | None = None, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0, n_bins: int = 10) -> BootstrapCI:
    """Percentile CI of one metric from a stratified subject bootstrap.

    See :func:`bootstrap_cis` for arguments and errors; ``metric`` is one name
    or callable.
    """
    name = metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")
    return bootstrap_cis(y, p, (metric,), threshold=threshold, n_boot=n_boot, level=level, seed=seed,
                         n_bins=n_bins)[name]


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

    Raises:
        SingleClassError: one class absent (a ``ValueError``).
        MetricInputError: other bad input.
    """
    ci = bootstrap_ci(y, p, "auc", n_boot=n_boot, seed=seed, level=level)
    return float(roc_auc_score(np.asarray(y).astype(int), p)), (ci.low, ci.high)


# ---------------------------------------------------------------- thresholds from training data

def _operating_points(y, p) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, threshold) of every distinct cut, thresholds as midpoints between adjacent scores.

    A midpoint classifies the training subjects exactly as the score it
    replaces (``p >= t``) but sits halfway to the next lower score, so it
    does not favour either class on new data (R pROC's convention).
    """
    y, p = check_labels_scores(y, p, name="p_train")
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # drop the (inf) "nobody positive" point
    mid = thr.copy()
    mid[:-1] = (thr[:-1] + thr[1:]) / 2.0
    return fpr, tpr, mid


def youden_threshold(y_train, p_train) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 on training data.

    Call it with training-fold scores only and apply the result to the test
    fold; ties in J go to the highest threshold (the most specific cut).

    Args:
        y_train: 0/1 labels, shape (n,).
        p_train: scores, shape (n,).

    Returns:
        The threshold t (subjects with ``p >= t`` are called malignant).

    Raises:
        MetricInputError, SingleClassError: bad input.
    """
    fpr, tpr, thr = _operating_points(y_train, p_train)
    return float(thr[int(np.argmax(tpr - fpr))])


def sensitivity_threshold(y_train, p_train, *, target: float = 0.98) -> float:
    """Highest threshold whose training sensitivity is at least ``target``.

    The most specific cut that still finds ``target`` of the training
    malignancies. Its sensitivity on new data is only estimated, not
    guaranteed; for a finite-sample guarantee use
    :func:`breastfusion.evaluation.conformal.rule_out_threshold`.

    Args:
        y_train: 0/1 labels, shape (n,).
        p_train: scores, shape (n,).
        target: required sensitivity in (0, 1].

    Returns:
        The threshold t (``p >= t`` called malignant).

    Raises:
        MetricInputError: ``target`` outside (0, 1] or bad input.
        SingleClassError: one class absent.
    """
    target = check_probability(target, name="target", high_open=False)
    fpr, tpr, thr = _operating_points(y_train, p_train)
    # tpr is non-decreasing along decreasing thresholds; the first hit is the most specific.
    return float(thr[int(np.argmax(tpr >= target - 1e-12))])
