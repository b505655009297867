"""DeLong's nonparametric variance of the ROC AUC, its confidence interval, and the paired test.

DeLong, DeLong & Clarke-Pearson (1988), "Comparing the areas under two or
more correlated receiver operating characteristic curves: a nonparametric
approach", Biometrics 44:837-845, write the empirical AUC as a two-sample
U-statistic and estimate its covariance from *structural components*: for
each positive subject, the fraction of negatives it outranks (V10); for each
negative, the fraction of positives that outrank it (V01); ties count half.
Sun & Xu (2014), "Fast implementation of DeLong's algorithm for comparing
the areas under correlated receiver operating characteristic curves", IEEE
Signal Processing Letters 21:1389-1393, obtain all components from three
mid-rank computations, O(n log n) per model instead of O(m n).

Conventions: a higher score means "more likely positive" (malignant); there
is no automatic direction flip (R pROC's ``direction = "auto"``), so a model
worse than chance gets an AUC below 0.5, as it should in an evaluation.
Checked against R pROC's published test values on its ``aSAH`` data (see
``tests/evaluation/test_delong.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy.special import expit, logit
from scipy.stats import norm, rankdata

from breastfusion.evaluation.input_checks import MetricInputError, check_labels_scores, check_probability

__all__ = [
    "DeLongCI",
    "DeLongTest",
    "delong_components",
    "delong_covariance",
    "auc_variance",
    "delong_ci",
    "delong_test",
]


@dataclass(frozen=True)
class DeLongCI:
    """An AUC with its DeLong standard error and confidence interval."""

    auc: float
    se: float
    low: float
    high: float
    level: float
    transform: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DeLongTest:
    """Paired DeLong test of AUC(a) = AUC(b) on the same subjects."""

    auc_a: float
    auc_b: float
    difference: float  # auc_a - auc_b
    se: float  # standard error of the difference
    z: float
    p_value: float
    low: float  # confidence interval of the difference
    high: float
    level: float
    alternative: str

    def as_dict(self) -> dict:
        return asdict(self)


def delong_components(y, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong structural components by the Sun & Xu mid-rank algorithm.

    Args:
        y: 0/1 labels, shape (n,), at least two of each class.
        scores: shape (n,) for one model or (k, n) for k models on the same subjects.

    Returns:
        ``(auc, v10, v01)``: AUCs of shape (k,); V10 of shape (k, m), for each
        positive the fraction of negatives scored below it (ties half); V01 of
        shape (k, n_neg), for each negative the fraction of positives scored
        above it. ``auc == v10.mean(1) == v01.mean(1)``.

    Raises:
        MetricInputError: bad labels or scores, or fewer than two subjects in a class.
        SingleClassError: one class absent.
    """
    y, s = check_labels_scores(y, scores)
    s = np.atleast_2d(s)  # (k, n)
    pos, neg = s[:, y == 1], s[:, y == 0]  # (k, m), (k, n_neg)
    m, n_neg = pos.shape[1], neg.shape[1]
    if m < 2 or n_neg < 2:
        raise MetricInputError(f"DeLong's variance needs at least 2 positives and 2 negatives, got {m} and {n_neg}")
    tx = rankdata(pos, axis=1)  # mid-ranks within positives
    ty = rankdata(neg, axis=1)  # mid-ranks within negatives
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # mid-ranks within all
    auc = tz[:, :m].sum(axis=1) / (m * n_neg) - (m + 1.0) / (2.0 * n_neg)
    v10 = (tz[:, :m] - tx) / n_neg
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return auc, v10, v01


def delong_covariance(y, scores) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix.

    Args:
        y: 0/1 labels, shape (n,).
        scores: shape (n,) or (k, n).

    Returns:
        ``(auc, cov)`` with shapes (k,) and (k, k): ``cov = S10 / m + S01 / n_neg``
        where S10, S01 are the sample covariances (ddof 1) of the components.

    Raises:
        MetricInputError, SingleClassError: as :func:`delong_components`.
    """
    auc, v10, v01 = delong_components(y, scores)
    m, n_neg = v10.shape[1], v01.shape[1]
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n_neg
    return auc, cov


def auc_variance(y, scores) -> float:
    """DeLong variance of one model's empirical AUC.

    Args:
        y: 0/1 labels, shape (n,).
        scores: shape (n,).

    Raises:
        MetricInputError: ``scores`` is not 1-D, or as :func:`delong_components`.
    """
    if np.ndim(scores) != 1:
        raise MetricInputError(f"scores should have shape (n,) for one model, got shape {np.shape(scores)}")
    return float(delong_covariance(y, scores)[1][0, 0])


def delong_ci(y, scores, *, level: float = 0.95,
              transform: Literal["plain", "logit"] = "plain") -> DeLongCI:
    """Confidence interval of one AUC from DeLong's variance.

    ``"plain"`` is the Wald interval ``auc ± z * se`` clipped to [0, 1] (what
    R pROC's ``ci.auc(method = "delong")`` reports). ``"logit"`` builds the
    interval on the logit scale, ``logit(auc) ± z * se / (auc (1 - auc))``
    (delta method), and maps it back, so it stays inside (0, 1) and is
    asymmetric near 1, which covers better for high AUCs and small samples.
    With an AUC of exactly 0 or 1 the logit interval is the point itself
    (the DeLong variance is then 0 as well).

    Args:
        y: 0/1 labels, shape (n,).
        scores: shape (n,).
        level: confidence level in (0, 1).
        transform: ``"plain"`` or ``"logit"``.

    Returns:
        A :class:`DeLongCI`.

    Raises:
        MetricInputError: bad ``level`` or ``transform``, or as :func:`delong_components`.
    """
    level = check_probability(level, name="level")
    if transform not in ("plain", "logit"):
        raise MetricInputError(f"transform should be 'plain' or 'logit', got {transform!r}")
    if np.ndim(scores) != 1:
        raise MetricInputError(f"scores should have shape (n,) for one model, got shape {np.shape(scores)}")
    aucs, cov = delong_covariance(y, scores)
    auc, var = float(aucs[0]), float(cov[0, 0])
    se = float(np.sqrt(max(var, 0.0)))
    z = norm.ppf(0.5 + level / 2)
    if transform == "plain":
        low, high = max(auc - z * se, 0.0), min(auc + z * se, 1.0)
    elif 0.0 < auc < 1.0:
        half = z * se / (auc * (1.0 - auc))
        low, high = float(expit(logit(auc) - half)), float(expit(logit(auc) + half))
    else:
        low = high = auc
    return DeLongCI(auc=auc, se=se, low=float(low), high=float(high), level=level, transform=transform)


def delong_test(y, scores_a, scores_b, *, level: float = 0.95,
                alternative: Literal["two-sided", "greater", "less"] = "two-sided") -> DeLongTest:
    """Paired DeLong test for two correlated ROC curves (two models, same subjects).

    ``z = (AUC_a - AUC_b) / se`` with ``se**2 = var_a + var_b - 2 cov_ab``
    from :func:`delong_covariance`. ``"greater"`` tests AUC_a > AUC_b. When
    both models rank every pair identically the variance of the difference is
    0 and the difference is 0: ``z = 0``, ``p = 1`` (as R pROC does).

    Args:
        y: 0/1 labels, shape (n,).
        scores_a: scores of model a, shape (n,).
        scores_b: scores of model b on the same subjects in the same order, shape (n,).
        level: confidence level of the interval for the difference.
        alternative: ``"two-sided"``, ``"greater"`` or ``"less"``.

    Returns:
        A :class:`DeLongTest`.

    Raises:
        MetricInputError: mismatched lengths, bad ``level``/``alternative``, or
            as :func:`delong_components`.
    """
    level = check_probability(level, name="level")
    if alternative not in ("two-sided", "greater", "less"):
        raise MetricInputError(f"alternative should be 'two-sided', 'greater' or 'less', got {alternative!r}")
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise MetricInputError(f"scores_a and scores_b should both have shape (n,) for the same subjects, "
                               f"got {a.shape} and {b.shape}")
    auc, cov = delong_covariance(y, np.stack([a, b]))
    diff = float(auc[0] - auc[1])
    se = float(np.sqrt(max(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1], 0.0)))
    if se == 0.0:
        z = 0.0 if diff == 0.0 else float(np.copysign(np.inf, diff))
    else:
        z = diff / se
    if alternative == "two-sided":
        p = float(2.0 * norm.sf(abs(z)))
    elif alternative == "greater":
        p = float(norm.sf(z))
    else:
        p = float(norm.cdf(z))
    half = norm.ppf(0.5 + level / 2) * se
    return DeLongTest(auc_a=float(auc[0]), auc_b=float(auc[1]), difference=diff, se=se, z=float(z),
                      p_value=min(p, 1.0), low=float(diff - half), high=float(diff + half), level=level,
                      alternative=alternative)
