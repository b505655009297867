"""Score-level fusion: a well-regularised clinical model's probability averaged with the image network's.

When one branch is weak or the cohort is a few hundred subjects, a jointly trained
fused network can do no better than its image branch (measured on BrEaST: concat
fusion 0.773 vs ultrasound 0.760). A strong, simple alternative is to fit each
modality with the learner that suits it (a CNN for images, a cross-validated
logistic regression or gradient boosting for the clinical table) and average
their probabilities. ``model.fusion: score`` does that, fitted on each fold's
training subjects only:

* the image network is the variant's image modalities' own network (the one an
  image-only variant trains, so it is shared, not trained again);
* the clinical model's regularisation is chosen by an inner cross-validation on
  the training lesions, grouped like the outer folds, and its calibration scores
  are out-of-inner-fold predictions;
* the two are averaged with equal weights: the image network's training scores
  are in-sample (it has seen those lesions), so fitting a weight on them would
  hand the image everything; equal weights need nothing fitted.

A lesion without clinical data gets the image probability, one without images
the clinical probability.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from breastfusion.models.stage2 import grouped_splits

__all__ = ["CLINICAL_SCORE_MODELS", "make_clinical_model", "fit_clinical_model", "average_scores"]

#: The clinical learners of score-level fusion (``model.clinical.score_model``).
CLINICAL_SCORE_MODELS = ("logistic", "gradient_boosting")


def make_clinical_model(name: str, *, y: np.ndarray, groups: np.ndarray, inner_folds: int = 5,
                        seed: int = 0) -> ClassifierMixin:
    """A fresh clinical learner whose regularisation is tuned by a grouped inner CV of its training rows.

    Args:
        name: ``logistic`` (L2 logistic regression on standardised features, C from 9 values by inner-CV AUC) or
            ``gradient_boosting`` (scikit-learn's histogram gradient boosting, depth and rate from a
            small grid by inner-CV AUC).
        y: training labels (for the stratified inner folds).
        groups: the group of each training row (the outer folds' grouping: subject or duplicate group).
        inner_folds: folds of the inner CV.
        seed: shuffling seed of the inner folds.

    Raises:
        ValueError: an unknown ``name`` (the message lists :data:`CLINICAL_SCORE_MODELS`).
    """
    cv = grouped_splits(np.asarray(y, dtype=int), np.asarray(groups), inner_folds, seed)
    if name == "logistic":
        return GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
                            {"logisticregression__C": np.logspace(-3, 1, 9).tolist()}, scoring="roc_auc", cv=cv)
    if name == "gradient_boosting":
        grid = {"max_depth": [2, 3], "learning_rate": [0.03, 0.1], "max_iter": [100]}
        return GridSearchCV(HistGradientBoostingClassifier(l2_regularization=1.0, random_state=seed), grid,
                            scoring="roc_auc", cv=cv)
    raise ValueError(f"model.clinical.score_model should be one of {list(CLINICAL_SCORE_MODELS)}, got {name!r}")


def fit_clinical_model(name: str, features: np.ndarray, y: np.ndarray, groups: np.ndarray, *,
                       inner_folds: int = 5, seed: int = 0) -> tuple[ClassifierMixin, np.ndarray]:
    """Fit the clinical learner on one fold's training rows.

    Args:
        name: see :func:`make_clinical_model`.
        features: the fold-preprocessed clinical features (n, F) of training rows that have clinical data.
        y: their labels.
        groups: their groups.

    Returns:
        (the fitted learner, out-of-inner-fold P(malignant) of every training row: its calibration scores).
    """
    y, groups = np.asarray(y, dtype=int), np.asarray(groups)
    model = make_clinical_model(name, y=y, groups=groups, inner_folds=inner_folds, seed=seed).fit(features, y)
    oof = np.zeros(len(y))
    # Each calibration score comes from a learner (its own inner CV included) that never saw that row's group.
    for fit, held in grouped_splits(y, groups, inner_folds, seed + 1):
        inner = make_clinical_model(name, y=y[fit], groups=groups[fit], inner_folds=inner_folds, seed=seed)
        oof[held] = inner.fit(features[fit], y[fit]).predict_proba(features[held])[:, 1]
    return model, oof


def average_scores(image: np.ndarray, clinical: np.ndarray, *, image_present: np.ndarray,
                   clinical_present: np.ndarray) -> np.ndarray:
    """The equal-weight mean of the two probabilities, or the one that exists where a modality is missing.

    Args:
        image: P(malignant) from the image network (n,).
        clinical: P(malignant) from the clinical learner (n,); ignored where ``clinical_present`` is False.
        image_present: whether the lesion has any image the network reads (n,).
        clinical_present: whether its subject has clinical data (n,).
    """
    image, clinical = np.asarray(image, float), np.asarray(clinical, float)
    both = image_present & clinical_present
    return np.where(both, (image + clinical) / 2, np.where(clinical_present, clinical, image))
