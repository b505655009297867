"""Nested model selection: choose among candidate variants inside each outer training fold.

Picking the variant (encoder, fusion, modality subset, stage-2 learner ...) with
the best out-of-fold AUC of an ablation and reporting that AUC is optimistic:
the same test folds chose the model and scored it. Here the choice is made
again for each outer fold of the experiment's own splitter, from that fold's
training subjects only:

1. the outer folds are :func:`~breastfusion.evaluation.splits.subject_folds`
   on ``cohort.lesions`` (grouped by ``group``, as every run's folds are), and
   every candidate is cross-validated on them (or the run's out-of-fold
   predictions are reused: they are the same folds);
2. for outer fold ``k``, the cohort is restricted to the fold's training
   subjects (:func:`restrict_cohort`) and split again into ``inner_folds``
   grouped, stratified folds (the same splitter, seeded ``cv.seed + k``, so
   the same ``group`` decides them); every candidate is cross-validated on
   those inner folds with the experiment's own training and scoring;
3. the candidate with the highest inner subject-level AUC (pooled over the
   inner test folds, scored as the run scores subjects; ties go to the first
   candidate listed) is fold ``k``'s choice, and its predictions on outer
   fold ``k``'s test subjects are the selected model's predictions there.

The pooled AUC of those predictions is an honest figure for "the model this
procedure picks". Beside it, the naive figure (the best candidate's pooled
outer AUC, chosen on the outer test folds themselves) shows the optimism.
Cost: about ``inner_folds`` times the candidates' training, per outer fold.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from rich.progress import Progress
from sklearn.metrics import roc_auc_score

from breastfusion.config import ExperimentConfig, select_variants
from breastfusion.data.manifest import Cohort
from breastfusion.experiment.crossval import cross_validate
from breastfusion.strict_json import json_safe
from breastfusion.evaluation.metrics import auc_with_ci
from breastfusion.evaluation.repeats import first_repeat
from breastfusion.evaluation.splits import subject_folds
from breastfusion.evaluation.summary import score_subjects

__all__ = ["OuterFold", "NestedSelection", "restrict_cohort", "nested_selection"]


def restrict_cohort(cohort: Cohort, subject_ids: Iterable[str]) -> Cohort:
    """The cohort with only the given subjects: their manifest rows and clinical rows, in the cohort's order.

    Raises:
        ValueError: an id that is not a subject of the cohort, or no id at all.
    """
    ids = {str(s) for s in subject_ids}
    unknown = sorted(ids - set(cohort.manifest["subject_id"]))
    if unknown or not ids:
        raise ValueError(f"{cohort.root}: subject id(s) {unknown[:10] or '(none given)'} are not in the manifest; "
                         "expected a non-empty set of the cohort's subject_id values")
    manifest = cohort.manifest[cohort.manifest["subject_id"].isin(ids)].reset_index(drop=True)
    clinical = cohort.clinical
    if "subject_id" in clinical.columns:
        clinical = clinical[clinical["subject_id"].isin(ids)].reset_index(drop=True)
    return Cohort(root=cohort.root, manifest=manifest, clinical=clinical)


@dataclass
class OuterFold:
    """One outer fold of a nested selection.

    Attributes:
        fold: its index in the experiment's splitter.
        train_idx, test_idx: positions into ``cohort.lesions``.
        inner: the inner (train, test) folds, as positions into ``cohort.lesions`` (all within ``train_idx``).
        inner_auc: each candidate's subject-level AUC pooled over the inner test folds.
        chosen: the candidate with the highest ``inner_auc``.
    """

    fold: int
    train_idx: np.ndarray
    test_idx: np.ndarray
    inner: list[tuple[np.ndarray, np.ndarray]]
    inner_auc: dict[str, float]
    chosen: str


@dataclass
class NestedSelection:
    """What :func:`nested_selection` produced.

    Attributes:
        candidates: the variants chosen among, in order.
        inner_folds: inner folds per outer fold.
        folds: one :class:`OuterFold` per outer fold.
        outer_scores: every candidate's subject scores on the outer test folds (``variant``, ``fold``,
            ``subject_id``, ``y``, ``prob``, ... as :func:`~breastfusion.evaluation.summary.score_subjects`).
        selected: per outer fold, the chosen candidate's rows of ``outer_scores``.
        summary: the JSON-ready report (see :func:`nested_selection`).
    """

    candidates: list[str]
    inner_folds: int
    folds: list[OuterFold]
    outer_scores: pd.DataFrame = field(repr=False)
    selected: pd.DataFrame = field(repr=False)
    summary: dict[str, Any] = field(repr=False)


def _scores(predictions: pd.DataFrame, calibration: pd.DataFrame, config: ExperimentConfig,
            variant: str) -> pd.DataFrame:
    """A variant's subject scores (repeat 0), each fold scored with its own calibration subjects."""
    pred = first_repeat(predictions[predictions["variant"] == variant])
    calib = first_repeat(calibration[calibration["variant"] == variant])
    return score_subjects(pred, calib, config.evaluation).assign(variant=variant)


def _pooled_auc(scores: pd.DataFrame) -> float:
    return float(roc_auc_score(scores["y"], scores["prob"]))


def _check_outer(predictions: pd.DataFrame, lesions: pd.DataFrame, outer: list, candidates: list[str]) -> None:
    """Given outer predictions must be every candidate's, on exactly the experiment's folds."""
    missing = [c for c in candidates if c not in set(predictions["variant"])]
    if missing:
        raise ValueError(f"the outer predictions have no rows of candidate(s) {missing}; they have "
                         f"{sorted(set(predictions['variant']))}")
    pred = first_repeat(predictions)
    for k, (_, test_idx) in enumerate(outer):
        expected = set(lesions.iloc[test_idx]["subject_id"])
        got = set(pred.loc[pred["fold"] == k, "subject_id"].astype(str))
        if got != expected:
            raise ValueError(f"the outer predictions' fold {k} holds {len(got)} subject(s), the experiment's "
                             f"splitter puts {len(expected)} there ({len(got ^ expected)} differ); they were not "
                             "made on this cohort with this config's cv.n_splits and cv.seed")


def nested_selection(cohort: Cohort, config: ExperimentConfig, candidates: list[str] | None = None, *,
                     inner_folds: int = 3, outer_predictions: pd.DataFrame | None = None,
                     outer_calibration: pd.DataFrame | None = None,
                     progress: Progress | None = None) -> NestedSelection:
    """Choose a candidate variant inside each outer training fold, and score the choices on the outer test folds.

    Args:
        cohort: a validated, labelled cohort.
        config: the experiment (its ``cv.n_splits`` and ``cv.seed`` give the outer folds; repeat 0 only).
        candidates: variant names to choose among (default: every variant of ``config``).
        inner_folds: grouped, stratified inner folds per outer training set (at least 2).
        outer_predictions, outer_calibration: the candidates' out-of-fold and calibration lesion predictions
            on the outer folds (a run's ``predictions.csv`` and ``calibration_predictions.csv``); computed
            when not given.
        progress: a rich Progress to report outer folds on.

    Returns:
        The selection; its ``summary`` holds ``candidates``, ``inner_folds``, ``folds`` (per outer fold:
        ``fold``, ``n_train_subjects``, ``n_test_subjects``, ``inner_auc`` per candidate, ``chosen``),
        ``selected`` (``auc``, ``auc_ci`` of the chosen candidates' outer predictions pooled, ``n_subjects``,
        ``n_malignant``), ``naive`` (the candidate with the best pooled outer AUC, its ``auc`` and ``auc_ci``:
        chosen on the test folds, so optimistic), ``optimism`` (naive − selected AUC) and ``outer_auc`` per
        candidate.

    Raises:
        ValueError: an unknown candidate, ``inner_folds < 2``, too few subjects of a class for the folds, or
            outer predictions not made on the experiment's folds.
    """
    candidates = list(candidates) if candidates else list(config.variants)
    unknown = [c for c in candidates if c not in config.variants]
    if unknown:
        raise ValueError(f"candidate(s) {unknown} are not variants of {config.name!r}; expected names from "
                         f"{list(config.variants)}")
    if int(inner_folds) != inner_folds or inner_folds < 2:
        raise ValueError(f"inner_folds should be an integer >= 2, got {inner_folds!r}")
    if config.cv.training_only_column is not None:
        raise ValueError("nested selection does not pool a training-only cohort yet: unset cv.training_only_column")
    config = select_variants(config, candidates)
    config = config.model_copy(update={"cv": config.cv.model_copy(update={"repeats": 1})})
    lesions = cohort.lesions
    outer = subject_folds(lesions, n_splits=config.cv.n_splits, seed=config.cv.seed)
    if outer_predictions is None or outer_calibration is None:
        cv = cross_validate(cohort, config, folds=outer)
        outer_predictions, outer_calibration = cv.predictions, cv.calibration
    _check_outer(outer_predictions, lesions, outer, candidates)
    outer_scores = pd.concat([_scores(outer_predictions, outer_calibration, config, c) for c in candidates],
                             ignore_index=True)

    position = pd.Series(np.arange(len(lesions)), index=lesions["lesion_id"].to_numpy())
    task = progress.add_task("nested selection: outer folds", total=len(outer)) if progress else None
    folds, selected = [], []
    for k, (train_idx, test_idx) in enumerate(outer):
        sub = restrict_cohort(cohort, lesions.iloc[train_idx]["subject_id"].unique())
        sub_lesions = sub.lesions
        inner = subject_folds(sub_lesions, n_splits=inner_folds, seed=config.cv.seed + k)
        inner_cv = cross_validate(sub, config, folds=inner)
        inner_auc = {c: _pooled_auc(_scores(inner_cv.predictions, inner_cv.calibration, config, c))
                     for c in candidates}
        chosen = max(candidates, key=lambda c: inner_auc[c])  # max keeps the first of equal AUCs
        to_outer = position.loc[sub_lesions["lesion_id"]].to_numpy()
        folds.append(OuterFold(k, train_idx, test_idx, [(to_outer[a], to_outer[b]) for a, b in inner],
                               inner_auc, chosen))
        selected.append(outer_scores[(outer_scores["variant"] == chosen) & (outer_scores["fold"] == k)])
        if progress:
            progress.advance(task)
    selected_scores = pd.concat(selected, ignore_index=True)
    return NestedSelection(candidates, inner_folds, folds, outer_scores, selected_scores,
                           _summary(config, candidates, inner_folds, folds, outer_scores, selected_scores, lesions))


def _summary(config: ExperimentConfig, candidates: list[str], inner_folds: int, folds: list[OuterFold],
             outer_scores: pd.DataFrame, selected: pd.DataFrame, lesions: pd.DataFrame) -> dict[str, Any]:
    n_boot, seed = config.cv.bootstrap, config.cv.seed
    y, p = selected["y"].to_numpy(), selected["prob"].to_numpy()
    auc, ci = auc_with_ci(y, p, n_boot=n_boot, seed=seed)
    outer_auc = {c: _pooled_auc(outer_scores[outer_scores["variant"] == c]) for c in candidates}
    best = max(candidates, key=lambda c: outer_auc[c])
    best_scores = outer_scores[outer_scores["variant"] == best]
    naive_auc, naive_ci = auc_with_ci(best_scores["y"].to_numpy(), best_scores["prob"].to_numpy(), n_boot=n_boot,
                                      seed=seed)
    return json_safe({
        "candidates": candidates, "inner_folds": inner_folds, "n_outer_folds": len(folds),
        "folds": [{"fold": f.fold, "n_train_subjects": int(lesions.iloc[f.train_idx]["subject_id"].nunique()),
                   "n_test_subjects": int(lesions.iloc[f.test_idx]["subject_id"].nunique()),
                   "inner_auc": f.inner_auc, "chosen": f.chosen} for f in folds],
        "selected": {"auc": auc, "auc_ci": list(ci), "n_subjects": int(len(selected)),
                     "n_malignant": int(y.sum()),
                     "what": "each outer fold's test subjects scored by the candidate its training subjects chose "
                             "(inner cross-validation), pooled; subject level"},
        "naive": {"variant": best, "auc": naive_auc, "auc_ci": list(naive_ci),
                  "what": "the candidate with the best pooled outer AUC, chosen on the outer test folds themselves "
                          "(optimistic)"},
        "optimism": naive_auc - auc,
        "outer_auc": outer_auc,
        "n_boot": n_boot,
    })
