"""Ensemble finished runs: average their networks' out-of-fold logits, fold by fold, into a new run folder.

Two runs on the same cohort and folds can see a lesion differently: an ImageNet network on the whole frame,
a from-scratch network on the localiser's crop of the lesion. Their scores disagree where each is weak, so the
mean of their logits can rank lesions better than either (BUSI: 0.917 and 0.894 give 0.931,
``bench/results/real_data.json``; reruns of the same configs, 0.882 and 0.875, give 0.909). Averaging is done per
lesion, on the same held-out fold for every member, so the ensemble's figure is as out-of-fold as its members':
nothing is fitted, and each fold's threshold, recalibration and conformal sets are chosen on the members' averaged
calibration scores of that fold only, exactly as a single run chooses them.

The members must agree on everything the average needs (else :class:`EnsembleError` names the run, variant,
lesion and what differs): the cohort (``manifest_sha256``), each lesion's label and test fold, the calibration
lesions of each fold, and the ``evaluation`` settings that turn lesion scores into subject scores. Runs of
the same ``cv`` settings on the same manifest meet them whatever their models and training.

The ensemble folder is a run folder (``results.json``, ``predictions.csv``, ``calibration_predictions.csv``,
``report.html`` and figures), so ``compare`` and the report read it as any run; ``ensemble.json`` lists its
members. It holds no networks: ``export`` and ``explain`` work on the member runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit, logit

from breastfusion.config import (ConfigError, ExperimentConfig, dump_config, first_difference, load_config,
                                 select_variants)
from breastfusion.evaluation.repeats import with_repeat
from breastfusion.evaluation.summary import paired_delong, score_subjects
from breastfusion.experiment.run import evaluate_predictions, write_outputs
from breastfusion.experiment.run_folder import RunLayout
from breastfusion.strict_json import json_safe
from breastfusion.versions import library_versions

__all__ = ["EnsembleError", "COMBINE", "average_logits", "ensemble_runs"]

#: How member scores are combined (recorded in ``results.json``).
COMBINE = "mean_logit"

#: Probabilities are clipped this far from 0 and 1 before the logit (a float32 network can output exactly 1).
_EPS = 1e-7

_IDS = {"subject_id": str, "lesion_id": str}
_KEY = ["repeat", "fold", "lesion_id"]


class EnsembleError(ValueError):
    """The runs cannot be ensembled; the message names the run, variant, lesion or setting that differs."""


def average_logits(probs: np.ndarray) -> np.ndarray:
    """The probability of the mean logit of each row of ``probs`` (lesions x members); a missing score (NaN: a
    member that cannot score that lesion) is left out of its row's mean."""
    clipped = np.clip(np.asarray(probs, dtype=float), _EPS, 1 - _EPS)
    return expit(np.nanmean(logit(clipped), axis=1))


class _Member:
    """One member run as the ensemble reads it."""

    def __init__(self, root: Path):
        self.root = root
        layout = RunLayout(root)
        problem = layout.missing_file()
        if problem:
            raise EnsembleError(problem)
        if layout.ensemble.is_file():
            members = [str(m.get("run")) for m in json.loads(layout.ensemble.read_text()).get("members", [])]
            raise EnsembleError(f"{root} is itself an ensemble (of {', '.join(members)}); list its member runs "
                                "instead, so each run counts once")
        if not layout.calibration.is_file():
            raise EnsembleError(f"{layout.calibration} is missing: each fold's threshold is chosen on the members' "
                                "calibration scores, so every member needs it (rerun with this version)")
        try:
            self.config: ExperimentConfig = load_config(layout.config)
        except ConfigError as exc:
            raise EnsembleError(str(exc)) from None
        try:
            self.results = json.loads(layout.results.read_text())
        except json.JSONDecodeError as exc:
            raise EnsembleError(f"{layout.results}: not valid JSON ({exc})") from None
        self.predictions = with_repeat(pd.read_csv(layout.predictions, dtype=_IDS))
        self.calibration = with_repeat(pd.read_csv(layout.calibration, dtype=_IDS))
        self.variants = list(dict.fromkeys(self.predictions["variant"].astype(str)))

    def scores(self, variant: str) -> pd.DataFrame:
        """The member's subject scores of ``variant``, as its own run scored them (its ``evaluation``)."""
        pick = [frame[frame["variant"].astype(str) == variant] for frame in (self.predictions, self.calibration)]
        return score_subjects(*pick, self.config.evaluation)

    def rows(self, frame: pd.DataFrame, variant: str, what: str) -> pd.DataFrame:
        rows = frame[frame["variant"].astype(str) == variant].set_index(_KEY)
        if not rows.index.is_unique:
            raise EnsembleError(f"{self.root}: {what} of variant {variant!r} list lesion "
                                f"{rows.index[rows.index.duplicated()][0]} (repeat, fold, lesion) twice")
        return rows


def _chosen_variants(members: list[_Member], variants: Sequence[str] | None) -> list[str]:
    if variants:
        for member in members:
            lacking = [v for v in variants if v not in member.variants]
            if lacking:
                raise EnsembleError(f"{member.root} has no variant {lacking}; it holds {member.variants}")
        return list(variants)
    common = [v for v in members[0].variants if all(v in m.variants for m in members[1:])]
    if not common:
        raise EnsembleError("the runs share no variant name: " + "; ".join(f"{m.root}: {m.variants}"
                                                                           for m in members)
                            + " (choose them with --variants, or rename)")
    return common


def _check_members(members: list[_Member], allow_different_manifest: bool) -> None:
    first = members[0]
    for other in members[1:]:
        sha_a, sha_b = first.results.get("manifest_sha256"), other.results.get("manifest_sha256")
        if sha_a and sha_b and sha_a != sha_b and not allow_different_manifest:
            raise EnsembleError(f"the runs used different manifests: {first.root} records manifest_sha256 "
                                f"{sha_a[:12]}…, {other.root} records {sha_b[:12]}…; an ensemble averages each "
                                "lesion's scores, so the members need the same cohort (pass "
                                "--allow-different-manifest if only the file changed)")
        key = first_difference(first.config.evaluation, other.config.evaluation)
        if key:
            raise EnsembleError(f"evaluation.{key} is {getattr(first.config.evaluation, key)!r} in {first.root} but "
                                f"{getattr(other.config.evaluation, key)!r} in {other.root}; the ensemble scores "
                                "subjects one way: give the members the same evaluation settings")


def _combine(members: list[_Member], frames: list[pd.DataFrame], variant: str, what: str) -> pd.DataFrame:
    """Members' rows of one variant (``frames``, indexed by repeat, fold, lesion), checked to hold the same
    lesions with the same labels, with ``prob`` replaced by the mean logit."""
    first = frames[0]
    for member, frame in zip(members[1:], frames[1:]):
        only_first = first.index.difference(frame.index)
        only_other = frame.index.difference(first.index)
        if len(only_first) or len(only_other):
            where, lesion = (members[0].root, only_first[0]) if len(only_first) else (member.root, only_other[0])
            lesion_id = lesion[2]
            other_folds = [(m.root, f.xs(lesion_id, level="lesion_id").index.tolist())
                           for m, f in zip(members, frames) if lesion_id in f.index.get_level_values("lesion_id")]
            raise EnsembleError(
                f"{what} of variant {variant!r} differ: (repeat, fold, lesion) {lesion} is only in {where}; "
                f"(repeat, fold) of lesion {lesion_id!r} in each run: {other_folds}. The members need the same "
                "folds (the same cv settings and manifest) and calibration lesions (the same training.val_fraction, and "
                "the same cohort pooled into training, if any: cv.training_only_column)")
        y_first, y_other = first["y"].to_numpy(), frame.loc[first.index, "y"].to_numpy()
        if np.any(y_first != y_other):
            lesion = first.index[np.flatnonzero(y_first != y_other)[0]]
            raise EnsembleError(f"{what} of variant {variant!r}: lesion {lesion} is labelled "
                                f"{first.loc[lesion, 'y']} in {members[0].root} but {frame.loc[lesion, 'y']} in "
                                f"{member.root}")
    out = first.copy()
    out["prob"] = average_logits(np.column_stack([f.loc[first.index, "prob"].to_numpy() for f in frames]))
    if "modalities_used" in out:
        used = [f.loc[first.index, "modalities_used"].fillna("").astype(str) for f in frames]
        out["modalities_used"] = [";".join(dict.fromkeys(m for part in parts for m in part.split(";") if m))
                                  for parts in zip(*used)]
    if "split" in out:
        splits = [f.loc[first.index, "split"].astype(str) for f in frames]
        out["split"] = ["+".join(dict.fromkeys(parts)) for parts in zip(*splits)]
    return out.reset_index()


def _counts(predictions: pd.DataFrame) -> dict[str, int]:
    """The cohort counts the report shows, from the predictions (for members whose results.json has none)."""
    rows = predictions[predictions["repeat"] == predictions["repeat"].min()]
    return {"n_subjects": int(rows["subject_id"].nunique()), "n_lesions": int(rows["lesion_id"].nunique()),
            "n_malignant": int(rows.groupby("subject_id")["y"].max().sum())}


def ensemble_runs(runs: Sequence[str | Path], out: str | Path, *, variants: Sequence[str] | None = None,
                  name: str | None = None, allow_different_manifest: bool = False) -> dict[str, Any]:
    """Average the out-of-fold logits of finished runs and write the ensemble's run folder ``out``.

    Args:
        runs: two or more run folders on the same cohort and folds (see the module docstring).
        out: the ensemble's run folder (created; must not hold a run).
        variants: the variants to ensemble (each must be in every run; default: every variant name the runs share).
        name: the ensemble's name in its results and report (default: the members' names joined by ``+``).
        allow_different_manifest: accept different recorded manifest hashes (lesions and labels must still agree).

    Returns:
        The ensemble's ``results.json``: each variant's figures as a run reports them, plus ``ensemble``
        (``combine``, ``members``: each run, its name and each variant's AUC and CI) and, per variant,
        ``vs_members``: the paired DeLong test of the ensemble against each member's same variant.

    Raises:
        EnsembleError: fewer than two runs, the same run twice, ``out`` already a run folder, or members that
            disagree (the message says where).
    """
    started = time.perf_counter()
    roots = [Path(r) for r in runs]
    if len(roots) < 2:
        raise EnsembleError(f"an ensemble needs two or more runs, got {len(roots)}")
    resolved = [r.resolve() for r in roots]
    if len(set(resolved)) != len(resolved):
        raise EnsembleError(f"a run is listed twice: {[str(r) for r in roots]}")
    out = Path(out)
    if RunLayout(out).results.exists():
        raise EnsembleError(f"{out} already holds a run (results.json); choose another --out")
    members = [_Member(r) for r in roots]
    _check_members(members, allow_different_manifest)
    chosen = _chosen_variants(members, variants)

    predictions, calibration = [], []
    for variant in chosen:
        test = _combine(members, [m.rows(m.predictions, variant, "predictions.csv") for m in members], variant,
                        "the test lesions (predictions.csv)")
        calib = _combine(members, [m.rows(m.calibration, variant, "calibration_predictions.csv") for m in members],
                         variant, "each fold's calibration lesions (calibration_predictions.csv)")
        predictions.append(test)
        calibration.append(calib)
    predictions_frame = pd.concat(predictions, ignore_index=True)
    calibration_frame = pd.concat(calibration, ignore_index=True)
    columns = [c for c in members[0].predictions.columns if c in predictions_frame.columns]
    predictions_frame = predictions_frame[columns]
    calibration_frame = calibration_frame[[c for c in members[0].calibration.columns
                                           if c in calibration_frame.columns]]

    first = members[0]
    config = select_variants(first.config, chosen).model_copy(update={
        "name": name or "+".join(m.config.name for m in members)})
    layout = RunLayout(out)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(config, layout.config)
    predictions_frame.to_csv(layout.predictions, index=False)
    calibration_frame.to_csv(layout.calibration, index=False)

    evaluation, scores, extra = evaluate_predictions(predictions_frame, calibration_frame, config)
    member_entries = []
    for m in members:
        entries = {v: {k: m.results.get("variants", {}).get(v, {}).get(k) for k in ("auc", "auc_ci")}
                   for v in chosen}
        member_entries.append({"run": str(m.root), "name": m.config.name, "variants": entries})
    for variant, entry in evaluation["variants"].items():
        entry["vs_members"] = [
            {"run": str(m.root), **paired_delong(scores[variant], m.scores(variant),
                                                 names=(f"ensemble ({variant})", f"{m.root} ({variant})"))}
            for m in members]
    results: dict[str, Any] = {
        "name": config.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
        "manifest_sha256": first.results.get("manifest_sha256"),
        "cohort": first.results.get("cohort") or _counts(predictions_frame),
        "cv": config.cv.model_dump(),
        "ensemble": {"combine": COMBINE, "members": member_entries},
        "excluded_images": sorted({p for m in members for p in m.results.get("excluded_images") or []}),
        **evaluation,
    }
    layout.ensemble.write_text(json.dumps(json_safe(results["ensemble"]), indent=2))
    results["runtime_s"] = round(time.perf_counter() - started, 1)
    return write_outputs(results, scores, out, extra)
