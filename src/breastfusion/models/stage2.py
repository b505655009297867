"""MPM-MU stage 2: scikit-learn learners on the deep features of a trained stage-1 network.

The stacking ensemble has four base learners (logistic regression, an SVM with
probabilities, a random forest, extra-trees) and an MLP meta-learner, as in the
MPM-MU paper. Its inner cross-validation (which produces the meta-learner's
training inputs) is grouped by subject, so no subject's lesions sit on both
sides of an inner split. Every learner is fitted on one outer fold's training
lesions only; the caller never hands it a test label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier, StackingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from breastfusion.config import STAGE2_LEARNERS, Stage2Config

__all__ = ["STAGE2_LEARNERS", "FeatureTable", "feature_table", "make_learner", "grouped_splits", "fit_learner", "Stage2Ensemble",
           "group_permutation_importance"]


@dataclass
class FeatureTable:
    """Deep features of a set of lesions, with the feature group (``fused``, a modality) of every column."""

    values: np.ndarray
    groups: list[str]

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[1] != len(self.groups):
            raise ValueError(f"features of shape {self.values.shape} do not match {len(self.groups)} column groups")


def feature_table(blocks: dict[str, np.ndarray], fusion: str, features: str) -> FeatureTable:
    """The stage-2 feature table of a network's deep features, its columns grouped by where they come from.

    Args:
        blocks: ``MultimodalNet.features`` output (:func:`~breastfusion.training.fit.extract_features`):
            ``fused`` and one block per branch.
        fusion: the network's fusion (``concat``: its head input is exactly the branch blocks side by
            side, so they are the table, named by branch).
        features: ``stage2.features`` (``fused`` or ``fused+branches``) for the other fusions.
    """
    branches = [b for b in blocks if b != "fused"]
    names = branches if fusion == "concat" else ["fused"] + (branches if features == "fused+branches" else [])
    groups = [name for name in names for _ in range(blocks[name].shape[1])]
    return FeatureTable(np.concatenate([blocks[n] for n in names], axis=1), groups)


def _base_learners(cfg: Stage2Config) -> dict[str, Pipeline]:
    scaled = lambda estimator: make_pipeline(StandardScaler(), estimator)  # noqa: E731
    return {
        "logistic": scaled(LogisticRegression(C=0.1, max_iter=2000)),
        # Platt-scaled SVM (what SVC(probability=True) did, through the API scikit-learn keeps)
        "svm": scaled(CalibratedClassifierCV(SVC(C=1.0), method="sigmoid", ensemble=False,
                                             cv=StratifiedKFold(3, shuffle=True, random_state=cfg.seed))),
        "random_forest": make_pipeline(RandomForestClassifier(n_estimators=cfg.n_estimators, min_samples_leaf=2,
                                                              random_state=cfg.seed, n_jobs=1)),
        "extra_trees": make_pipeline(ExtraTreesClassifier(n_estimators=cfg.n_estimators, min_samples_leaf=2,
                                                          random_state=cfg.seed, n_jobs=1)),
    }


def grouped_splits(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds that keep each subject's lesions together (fewer folds when a class is rare)."""
    n_minority = int(min(np.sum(y == 1), np.sum(y == 0)))
    n_splits = max(2, min(n_splits, n_minority, len(np.unique(groups))))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, groups))


def make_learner(name: str, cfg: Stage2Config, *, y: np.ndarray, groups: np.ndarray) -> ClassifierMixin:
    """A fresh, unfitted stage-2 learner.

    Args:
        name: one of ``STAGE2_LEARNERS``.
        cfg: the stage-2 settings.
        y: training labels (for the stacking ensemble's grouped inner folds).
        groups: training subject of each row.

    Raises:
        ValueError: unknown learner name.
    """
    bases = _base_learners(cfg)
    if name in bases:
        return bases[name]
    if name == "stacking":
        meta = MLPClassifier(hidden_layer_sizes=(cfg.meta_hidden,), alpha=1e-3, max_iter=2000, random_state=cfg.seed)
        return StackingClassifier(estimators=list(bases.items()), final_estimator=meta,
                                  cv=grouped_splits(y, groups, cfg.inner_folds, cfg.seed),
                                  stack_method="predict_proba", n_jobs=1)
    raise ValueError(f"stage-2 learner should be one of {list(STAGE2_LEARNERS)}, got {name!r}")


def fit_learner(name: str, cfg: Stage2Config, features: np.ndarray, y: np.ndarray,
                groups: np.ndarray) -> ClassifierMixin:
    """Fit stage-2 learner ``name`` on one fold's training features."""
    y = np.asarray(y, dtype=int)
    return make_learner(name, cfg, y=y, groups=np.asarray(groups)).fit(features, y)


class Stage2Ensemble:
    """Every stage-2 learner of one (network, fold), fitted once on that fold's training features.

    The scikit-learn ``StackingClassifier`` is fitted as the paper's ensemble; its fitted base
    learners (each fitted on all training rows, as a learner alone would be) serve the single-learner
    variants, so a grid of learners costs one ensemble. Calibration scores, used for thresholds and
    conformal sets, are out-of-inner-fold: each base learner's predictions from the same grouped inner
    folds the stacking uses, and for the stack the meta-learner cross-validated on those.

    Args:
        cfg: the stage-2 settings.
        features: training rows (n, d).
        y: their labels.
        groups: their subjects (inner folds never split a subject).
    """

    def __init__(self, cfg: Stage2Config, features: np.ndarray, y: np.ndarray, groups: np.ndarray):
        y = np.asarray(y, dtype=int)
        groups = np.asarray(groups)
        self.stack = make_learner("stacking", cfg, y=y, groups=groups).fit(features, y)
        self.bases = dict(zip([name for name, _ in self.stack.estimators], self.stack.estimators_))
        splits = self.stack.cv
        self._calibration = {name: cross_val_predict(clone(est), features, y, cv=splits, method="predict_proba")[:, 1]
                             for name, est in self.stack.estimators}
        stacked = np.column_stack([self._calibration[name] for name in self.bases])
        meta_splits = grouped_splits(y, groups, cfg.inner_folds, cfg.seed + 1)
        self._calibration["stacking"] = cross_val_predict(clone(self.stack.final_estimator), stacked, y,
                                                          cv=meta_splits, method="predict_proba")[:, 1]

    def model(self, name: str) -> ClassifierMixin:
        """The fitted learner ``name`` (``stacking`` or a base learner)."""
        if name == "stacking":
            return self.stack
        if name not in self.bases:
            raise ValueError(f"stage-2 learner should be one of {list(STAGE2_LEARNERS)}, got {name!r}")
        return self.bases[name]

    def predict(self, name: str, features: np.ndarray) -> np.ndarray:
        """P(malignant) of learner ``name`` for new rows."""
        return self.model(name).predict_proba(features)[:, 1]

    def calibration(self, name: str) -> np.ndarray:
        """Out-of-inner-fold P(malignant) of learner ``name`` for every training row."""
        self.model(name)
        return self._calibration[name]


def group_permutation_importance(model: ClassifierMixin, table: FeatureTable, y: np.ndarray, *,
                                 n_repeats: int = 5, seed: int = 0) -> pd.DataFrame:
    """AUC lost when all columns of one feature group are permuted together across lesions.

    Returns:
        One row per group: ``group``, ``auc_drop`` (mean over repeats), ``auc_drop_sd``.
    """
    rng = np.random.default_rng(seed)
    base = roc_auc_score(y, model.predict_proba(table.values)[:, 1])
    groups = np.asarray(table.groups)
    rows = []
    for group in dict.fromkeys(table.groups):
        columns = np.flatnonzero(groups == group)
        drops = []
        for _ in range(n_repeats):
            shuffled = table.values.copy()
            shuffled[:, columns] = shuffled[rng.permutation(len(shuffled))][:, columns]
            drops.append(base - roc_auc_score(y, model.predict_proba(shuffled)[:, 1]))
        rows.append({"group": group, "auc_drop": float(np.mean(drops)), "auc_drop_sd": float(np.std(drops))})
    return pd.DataFrame(rows)
