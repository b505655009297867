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

A cohort with another cohort pooled into training (``cv.training_only_column``)
is split as a run splits it: outer and inner folds are the ordinary lesions',
and every training-only lesion joins each outer and inner training set.

:func:`nested_recipe_selection` chooses among whole recipes instead of the
variants of one config: each candidate is its own (cohort, config, variant),
for choices a variant cannot express, such as pooling another cohort into
training or not. The recipes share the ordinary lesions and the outer folds;
each is scored on the same inner folds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.progress import Progress
from sklearn.metrics import roc_auc_score

from breastfusion.config import ExperimentConfig, select_variants
from breastfusion.data.manifest import Cohort
from breastfusion.evaluation.metrics import auc_with_ci
from breastfusion.evaluation.repeats import first_repeat
from breastfusion.evaluation.summary import score_subjects
from breastfusion.experiment.crossval import CrossValidation, cross_validate, seeded_folds
from breastfusion.strict_json import json_safe

__all__ = [
    "NestedSelection",
    "OuterFold",
    "Recipe",
    "nested_recipe_selection",
    "nested_selection",
    "outer_training_cohort",
    "recipe_inner_cv",
    "restrict_cohort",
]


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


def _one_repeat(config: ExperimentConfig) -> ExperimentConfig:
    return config.model_copy(update={"cv": config.cv.model_copy(update={"repeats": 1})})


def outer_training_cohort(cohort: Cohort, config: ExperimentConfig, train_idx: np.ndarray, fold: int,
                          inner_folds: int) -> tuple[Cohort, list[tuple[np.ndarray, np.ndarray]]]:
    """Outer fold ``fold``'s training side as a cohort of its own, and its inner folds.

    The inner folds are the run's splitter (grouped, stratified; training-only lesions in every training set)
    with ``inner_folds`` splits, seeded ``cv.seed + fold``.

    Args:
        cohort: the whole cohort; ``train_idx`` holds positions into its ``lesions``.
        config: the experiment (its ``cv.seed`` and ``cv.training_only_column``).
        train_idx: the outer fold's training positions.
        fold: the outer fold's index.
        inner_folds: inner folds to split into.

    Returns:
        The restricted cohort and its inner (train, test) folds, as positions into the restricted cohort's
        ``lesions``.
    """
    sub = restrict_cohort(cohort, cohort.lesions.iloc[train_idx]["subject_id"].unique())
    return sub, seeded_folds(sub, config, config.cv.seed + fold, n_splits=inner_folds)


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
    config = _one_repeat(select_variants(config, candidates))
    lesions = cohort.lesions
    outer = seeded_folds(cohort, config, config.cv.seed)
    if outer_predictions is None or outer_calibration is None:
        cv = cross_validate(cohort, config, folds=outer)
        outer_predictions, outer_calibration = cv.predictions, cv.calibration
    _check_outer(outer_predictions, lesions, outer, candidates)
    outer_scores = pd.concat([_scores(outer_predictions, outer_calibration, config, c) for c in candidates],
                             ignore_index=True)

    def inner_auc(k: int, sub: Cohort, inner: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
        inner_cv = cross_validate(sub, config, folds=inner)
        return {c: _pooled_auc(_scores(inner_cv.predictions, inner_cv.calibration, config, c)) for c in candidates}

    return _select(cohort, config, outer, inner_folds, candidates, outer_scores, inner_auc, progress)


def _select(cohort: Cohort, config: ExperimentConfig, outer: list[tuple[np.ndarray, np.ndarray]], inner_folds: int,
            candidates: list[str], outer_scores: pd.DataFrame,
            inner_auc: Callable[[int, Cohort, list[tuple[np.ndarray, np.ndarray]]], dict[str, float]],
            progress: Progress | None) -> NestedSelection:
    """The outer loop: for each outer fold, the candidates' inner AUCs (``inner_auc(k, training cohort, inner
    folds)``), the choice (the highest; of equal ones the first candidate) and its outer-fold scores."""
    lesions = cohort.lesions
    position = pd.Series(np.arange(len(lesions)), index=lesions["lesion_id"].to_numpy())
    task = progress.add_task("nested selection: outer folds", total=len(outer)) if progress else None
    folds, selected = [], []
    for k, (train_idx, test_idx) in enumerate(outer):
        sub, inner = outer_training_cohort(cohort, config, train_idx, k, inner_folds)
        aucs = inner_auc(k, sub, inner)
        chosen = max(candidates, key=aucs.__getitem__)  # max keeps the first of equal AUCs
        to_outer = position.loc[sub.lesions["lesion_id"]].to_numpy()
        folds.append(OuterFold(k, train_idx, test_idx, [(to_outer[a], to_outer[b]) for a, b in inner], aucs, chosen))
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
        "selected": {"auc": auc, "auc_ci": list(ci), "n_subjects": len(selected),
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


@dataclass(frozen=True)
class Recipe:
    """One candidate of :func:`nested_recipe_selection`: a whole recipe, not a variant of a shared config.

    Attributes:
        cohort: the labelled cohort it trains on; its ordinary lesions are the ones every candidate is scored on,
            and lesions its ``config.cv.training_only_column`` marks only ever train.
        config: the experiment; ``variant`` is the one scored, and it is trained alone.
        variant: the variant of ``config`` that the recipe is.
        outer_predictions, outer_calibration: its out-of-fold and calibration lesion predictions on the outer folds
            (a run's ``predictions.csv`` and ``calibration_predictions.csv``, which may be a costlier form of the
            same recipe, e.g. an ensemble of several networks); computed with ``config`` when not given.
    """

    cohort: Cohort
    config: ExperimentConfig
    variant: str
    outer_predictions: pd.DataFrame | None = field(default=None, repr=False)
    outer_calibration: pd.DataFrame | None = field(default=None, repr=False)

    def prepared(self) -> Recipe:
        """The recipe with ``config`` reduced to ``variant`` and one repeat (what every inner run trains)."""
        if self.variant not in self.config.variants:
            raise ValueError(f"variant {self.variant!r} is not in config {self.config.name!r}; it has "
                             f"{list(self.config.variants)}")
        return Recipe(self.cohort, _one_repeat(select_variants(self.config, [self.variant])), self.variant,
                      self.outer_predictions, self.outer_calibration)


def _tested_subjects(cohort: Cohort, folds: list[tuple[np.ndarray, np.ndarray]]) -> list[set[str]]:
    """Each fold's test subjects (only ordinary lesions are ever tested)."""
    return [set(cohort.lesions.iloc[test]["subject_id"].astype(str)) for _, test in folds]


def recipe_inner_cv(recipe: Recipe, fold: int, inner_folds: int = 3, *,
                    checkpoint_dir: Path | None = None) -> tuple[CrossValidation, list[set[str]]]:
    """Cross-validate ``recipe`` on the inner folds of outer fold ``fold``'s training side.

    A separate step so that long selections can be spread over processes: with the same ``checkpoint_dir``,
    :func:`nested_recipe_selection` then reads the finished networks instead of training them again.

    Returns:
        The inner cross-validation and, per inner fold, its test subjects (only ordinary lesions are tested).
    """
    recipe = recipe.prepared()
    outer = seeded_folds(recipe.cohort, recipe.config, recipe.config.cv.seed)
    if not 0 <= fold < len(outer):
        raise ValueError(f"outer fold {fold} does not exist; cv.n_splits is {len(outer)}")
    sub, inner = outer_training_cohort(recipe.cohort, recipe.config, outer[fold][0], fold, inner_folds)
    cv = cross_validate(sub, recipe.config, folds=inner, checkpoint_dir=checkpoint_dir)
    return cv, _tested_subjects(sub, inner)


def nested_recipe_selection(recipes: Mapping[str, Recipe], *, inner_folds: int = 3,
                            checkpoint_dir: Path | None = None, progress: Progress | None = None) -> NestedSelection:
    """Choose among whole recipes inside each outer training fold, and score the choices on the outer test folds.

    The procedure is :func:`nested_selection`'s, with each candidate trained on its own cohort with its own config
    (e.g. one recipe with another cohort pooled into training, one without). The recipes must test the same
    subjects in the same outer folds (same ordinary lesions, ``cv.n_splits`` and ``cv.seed``), and their inner
    folds must agree too; every figure is on those subjects.

    Args:
        recipes: ``{name: recipe}``, in order (ties go to the first).
        inner_folds: grouped, stratified inner folds per outer training set (at least 2).
        checkpoint_dir: where each recipe's inner networks are kept (``{name}/outer{k}``) and read back from.
        progress: a rich Progress to report outer folds on.

    Returns:
        The selection, with recipe names as candidates; ``OuterFold`` positions index the first recipe's
        ``cohort.lesions``, and its ``summary`` is :func:`nested_selection`'s.

    Raises:
        ValueError: no recipe, ``inner_folds < 2``, a variant not in its config, recipes whose outer or inner
            test folds differ, or outer predictions not made on the outer folds.
    """
    if not recipes:
        raise ValueError("no recipe to choose among; give at least one")
    if int(inner_folds) != inner_folds or inner_folds < 2:
        raise ValueError(f"inner_folds should be an integer >= 2, got {inner_folds!r}")
    prepared = {name: r.prepared() for name, r in recipes.items()}
    names = list(prepared)
    first = prepared[names[0]]
    outers = {name: seeded_folds(r.cohort, r.config, r.config.cv.seed) for name, r in prepared.items()}
    reference = _tested_subjects(first.cohort, outers[names[0]])
    for name, r in prepared.items():
        if _tested_subjects(r.cohort, outers[name]) != reference:
            raise ValueError(f"recipe {name!r} tests other subjects in its outer folds than {names[0]!r}; give "
                             "recipes on the same ordinary lesions with the same cv.n_splits and cv.seed")

    scores = []
    for name, r in prepared.items():
        pred, calib = r.outer_predictions, r.outer_calibration
        if pred is None or calib is None:
            cv = cross_validate(r.cohort, r.config, folds=outers[name],
                                checkpoint_dir=checkpoint_dir / name / "outer" if checkpoint_dir else None)
            pred, calib = cv.predictions, cv.calibration
        _check_outer(pred, r.cohort.lesions, outers[name], [r.variant])
        scores.append(_scores(pred, calib, r.config, r.variant).assign(variant=name))
    outer_scores = pd.concat(scores, ignore_index=True)

    def inner_auc(k: int, sub: Cohort, inner: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
        aucs, inner_tests = {}, None
        for name, r in prepared.items():
            cv, tests = recipe_inner_cv(r, k, inner_folds,
                                        checkpoint_dir=checkpoint_dir / name / f"outer{k}" if checkpoint_dir else None)
            if inner_tests is not None and tests != inner_tests:
                raise ValueError(f"outer fold {k}: recipe {name!r}'s inner folds test other subjects than "
                                 f"{names[0]!r}'s; their ordinary lesions differ")
            inner_tests = tests
            aucs[name] = _pooled_auc(_scores(cv.predictions, cv.calibration, r.config, r.variant))
        return aucs

    return _select(first.cohort, first.config, outers[names[0]], inner_folds, names, outer_scores, inner_auc,
                   progress)
