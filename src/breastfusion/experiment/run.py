"""Run an experiment on a cohort and write its self-describing run folder.

The folder's layout (every file and what it holds) is :mod:`breastfusion.experiment.run_folder`'s.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.progress import Progress
from sklearn.metrics import roc_auc_score

from breastfusion.experiment.ablation import ablation_table, write_ablation
from breastfusion.config import ExperimentConfig, dump_config, reference_variant
from breastfusion.data.manifest import MANIFEST_FILENAME, Cohort
from breastfusion.data.synthetic.cohort import Oracle, load_oracle
from breastfusion.experiment.crossval import cross_validate
from breastfusion.experiment.run_folder import RunLayout
from breastfusion.evaluation.curves import roc_band
from breastfusion.evaluation.metrics import auc_with_ci
from breastfusion.evaluation.repeats import first_repeat
from breastfusion.evaluation.summary import paired_delong, score_subjects, summarise_scores
from breastfusion.report.cohort import cohort_summary
from breastfusion.report.figures import write_figures
from breastfusion.report.html import write_report
from breastfusion.strict_json import json_safe, write_json
from breastfusion.versions import library_versions

__all__ = ["run_experiment", "library_versions", "evaluate_predictions", "write_outputs", "write_results"]


def _stage2_importance(table: pd.DataFrame, variant: str) -> list[dict[str, Any]] | None:
    """Mean (over folds) test-fold AUC drop when one feature group of a stage-2 learner is permuted."""
    if table.empty or variant not in set(table["variant"]):
        return None
    rows = table[table["variant"] == variant].groupby("group", sort=False)["auc_drop"].agg(["mean", "std", "count"])
    return [{"group": g, "auc_drop": float(r["mean"]), "auc_drop_sd_over_folds": float(r["std"]),
             "n_folds": int(r["count"])} for g, r in rows.iterrows()]


def _variant_results(predictions: pd.DataFrame, calibration: pd.DataFrame, config: ExperimentConfig,
                     oracle: Oracle | None) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """Each variant's results entry, and its subject scores (one row per repeat and subject)."""
    full = reference_variant(config)
    scores = {name: score_subjects(predictions[predictions["variant"] == name],
                                   calibration[calibration["variant"] == name], config.evaluation)
              for name in config.variants}
    variants: dict[str, Any] = {}
    for name in config.variants:
        modalities = config.modalities(name)
        subjects = first_repeat(scores[name])
        source = calibration.loc[calibration["variant"] == name, "split"] if "split" in calibration else None
        summary = summarise_scores(scores[name], n_boot=config.cv.bootstrap, seed=config.cv.seed,
                                   evaluation=config.evaluation,
                                   calibration_source=sorted(set(source)) if source is not None else None)
        entry = {"modalities": list(modalities), **summary,
                 "n_subjects": int(len(subjects)), "n_malignant": int(subjects["y"].sum()), "ceiling_auc": None,
                 "delong": None if name == full else
                 {"vs": full, **paired_delong(scores[name], scores[full], names=(name, full))}}
        if oracle is not None:
            ceiling = oracle.posterior(tuple(modalities)).loc[subjects["subject_id"]]
            entry["ceiling_auc"] = float(roc_auc_score(subjects["y"], ceiling))
        variants[name] = entry
    return variants, scores


_Curve = tuple[np.ndarray, np.ndarray, float]  # (y, score, auc) of one ROC curve


def evaluate_predictions(predictions: pd.DataFrame, calibration: pd.DataFrame, config: ExperimentConfig,
                         oracle: Oracle | None = None, modalities: tuple[str, ...] = (),
                         ) -> tuple[dict[str, Any], dict[str, pd.DataFrame], dict[str, _Curve]]:
    """The evaluation part of ``results.json`` from out-of-fold and calibration predictions.

    Args:
        predictions: out-of-fold lesion predictions of every variant (``predictions.csv``).
        calibration: each fold's calibration predictions (``calibration_predictions.csv``).
        config: the experiment (variants, ``evaluation``, ``cv.bootstrap`` and ``cv.seed``).
        oracle: the synthetic cohort's oracle, if any.
        modalities: the cohort's modalities, for ``modality_oracle_auc``.

    Returns:
        ``(results, scores, extra_curves)``: the keys ``level``, ``evaluation``,
        ``reference_variant``, ``variants``, ``roc_band``, ``oracle_auc``, ``oracle_auc_ci``,
        ``modality_oracle_auc``; each variant's subject scores; the oracle's ROC curve (if any).
    """
    full = reference_variant(config)
    variants, scores = _variant_results(predictions, calibration, config, oracle)
    reference = first_repeat(scores[full])
    band = roc_band(reference["y"].to_numpy(), reference["prob"].to_numpy(), n_boot=config.cv.bootstrap,
                    seed=config.cv.seed)
    results: dict[str, Any] = {
        "level": "subject", "evaluation": config.evaluation.model_dump(), "reference_variant": full,
        "variants": variants, "roc_band": {"variant": full, **band},
        "oracle_auc": None, "oracle_auc_ci": None, "modality_oracle_auc": None}
    extra = {}
    if oracle is not None:
        subjects = first_repeat(scores[next(iter(config.variants))])
        posterior = oracle.posterior().loc[subjects["subject_id"]].to_numpy()
        auc, ci = auc_with_ci(subjects["y"], posterior, n_boot=config.cv.bootstrap, seed=config.cv.seed)
        results.update(oracle_auc=auc, oracle_auc_ci=list(ci), modality_oracle_auc={
            m: float(roc_auc_score(subjects["y"], oracle.posterior((m,)).loc[subjects["subject_id"]]))
            for m in modalities})
        extra["oracle"] = (subjects["y"].to_numpy(), posterior, auc)
    return results, scores, extra


def write_outputs(results: dict[str, Any], scores: dict[str, pd.DataFrame], out: Path,
                  extra_curves: dict[str, _Curve] | None = None) -> dict[str, Any]:
    """Draw the figures, then write ``results.json`` and ``report.html`` into the run folder ``out``.

    Returns:
        The results as written (strict JSON: NaN as null).
    """
    layout = RunLayout(out)
    figures = write_figures(results, scores, out, extra_curves=extra_curves)
    results = write_results(results, layout)
    write_report(results, roc_png=figures.pop("roc"), config_yaml=layout.config.read_text(),
                 path=layout.report, figures=figures)
    return results


def write_results(results: dict[str, Any], layout: RunLayout) -> dict[str, Any]:
    """Write the run folder's ``results.json`` with :func:`write_json` (every writer of that file goes here).

    Returns:
        The results as written.
    """
    return write_json(layout.results, results)


def localisation_summary(boxes: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per ``roi: predicted`` modality, how well the fold localisers found the held-out lesions: the IoU of each
    box with the reader's mask box (median, share >= 0.5), over the first repeat's test images."""
    out = {}
    for modality, rows in boxes.groupby("modality"):
        iou = rows.loc[(rows["repeat"] == 0) & (rows["split"] == "test"), "iou"].dropna().to_numpy()
        out[str(modality)] = {"n_images": int(len(iou)),
                              "median_iou": float(np.median(iou)) if len(iou) else None,
                              "share_iou_at_least_0.5": float(np.mean(iou >= 0.5)) if len(iou) else None,
                              "boxes": "localiser_boxes.csv"}
    return out


def run_experiment(
    cohort: Cohort, config: ExperimentConfig, out_dir: str | Path, *, progress: Progress | None = None,
    ablation: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Cross-validate every variant of ``config`` on ``cohort`` and write the run folder.

    On a synthetic cohort (a folder with ``truth.csv``) the results also carry
    the oracle AUC and each variant's ceiling.

    Args:
        cohort: a validated cohort.
        config: the experiment.
        out_dir: the run folder (created).
        progress: a rich Progress for long steps.
        ablation: ``{variant: what it changes}`` from :func:`~breastfusion.experiment.ablation.expand_ablation`; writes
            ``ablation.csv`` / ``ablation.md`` and an ablation table in the report.

    Returns:
        The content of ``results.json``.
    """
    out = Path(out_dir)
    layout = RunLayout(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    dump_config(config, layout.config)

    cv = cross_validate(cohort, config, progress=progress, checkpoint_dir=layout.checkpoints.root)
    predictions, calibration = cv.predictions, cv.calibration
    predictions.to_csv(layout.predictions, index=False)
    calibration.to_csv(layout.calibration, index=False)
    layout.preprocessing.write_text(json.dumps(
        {"params": cv.preprocessing, "excluded_images": cv.excluded_images}, indent=2))

    oracle = load_oracle(cohort.root)
    evaluation, scores, extra_curves = evaluate_predictions(predictions, calibration, config, oracle,
                                                            cohort.modalities)
    results: dict[str, Any] = {
        "name": config.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
        "manifest_sha256": hashlib.sha256((cohort.root / MANIFEST_FILENAME).read_bytes()).hexdigest(),
        "cohort": cohort_summary(cohort, training_only_column=config.cv.training_only_column),
        "cv": config.cv.model_dump(),
        "preprocessing": cv.preprocessing,
        "excluded_images": cv.excluded_images,
        **evaluation,
    }
    for name, entry in results["variants"].items():
        entry.update(stage2=config.variant(name).stage2, network=cv.networks.get(name),
                     stage2_feature_importance=_stage2_importance(cv.stage2_importance, name))
    if not cv.localiser_boxes.empty:
        cv.localiser_boxes.to_csv(layout.localiser_boxes, index=False)
        results["localisation"] = localisation_summary(cv.localiser_boxes)
    if ablation is not None:
        table = ablation_table(json_safe(results), ablation)
        write_ablation(table, out, title=f"{config.name}: ablation (reference: {reference_variant(config)})")
        results["ablation"] = table.to_dict(orient="records")
    results["runtime_s"] = round(time.perf_counter() - started, 1)
    return write_outputs(results, scores, out, extra_curves)
