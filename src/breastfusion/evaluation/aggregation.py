"""Lesion (or image) outputs to one score per subject: mean, max, or a learned logistic aggregator.

Every headline metric is computed per subject, so a subject with several
lesions counts once. Three rules (``evaluation.aggregation``):

* ``mean``: the mean probability of the subject's lesions (the default);
* ``max``: the most suspicious lesion decides (a subject is malignant when any
  lesion is), which is how a radiologist reads a multi-lesion case;
* ``learned``: a logistic regression on per-subject features of the lesion
  logits (mean, max, lesion count), fitted on a fold's *calibration* rows only
  (its inner validation subjects, or its training subjects in-sample) and
  applied to that fold's test subjects, so no test label reaches it.

A subject's label is the maximum of its lesions' labels (malignant when any
lesion is).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from scipy.special import logit
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from breastfusion.evaluation.input_checks import MetricInputError, SingleClassError
from breastfusion.evaluation.metrics import subject_level

__all__ = ["AGGREGATIONS", "LearnedAggregator", "aggregate", "subject_features"]

AGGREGATIONS = ("mean", "max", "learned")
_EPS = 1e-6
_FEATURES = ("mean_logit", "max_logit", "n_lesions")


def _check_frame(predictions: pd.DataFrame, prob: str) -> None:
    missing = [c for c in ("subject_id", "y", prob) if c not in predictions.columns]
    if missing:
        raise MetricInputError(f"predictions should have columns subject_id, y, {prob}; missing {missing} "
                               f"(got {list(predictions.columns)})")
    if predictions.empty:
        raise MetricInputError("predictions should hold at least one row, got none")


def subject_features(predictions: pd.DataFrame, *, prob: str = "prob") -> pd.DataFrame:
    """Per-subject features of the lesion outputs, the inputs of :class:`LearnedAggregator`.

    Args:
        predictions: one row per lesion (or image) with ``subject_id``, ``y``, ``prob``.
        prob: the probability column.

    Returns:
        One row per subject, sorted by ``subject_id``: ``subject_id``, ``y`` (max over lesions),
        ``mean_logit``, ``max_logit``, ``n_lesions``.
    """
    _check_frame(predictions, prob)
    frame = predictions[["subject_id", "y"]].copy()
    frame["logit"] = logit(np.clip(predictions[prob].to_numpy(dtype=float), _EPS, 1 - _EPS))
    return frame.groupby("subject_id", sort=True).agg(
        y=("y", "max"), mean_logit=("logit", "mean"), max_logit=("logit", "max"),
        n_lesions=("logit", "size")).reset_index()


class LearnedAggregator(BaseEstimator):
    """Logistic regression from per-subject lesion features to P(subject malignant).

    Fit it on calibration rows (never test rows) and apply it to test rows;
    both are lesion-level frames, the aggregator builds the per-subject
    features itself (:func:`subject_features`). Features are standardised
    inside the model; the L2 penalty (``C``) keeps it stable when the
    features are collinear (one lesion per subject makes mean = max).

    Args:
        C: inverse L2 regularisation strength of the logistic regression.

    Attributes:
        model_: the fitted scikit-learn pipeline.
    """

    def __init__(self, C: float = 1.0):
        self.C = C

    def fit(self, predictions: pd.DataFrame, *, prob: str = "prob") -> LearnedAggregator:
        """Fit on lesion-level calibration predictions (``subject_id``, ``y``, ``prob``).

        Raises:
            MetricInputError: missing columns or no rows.
            SingleClassError: the calibration subjects hold one class only.
        """
        features = subject_features(predictions, prob=prob)
        y = features["y"].to_numpy(dtype=int)
        if np.unique(y).size < 2:
            raise SingleClassError(f"the learned aggregator needs benign and malignant calibration subjects, got "
                                   f"only label {int(y[0])} in {len(y)} subjects; use aggregation: mean or max, "
                                   "or a larger training.val_fraction")
        self.model_ = make_pipeline(StandardScaler(), LogisticRegression(C=self.C))
        self.model_.fit(features[list(_FEATURES)].to_numpy(dtype=float), y)
        return self

    def predict(self, predictions: pd.DataFrame, *, prob: str = "prob") -> pd.DataFrame:
        """One row per subject: ``subject_id``, ``y``, ``prob`` (the aggregated probability)."""
        check_is_fitted(self, "model_")
        features = subject_features(predictions, prob=prob)
        p = self.model_.predict_proba(features[list(_FEATURES)].to_numpy(dtype=float))[:, 1]
        return features[["subject_id", "y"]].assign(prob=p)


def aggregate(test: pd.DataFrame, method: Literal["mean", "max", "learned"] = "mean", *,
              calibration: pd.DataFrame | None = None, prob: str = "prob") -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Aggregate one fold's lesion predictions to subjects, test and calibration alike.

    Args:
        test: the fold's test lesion predictions (``subject_id``, ``y``, ``prob``).
        method: ``"mean"``, ``"max"`` or ``"learned"``.
        calibration: the fold's calibration lesion predictions; required for ``"learned"``,
            which is fitted on them only.
        prob: the probability column.

    Returns:
        ``(test_subjects, calibration_subjects)``, each one row per subject sorted by
        ``subject_id`` with ``subject_id``, ``y``, ``prob``; the second is ``None`` when
        ``calibration`` is. With ``"learned"`` the calibration subjects' scores are in-sample
        (the aggregator was fitted on them).

    Raises:
        MetricInputError: unknown method, missing columns, or ``"learned"`` without calibration rows.
        SingleClassError: ``"learned"`` with one class among the calibration subjects.
    """
    if method not in AGGREGATIONS:
        raise MetricInputError(f"aggregation should be one of {list(AGGREGATIONS)}, got {method!r}")
    if method == "learned":
        if calibration is None or calibration.empty:
            raise MetricInputError("aggregation 'learned' is fitted on the fold's calibration predictions; "
                                   "none were given")
        model = LearnedAggregator().fit(calibration, prob=prob)
        return model.predict(test, prob=prob), model.predict(calibration, prob=prob)

    def simple(frame: pd.DataFrame) -> pd.DataFrame:
        _check_frame(frame, prob)
        return subject_level(frame, prob=prob, how=method)

    return simple(test), None if calibration is None else simple(calibration)
