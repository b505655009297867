"""Split-conformal prediction sets, abstention, and a rule-out threshold with a sensitivity guarantee.

Split conformal prediction (Vovk, Gammerman & Shafer 2005; Angelopoulos &
Bates 2023, "Conformal prediction: a gentle introduction") turns any
probability model into prediction *sets* with a finite-sample coverage
guarantee, assuming only that calibration and test subjects are
exchangeable (drawn the same way). The calibration subjects must not have
trained the model: out-of-fold predictions of the training folds qualify.

Nonconformity of label c for a subject with predicted malignancy
probability p is ``1 - P(c)``: ``1 - p`` for malignant, ``p`` for benign
(the "LAC" score). p-values come from the ``crepes`` library
(``ConformalClassifier``, non-smoothed: ``(#{cal >= a} + 1) / (n_cal + 1)``)
and a label enters the set when its p-value is at least ``alpha`` (crepes'
rule). Then ``P(true label in set) >= 1 - alpha`` over calibration and test
draws. With ``class_conditional=True`` (Mondrian, per true class) the
guarantee holds within each class, so malignant subjects are covered with
probability >= 1 - alpha: a sensitivity guarantee.

A set with both labels is ambiguous (the model abstains and defers to the
clinician); an empty set flags an atypical subject.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from crepes import ConformalClassifier
from scipy.stats import beta as beta_dist

from breastfusion.evaluation.input_checks import MetricInputError, check_labels_scores, check_probability

__all__ = [
    "RuleOutThreshold",
    "conformal_p_values",
    "conformal_sets",
    "set_decisions",
    "empirical_coverage",
    "rule_out_threshold",
    "rule_out_sensitivity",
]

_LABELS = np.array(["benign", "malignant"])


def _nonconformity(p: np.ndarray) -> np.ndarray:
    """LAC nonconformity of each label, shape (n, 2): columns benign, malignant."""
    return np.stack([p, 1.0 - p], axis=1)


def _check_test(p_test) -> np.ndarray:
    p = np.asarray(p_test, dtype=float)
    if p.ndim != 1 or p.size == 0 or not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise MetricInputError(f"p_test should be a non-empty 1-D array of probabilities in [0, 1], "
                               f"got shape {p.shape}")
    return p


def conformal_p_values(p_cal, y_cal, p_test, *, class_conditional: bool = True) -> np.ndarray:
    """Conformal p-value of each label for each test subject.

    Args:
        p_cal: calibration probabilities of malignancy, shape (n_cal,).
        y_cal: calibration labels, shape (n_cal,), 0/1.
        p_test: test probabilities, shape (n_test,).
        class_conditional: calibrate each label on the calibration subjects
            of that class only (Mondrian); otherwise on all of them (marginal).

    Returns:
        p-values, shape (n_test, 2), columns (benign, malignant).

    Raises:
        MetricInputError: bad input.
        SingleClassError: a class is absent from the calibration set.
    """
    y_cal, p_cal = check_labels_scores(y_cal, p_cal, name="p_cal", probabilities=True)
    a_test = _nonconformity(_check_test(p_test))  # (n_test, 2)
    a_cal = _nonconformity(p_cal)[np.arange(y_cal.size), y_cal]  # of the true label, (n_cal,)
    if not class_conditional:
        return ConformalClassifier().fit(a_cal).predict_p(a_test, smoothing=False)
    return np.stack([ConformalClassifier().fit(a_cal[y_cal == c]).predict_p(a_test[:, c], smoothing=False)
                     for c in (0, 1)], axis=1)


def conformal_sets(p_cal, y_cal, p_test, *, alpha: float = 0.1, class_conditional: bool = True) -> np.ndarray:
    """Split-conformal prediction sets with coverage at least ``1 - alpha``.

    Args:
        p_cal, y_cal, p_test, class_conditional: as :func:`conformal_p_values`.
        alpha: allowed miscoverage in (0, 1).

    Returns:
        Boolean membership, shape (n_test, 2), columns (benign, malignant).

    Raises:
        MetricInputError: ``alpha`` outside (0, 1) or bad input.
        SingleClassError: a class absent from the calibration set.
    """
    alpha = check_probability(alpha, name="alpha")
    return conformal_p_values(p_cal, y_cal, p_test, class_conditional=class_conditional) >= alpha


def set_decisions(sets) -> np.ndarray:
    """Name each prediction set: ``"benign"``, ``"malignant"``, ``"abstain"`` (both) or ``"empty"``.

    Args:
        sets: boolean membership, shape (n, 2), as from :func:`conformal_sets`.

    Returns:
        Strings, shape (n,).

    Raises:
        MetricInputError: ``sets`` not of shape (n, 2).
    """
    s = np.asarray(sets, dtype=bool)
    if s.ndim != 2 or s.shape[1] != 2:
        raise MetricInputError(f"sets should have shape (n, 2) (benign, malignant), got {s.shape}")
    out = np.where(s[:, 1], "malignant", "benign").astype(object)
    out[s.all(axis=1)] = "abstain"
    out[~s.any(axis=1)] = "empty"
    return out.astype(str)


def empirical_coverage(sets, y) -> dict[str, float]:
    """How often the sets hold the true label, overall and per class, and how often they abstain.

    Args:
        sets: boolean membership, shape (n, 2).
        y: true labels, shape (n,).

    Returns:
        ``coverage``, ``coverage_benign``, ``coverage_malignant`` (NaN when
        the class is absent), ``abstain_rate``, ``empty_rate``, ``mean_size``.

    Raises:
        MetricInputError: shapes disagree or bad labels.
    """
    s = np.asarray(sets, dtype=bool)
    if s.ndim != 2 or s.shape[1] != 2:
        raise MetricInputError(f"sets should have shape (n, 2) (benign, malignant), got {s.shape}")
    y, _ = check_labels_scores(y, s[:, 0], name="sets", need_both=False)
    hit = s[np.arange(y.size), y]
    return {
        "coverage": float(hit.mean()),
        "coverage_benign": float(hit[y == 0].mean()) if np.any(y == 0) else float("nan"),
        "coverage_malignant": float(hit[y == 1].mean()) if np.any(y == 1) else float("nan"),
        "abstain_rate": float(s.all(axis=1).mean()),
        "empty_rate": float((~s.any(axis=1)).mean()),
        "mean_size": float(s.sum(axis=1).mean()),
    }


@dataclass(frozen=True)
class RuleOutThreshold:
    """A conformal rule-out threshold: subjects with ``p < threshold`` are called benign (no biopsy)."""

    threshold: float
    rank: int  # the threshold is the rank-th smallest malignant calibration score (0: rule out nobody)
    n_malignant: int
    alpha: float
    delta: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def rule_out_threshold(p_cal, y_cal, *, alpha: float = 0.02, delta: float | None = None) -> RuleOutThreshold:
    """Threshold t with a finite-sample guarantee that a new malignant subject has ``p >= t``.

    Let ``s_(1) <= ... <= s_(m)`` be the calibration malignant scores and
    ``t = s_(k)``. A new malignant score S exchangeable with them falls below
    ``s_(k)`` with probability at most ``k / (m + 1)``, so sensitivity
    ``P(S >= t) >= 1 - k / (m + 1)``.

    * ``delta=None`` (marginal guarantee, averaged over calibration draws):
      k is the largest integer with ``k / (m + 1) < alpha``, so
      ``E[sensitivity] >= 1 - alpha``. This is exactly "the malignant label's
      class-conditional conformal p-value is below alpha" (:func:`conformal_p_values`).
    * ``delta`` given (calibration-conditional, PAC): the sensitivity given
      this calibration set is ``1 - U_(k)`` with ``U_(k) ~ Beta(k, m + 1 - k)``
      for continuous scores; k is the largest with
      ``P(U_(k) > alpha) <= delta``, so ``P(sensitivity >= 1 - alpha) >= 1 - delta``.

    When there are too few malignant calibration subjects (k = 0, i.e.
    ``m < 1/alpha - 1`` for the marginal rule) the threshold is 0 and
    nobody is ruled out.

    Args:
        p_cal: calibration probabilities of malignancy, shape (n_cal,), not
            used to train the model.
        y_cal: calibration labels, shape (n_cal,); only the malignant scores are used.
        alpha: allowed miss rate in (0, 1) (``1 - alpha`` is the target sensitivity).
        delta: optional failure probability in (0, 1) for the calibration-conditional rule.

    Returns:
        A :class:`RuleOutThreshold`.

    Raises:
        MetricInputError: ``alpha``/``delta`` outside (0, 1), bad input, no malignant subject.
    """
    alpha = check_probability(alpha, name="alpha")
    y_cal, p_cal = check_labels_scores(y_cal, p_cal, name="p_cal", probabilities=True, need_both=False)
    s = np.sort(p_cal[y_cal == 1])
    m = s.size
    if m == 0:
        raise MetricInputError("y_cal should hold malignant subjects (label 1), got none; "
                               "a rule-out threshold is calibrated on malignant scores")
    if delta is None:
        k = int(np.ceil(alpha * (m + 1))) - 1
    else:
        delta = check_probability(delta, name="delta")
        ks = np.arange(1, m + 1)
        ok = ks[beta_dist.sf(alpha, ks, m + 1 - ks) <= delta]
        k = int(ok.max()) if ok.size else 0
    k = min(max(k, 0), m)
    threshold = float(s[k - 1]) if k > 0 else 0.0
    return RuleOutThreshold(threshold=threshold, rank=k, n_malignant=m, alpha=alpha, delta=delta)


def rule_out_sensitivity(y, p, threshold: float) -> float:
    """Fraction of malignant subjects not ruled out (``p >= threshold``).

    Args:
        y: labels, shape (n,), with at least one malignant.
        p: probabilities, shape (n,).
        threshold: rule-out threshold.

    Raises:
        MetricInputError: bad input or no malignant subject.
    """
    y, p = check_labels_scores(y, p, name="p", probabilities=True, need_both=False)
    if not np.any(y == 1):
        raise MetricInputError("y should hold malignant subjects to measure sensitivity, got none")
    return float(np.mean(p[y == 1] >= threshold))
