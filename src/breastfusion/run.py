"""Run an experiment on a cohort and write its self-describing run folder.

A run folder holds:

* ``config.yaml``       the resolved configuration (every key, defaults included);
* ``preprocessing.json`` per-modality preprocessing parameters and any unreadable images left out;
* ``predictions.csv``   out-of-fold predictions: variant, fold, subject, lesion, label, probability;
* ``calibration_predictions.csv`` each fold's calibration scores (inner validation, or training in-sample);
* ``results.json``      every number in the report, under keys that say what they are;
* ``roc.png``           subject-level ROC curves of every variant (and the oracle on synthetic data);
* ``report.html``       a short self-contained report (images embedded);
* ``checkpoints/``      each fold's network, ``networks/{key}/fold{k}.safetensors`` (weights only), linked
  as ``{variant}/fold{k}.safetensors``; ``variants.json`` maps each variant to its network.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.progress import Progress
from sklearn.metrics import roc_auc_score

from breastfusion.ablation import ablation_table, write_ablation
from breastfusion.config import ExperimentConfig, dump_config
from breastfusion.data.manifest import MANIFEST_FILENAME, Cohort
from breastfusion.data.synthetic.cohort import Oracle, load_oracle
from breastfusion.evaluation.crossval import cross_validate
from breastfusion.evaluation.metrics import auc_with_ci, subject_level
from breastfusion.evaluation.summary import compare_variants, summarise_variant
from breastfusion.report.html import write_report
from breastfusion.report.plots import plot_roc

__all__ = ["run_experiment", "library_versions"]

_LIBRARIES = ("breastfusion", "torch", "timm", "lightning", "scikit-learn", "numpy", "pandas")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a result depends on, and Python's."""
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def reference_variant(config: ExperimentConfig) -> str:
    """The full model every variant is compared with: ``ablation.reference`` when set, else the first variant
    with the most modalities."""
    if config.ablation.reference in config.variants:
        return config.ablation.reference
    return max(config.variants, key=lambda name: len(config.modalities(name)))


def _first_repeat(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["repeat"] == 0] if "repeat" in frame else frame


def _stage2_importance(table: pd.DataFrame, variant: str) -> list[dict[str, Any]] | None:
    """Mean (over folds) test-fold AUC drop when one feature group of a stage-2 learner is permuted."""
    if table.empty or variant not in set(table["variant"]):
        return None
    rows = table[table["variant"] == variant].groupby("group", sort=False)["auc_drop"].agg(["mean", "std", "count"])
    return [{"group": g, "auc_drop": float(r["mean"]), "auc_drop_sd_over_folds": float(r["std"]),
             "n_folds": int(r["count"])} for g, r in rows.iterrows()]


def _variant_results(predictions: pd.DataFrame, calibration: pd.DataFrame, config: ExperimentConfig,
                     oracle: Oracle | None, cv=None) -> dict[str, Any]:
    variants: dict[str, Any] = {}
    full = reference_variant(config)
    predictions, calibration = _first_repeat(predictions), _first_repeat(calibration)
    for name in config.variants:
        modalities = config.modalities(name)
        subset = predictions[predictions["variant"] == name]
        subjects = subject_level(subset)
        summary = summarise_variant(subset, calibration[calibration["variant"] == name],
                                    n_boot=config.cv.bootstrap, seed=config.cv.seed)
        fold_auc = [float(roc_auc_score(g["y"], g["prob"])) for _, g in subset.groupby("fold")]
        entry = {"modalities": list(modalities), "stage2": config.variant(name).stage2,
                 "network": cv.networks.get(name) if cv is not None else None,
                 "stage2_feature_importance": _stage2_importance(cv.stage2_importance, name) if cv is not None
                 else None, **summary, "fold_auc": fold_auc,
                 "n_subjects": int(len(subjects)), "n_malignant": int(subjects["y"].sum()), "ceiling_auc": None,
                 "delong": None if name == full else compare_variants(predictions, name, full)}
        if oracle is not None:
            ceiling = oracle.posterior(tuple(modalities)).loc[subjects["subject_id"]]
            entry["ceiling_auc"] = float(roc_auc_score(subjects["y"], ceiling))
        variants[name] = entry
    return variants


def _json_safe(value: Any) -> Any:
    """NaN and infinities as null, so results.json is strict JSON."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


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
        ablation: ``{variant: what it changes}`` from :func:`~breastfusion.ablation.expand_ablation`; writes
            ``ablation.csv`` / ``ablation.md`` and an ablation table in the report.

    Returns:
        The content of ``results.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    dump_config(config, out / "config.yaml")

    cv = cross_validate(cohort, config, progress=progress, checkpoint_dir=out / "checkpoints")
    predictions, calibration = cv.predictions, cv.calibration
    predictions.to_csv(out / "predictions.csv", index=False)
    calibration.to_csv(out / "calibration_predictions.csv", index=False)
    (out / "preprocessing.json").write_text(json.dumps(
        {"params": cv.preprocessing, "excluded_images": cv.excluded_images}, indent=2))

    oracle = load_oracle(cohort.root)
    lesions = cohort.lesions
    results: dict[str, Any] = {
        "name": config.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
        "manifest_sha256": hashlib.sha256((cohort.root / MANIFEST_FILENAME).read_bytes()).hexdigest(),
        "cohort": {"root": str(cohort.root), "n_subjects": int(lesions["subject_id"].nunique()),
                   "n_lesions": int(len(lesions)), "n_malignant": int(lesions.groupby("subject_id")["y"].max().sum()),
                   "n_images": int(len(cohort.manifest)), "modalities": list(cohort.modalities)},
        "cv": config.cv.model_dump(),
        "preprocessing": cv.preprocessing,
        "excluded_images": cv.excluded_images,
        "level": "subject",
        "reference_variant": reference_variant(config),
        "variants": _variant_results(predictions, calibration, config, oracle, cv),
        "oracle_auc": None, "oracle_auc_ci": None, "modality_oracle_auc": None,
    }
    curves = {}
    predictions = _first_repeat(predictions)
    for name in config.variants:
        subjects = subject_level(predictions[predictions["variant"] == name])
        curves[name] = (subjects["y"].to_numpy(), subjects["prob"].to_numpy(), results["variants"][name]["auc"])
    if oracle is not None:
        subjects = subject_level(predictions[predictions["variant"] == next(iter(config.variants))])
        posterior = oracle.posterior().loc[subjects["subject_id"]].to_numpy()
        auc, ci = auc_with_ci(subjects["y"], posterior, n_boot=config.cv.bootstrap, seed=config.cv.seed)
        results.update(oracle_auc=auc, oracle_auc_ci=list(ci), modality_oracle_auc={
            m: float(roc_auc_score(subjects["y"], oracle.posterior((m,)).loc[subjects["subject_id"]]))
            for m in cohort.modalities})
        curves["oracle"] = (subjects["y"].to_numpy(), posterior, auc)

    if ablation is not None:
        table = ablation_table(_json_safe(results), ablation)
        write_ablation(table, out, title=f"{config.name}: ablation (reference: {reference_variant(config)})")
        results["ablation"] = table.to_dict(orient="records")
    plot_roc(curves, out / "roc.png")
    results["runtime_s"] = round(time.perf_counter() - started, 1)
    results = _json_safe(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False))
    write_report(results, roc_png=out / "roc.png", config_yaml=(out / "config.yaml").read_text(),
                 path=out / "report.html")
    return results
