"""MPM-MU stage 2: scikit-learn learners on the deep features of a trained stage-1 network.

The stacking ensemble has four base learners (logistic regression, an SVM with
probabilities, a random forest, extra-trees) and an MLP meta-learner, as in the
MPM-MU paper. Its inner cross-validation (which produces the meta-learner's
training inputs) is grouped by subject, so no subject's lesions sit on both
sides of an inner split. Every learner is fitted on one outer fold's training
lesions only; the caller never hands it a test label.

:class:`Stage2Classifier` is the ensemble (or one of its learners) as a scikit-learn estimator: its
constructor only stores parameters (``clone`` and ``get_params`` work), ``fit(X, y, groups)`` hands
``groups`` to its ``cv`` splitter, so the experiment passes the outer folds' grouping and no group
straddles an inner split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier, StackingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from breastfusion.config import STAGE2_LEARNERS, Stage2Config

__all__ = ["STAGE2_LEARNERS", "FeatureTable", "feature_table", "make_learner", "inner_splitter", "grouped_splits",
           "fit_learner", "Stage2Classifier", "Stage2Ensemble", "group_permutation_importance"]


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


def _base_learners(cfg: Stage2Config | None = None, *, n_estimators: int | None = None,
                   seed: int | None = None) -> dict[str, Pipeline]:
    """The four base learners, from ``cfg`` or from its ``n_estimators`` and ``seed`` given apart."""
    n_estimators = cfg.n_estimators if n_estimators is None else n_estimators
    seed = cfg.seed if seed is None else seed
    scaled = lambda estimator: make_pipeline(StandardScaler(), estimator)  # noqa: E731
    return {
        "logistic": scaled(LogisticRegression(C=0.1, max_iter=2000)),
        # Platt-scaled SVM (what SVC(probability=True) did, through the API scikit-learn keeps)
        "svm": scaled(CalibratedClassifierCV(SVC(C=1.0), method="sigmoid", ensemble=False,
                                             cv=StratifiedKFold(3, shuffle=True, random_state=seed))),
        "random_forest": make_pipeline(RandomForestClassifier(n_estimators=n_estimators, min_samples_leaf=2,
                                                              random_state=seed, n_jobs=1)),
        "extra_trees": make_pipeline(ExtraTreesClassifier(n_estimators=n_estimators, min_samples_leaf=2,
                                                          random_state=seed, n_jobs=1)),
    }


def _meta_learner(meta_hidden: int, seed: int) -> MLPClassifier:
    return MLPClassifier(hidden_layer_sizes=(meta_hidden,), alpha=1e-3, max_iter=2000, random_state=seed)


def inner_splitter(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> StratifiedGroupKFold:
    """A shuffled, stratified splitter that keeps each group's lesions together, with fewer folds than
    ``n_splits`` when a class or the number of groups is too small for that many (never fewer than 2)."""
    n_minority = int(min(np.sum(y == 1), np.sum(y == 0)))
    n_splits = max(2, min(n_splits, n_minority, len(np.unique(groups))))
    return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)


def grouped_splits(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, held-out) index pairs of :func:`inner_splitter` on these rows."""
    return list(inner_splitter(y, groups, n_splits, seed).split(np.zeros(len(y)), y, groups))


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
        return StackingClassifier(estimators=list(bases.items()), final_estimator=_meta_learner(cfg.meta_hidden,
                                                                                                 cfg.seed),
                                  cv=grouped_splits(y, groups, cfg.inner_folds, cfg.seed),
                                  stack_method="predict_proba", n_jobs=1)
    raise ValueError(f"stage-2 learner should be one of {list(STAGE2_LEARNERS)}, got {name!r}")


def fit_learner(name: str, cfg: Stage2Config, features: np.ndarray, y: np.ndarray,
                groups: np.ndarray) -> ClassifierMixin:
    """Fit stage-2 learner ``name`` on one fold's training features."""
    y = np.asarray(y, dtype=int)
    return make_learner(name, cfg, y=y, groups=np.asarray(groups)).fit(features, y)


class Stage2Classifier(ClassifierMixin, BaseEstimator):
    """MPM-MU's stage-2 learner as a scikit-learn estimator: the stacking ensemble, or one of its base learners.

    Why an estimator: it clones, grid-searches and nests in other scikit-learn code like any classifier, and
    the grouping of its inner cross-validation comes in through ``fit(X, y, groups)`` as scikit-learn's own
    group-aware estimators take it, so a caller with its own grouping (near-duplicate subjects' ``cv_group``)
    passes that grouping and its splitter rather than relying on one built inside.

    Args:
        learner: ``stacking`` (four base learners, an MLP meta-learner on their out-of-inner-fold
            probabilities) or one base learner: ``logistic``, ``svm``, ``random_forest``, ``extra_trees``.
        cv: the stacking's inner cross-validation: an int, the number of grouped stratified folds
            (:func:`inner_splitter`: fewer when a class is rare), or a splitter with
            ``split(X, y, groups)`` (e.g. ``StratifiedGroupKFold``), which gets ``fit``'s ``groups``.
            Unused by a base learner.
        n_estimators: trees of the random forest and extra-trees.
        meta_hidden: hidden units of the MLP meta-learner.
        random_state: the seed of every learner and of the int ``cv``'s shuffling.

    Attributes:
        estimator_: the fitted ``StackingClassifier`` (or base learner ``Pipeline``).
        splits_: the inner (train, held-out) index pairs the stacking used (``None`` for a base learner).
        classes_: the labels seen in ``fit``.
    """

    def __init__(self, learner: str = "stacking", *, cv: int | Any = 5, n_estimators: int = 200,
                 meta_hidden: int = 16, random_state: int = 0):
        self.learner = learner
        self.cv = cv
        self.n_estimators = n_estimators
        self.meta_hidden = meta_hidden
        self.random_state = random_state

    @classmethod
    def from_config(cls, cfg: Stage2Config, learner: str = "stacking", *, cv: int | Any | None = None
                    ) -> "Stage2Classifier":
        """The estimator of a config's ``stage2`` settings (``cv`` default: ``cfg.inner_folds``)."""
        return cls(learner, cv=cfg.inner_folds if cv is None else cv, n_estimators=cfg.n_estimators,
                   meta_hidden=cfg.meta_hidden, random_state=cfg.seed)

    def _inner_splits(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        if isinstance(self.cv, (int, np.integer)) and not isinstance(self.cv, bool):
            if self.cv < 2:
                raise ValueError(f"cv should be an int >= 2 or a splitter with split(X, y, groups), got {self.cv!r}")
            return grouped_splits(y, groups, int(self.cv), self.random_state)
        if isinstance(self.cv, str) or not callable(getattr(self.cv, "split", None)):
            raise ValueError(f"cv should be an int >= 2 or a splitter with split(X, y, groups), got {self.cv!r}")
        return list(self.cv.split(X, y, groups))

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> "Stage2Classifier":
        """Fit on training rows ``X`` (n, d) with labels ``y`` (n,); ``groups`` (n,) keep rows together in the
        inner splits (default: every row its own group).

        Raises:
            ValueError: an unknown ``learner``, a bad ``cv``, or ``groups`` of another length than ``y``.
        """
        bases = [name for name in STAGE2_LEARNERS if name not in ("none", "stacking")]
        if self.learner not in (*bases, "stacking"):
            raise ValueError(f"learner should be one of {['stacking', *bases]}, got {self.learner!r}")
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        if len(groups) != len(y):
            raise ValueError(f"groups has {len(groups)} entries; expected one per row of X ({len(y)})")
        learners = _base_learners(n_estimators=self.n_estimators, seed=self.random_state)
        if self.learner == "stacking":
            self.splits_ = self._inner_splits(X, y, groups)
            self.estimator_ = StackingClassifier(estimators=list(learners.items()),
                                                 final_estimator=_meta_learner(self.meta_hidden, self.random_state),
                                                 cv=self.splits_, stack_method="predict_proba", n_jobs=1)
        else:
            self.splits_ = None
            self.estimator_ = learners[self.learner]
        self.estimator_.fit(X, y)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (n, 2), columns in ``classes_`` order."""
        check_is_fitted(self, "estimator_")
        X = validate_data(self, X, reset=False)
        return self.estimator_.predict_proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The more probable class of each row."""
        proba = self.predict_proba(X)  # first: raises NotFittedError before fit
        return self.classes_[np.argmax(proba, axis=1)]


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
        groups: their groups (the outer folds' ``cv_group`` / subject: inner folds never split one).
        cv: the stacking's inner splitter (``split(X, y, groups)``); default :func:`inner_splitter` with
            ``cfg.inner_folds`` and ``cfg.seed``. The meta-learner's calibration scores are cross-validated on
            :func:`grouped_splits` seeded ``cfg.seed + 1`` over the same groups.

    Attributes:
        classifier: the fitted :class:`Stage2Classifier` (``stacking``); ``stack`` is its ``StackingClassifier``.
    """

    def __init__(self, cfg: Stage2Config, features: np.ndarray, y: np.ndarray, groups: np.ndarray, *,
                 cv: Any | None = None):
        y = np.asarray(y, dtype=int)
        groups = np.asarray(groups)
        self.classifier = Stage2Classifier.from_config(cfg, cv=cv).fit(features, y, groups=groups)
        self.stack = self.classifier.estimator_
        self.bases = dict(zip([name for name, _ in self.stack.estimators], self.stack.estimators_))
        splits = self.classifier.splits_
        self._calibration = {name: cross_val_predict(clone(est), features, y, cv=splits, method="predict_proba")[:, 1]
                             for name, est in self.stack.estimators}
        stacked = np.column_stack([self._calibration[name] for name in self.bases])
        meta_splits = grouped_splits(y, groups, cfg.inner_folds, cfg.seed + 1)
        self._calibration["stacking"] = cross_val_predict(clone(self.stack.final_estimator), stacked, y,
                                                          cv=meta_splits, method="predict_proba")[:, 1]

    def model(self, name: str) -> ClassifierMixin:
        """The fitted learner ``name``: the :class:`Stage2Classifier` for ``stacking``, else the stack's base
        learner (fitted on every training row, as the learner alone would be)."""
        if name == "stacking":
            return self.classifier
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
