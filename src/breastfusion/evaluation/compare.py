"""Compare two runs (or two variants of one run) with the paired DeLong test on the same subjects.

Each side's subject scores are rebuilt from its run folder exactly as the run
scored them (its ``evaluation`` settings: aggregation, recalibration fitted
on ``calibration_predictions.csv``), so each AUC equals the one in that run's
``results.json``. The two runs must describe the same cohort: the manifests'
SHA-256 recorded in ``results.json`` must agree (unless told otherwise), and
the subjects both predicted must carry the same labels. With repeated
cross-validation, repeat 0 of each run is compared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from breastfusion.config import ConfigError, EvaluationConfig, load_config
from breastfusion.evaluation.aggregation import aggregate
from breastfusion.evaluation.delong import delong_ci
from breastfusion.evaluation.repeats import REPEAT, first_repeat, with_repeat
from breastfusion.evaluation.summary import CohortMismatchError, paired_delong, score_subjects
from breastfusion.experiment.run_folder import RunLayout

__all__ = ["RunComparisonError", "RunScores", "load_run_scores", "compare_runs"]

_IDS = {"subject_id": str, "lesion_id": str}


class RunComparisonError(ValueError):
    """A run folder cannot be read for a comparison, or the two runs are not comparable; the message says why."""


@dataclass
class RunScores:
    """One side of a comparison: a run folder, a variant and its subject scores (repeat 0)."""

    run: Path
    variant: str
    scores: pd.DataFrame
    manifest_sha256: str | None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunComparisonError(f"{path}: not valid JSON ({exc})") from None


def _pick_variant(run: Path, predictions: pd.DataFrame, results: dict[str, Any], variant: str | None) -> str:
    known = list(dict.fromkeys(predictions["variant"].astype(str)))
    chosen = variant or results.get("reference_variant") or (known[0] if len(known) == 1 else None)
    if chosen is None:
        raise RunComparisonError(f"{run}: holds variants {known} and results.json names no reference_variant; "
                                 "choose one with --variant-a / --variant-b")
    if chosen not in known:
        raise RunComparisonError(f"{run}: no variant {chosen!r} in predictions.csv; it holds {known}")
    return chosen


def _scores(run: Path, test: pd.DataFrame, evaluation: EvaluationConfig) -> pd.DataFrame:
    """Subject scores of repeat 0 as the run computed them (see module docstring)."""
    calibration_file = RunLayout(run).calibration
    test = first_repeat(with_repeat(test))
    if calibration_file.is_file():
        calibration = pd.read_csv(calibration_file, dtype=_IDS)
        calibration = calibration[calibration["variant"].astype(str) == str(test["variant"].iloc[0])]
        return score_subjects(test, with_repeat(calibration), evaluation)
    if evaluation.aggregation == "learned" or evaluation.recalibration != "none":
        raise RunComparisonError(f"{run}: {calibration_file.name} is missing, and this run's evaluation "
                                 f"(aggregation {evaluation.aggregation!r}, recalibration "
                                 f"{evaluation.recalibration!r}) is fitted on it")
    subjects, _ = aggregate(test, evaluation.aggregation)
    return subjects.assign(**{REPEAT: int(test[REPEAT].iloc[0])})


def load_run_scores(run: str | Path, variant: str | None = None) -> RunScores:
    """Read a run folder's subject scores of one variant (default: its reference variant).

    Raises:
        RunComparisonError: a needed file is missing or unreadable, or the variant is unknown.
    """
    run = Path(run)
    layout = RunLayout(run)
    problem = layout.missing_file()
    if problem:
        raise RunComparisonError(problem)
    results = _read_json(layout.results)
    try:
        config = load_config(layout.config)
    except ConfigError as exc:
        raise RunComparisonError(str(exc)) from None
    predictions = pd.read_csv(layout.predictions, dtype=_IDS)
    missing = [c for c in ("variant", "fold", "subject_id", "y", "prob") if c not in predictions.columns]
    if missing:
        raise RunComparisonError(f"{layout.predictions}: missing columns {missing}")
    chosen = _pick_variant(run, predictions, results, variant)
    test = predictions[predictions["variant"].astype(str) == chosen]
    return RunScores(run=run, variant=chosen, scores=_scores(run, test, config.evaluation),
                     manifest_sha256=results.get("manifest_sha256"))


def compare_runs(run_a: str | Path, run_b: str | Path, *, variant_a: str | None = None,
                 variant_b: str | None = None, allow_different_manifest: bool = False) -> dict[str, Any]:
    """Paired DeLong test of AUC(A) − AUC(B) on the subjects both runs predicted.

    Args:
        run_a, run_b: run folders (may be the same folder with two variants).
        variant_a, variant_b: the variants to compare (default: each run's reference variant).
        allow_different_manifest: compare even when the recorded manifest hashes differ (e.g. the
            same cohort with a ``cv_group`` column added); labels must still agree.

    Returns:
        ``a`` and ``b`` (``run``, ``variant``, ``auc``, ``auc_ci_delong`` on the common subjects),
        ``auc_difference`` (A − B), ``difference_ci``, ``z``, ``p``, ``n_subjects``, ``n_malignant``,
        ``n_only_a``, ``n_only_b``, ``manifest_sha256`` (of each), ``level``, ``repeat``.

    Raises:
        RunComparisonError: unreadable run folder, unknown variant, different manifests, no common
            subject, or a common subject labelled differently.
    """
    a, b = load_run_scores(run_a, variant_a), load_run_scores(run_b, variant_b)
    if a.manifest_sha256 and b.manifest_sha256 and a.manifest_sha256 != b.manifest_sha256 \
            and not allow_different_manifest:
        raise RunComparisonError(
            f"the runs used different manifests: {a.run / 'results.json'} records manifest_sha256 "
            f"{a.manifest_sha256[:12]}…, {b.run / 'results.json'} records {b.manifest_sha256[:12]}…; a paired "
            "test needs the same subjects (pass --allow-different-manifest if only the file changed)")
    try:
        test = paired_delong(a.scores, b.scores, names=(f"{a.run} ({a.variant})", f"{b.run} ({b.variant})"))
    except CohortMismatchError as exc:
        raise RunComparisonError(str(exc)) from None
    common = first_repeat(a.scores).set_index("subject_id").index.intersection(
        first_repeat(b.scores).set_index("subject_id").index)
    sides = {}
    for key, side in (("a", a), ("b", b)):
        frame = first_repeat(side.scores).set_index("subject_id").loc[common]
        ci = delong_ci(frame["y"].to_numpy(), frame["prob"].to_numpy())
        sides[key] = {"run": str(side.run), "variant": side.variant, "auc": float(ci.auc),
                      "auc_ci_delong": [float(ci.low), float(ci.high)], "manifest_sha256": side.manifest_sha256}
    return {**sides, **{k: v for k, v in test.items() if k not in ("auc_a", "auc_b")},
            "level": "subject", "repeat": 0}
