"""Ablation studies: one factor at a time away from the full model, run as one shared experiment.

``expand_ablation`` turns a config's ``ablation`` grid into variants (the
config's own variants stay); ``run_experiment`` then trains each distinct
network once (:mod:`breastfusion.experiment.crossval`), so a grid costs much less
than its variants run one by one; ``ablation_table`` reads the run's results
into the table papers print: AUC [95% CI], accuracy, F1, sensitivity,
specificity and the DeLong p-value against the full model on the same subjects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from breastfusion.config import ExperimentConfig, VariantConfig, reference_variant
from breastfusion.experiment.run_folder import RunLayout

__all__ = ["expand_ablation", "ablation_table", "write_ablation", "to_markdown", "format_value", "format_p",
           "ABLATION_COLUMNS"]

ABLATION_COLUMNS = ["variant", "change", "modalities", "stage2", "n_subjects", "auc", "auc_ci_low", "auc_ci_high",
                    "accuracy", "f1", "sensitivity", "specificity", "delong_p"]


def _reference(config: ExperimentConfig) -> str:
    """The grid's reference; an ``ablation.reference`` naming no variant is an error here, not a fallback."""
    if config.ablation.reference is not None and config.ablation.reference not in config.variants:
        raise KeyError(f"ablation.reference {config.ablation.reference!r} is not a variant; expected one of "
                       f"{list(config.variants)}")
    return reference_variant(config)


def _with_override(base: VariantConfig, path: tuple[str, ...], value: Any) -> VariantConfig:
    model = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.model.items()}
    node = model
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return base.model_copy(update={"model": model})


def expand_ablation(config: ExperimentConfig) -> tuple[ExperimentConfig, dict[str, str]]:
    """The config with every ablation variant added, and what each variant changes.

    Each axis value that differs from the reference variant adds one variant, named after the change
    (``modalities=ultrasound``, ``mammography.attention=none``, ``fusion=gated``,
    ``ultrasound.encoder=resnet18``, ``stage2=svm``). A grid variant equal to one the config already
    lists is not added twice: the config's name is kept.

    Returns:
        (config with ``ablation.reference`` set and the variants added, ``{variant: change}``).

    Raises:
        KeyError: ``ablation.reference`` names no variant.
        ValueError: an axis changes a branch the reference does not have.
    """
    ref_name = _reference(config)
    ref = config.variant(ref_name)
    ref_model = config.variant_model(ref_name)
    grid = config.ablation
    candidates: list[tuple[str, VariantConfig]] = []
    for subset in grid.modalities:
        if tuple(subset) != tuple(ref.modalities):
            candidates.append((f"modalities={'+'.join(subset)}", ref.model_copy(update={"modalities": list(subset)})))
    for axis, values in (("attention", grid.attention), ("encoder", grid.encoder)):
        for branch, options in values.items():
            if branch not in ref.modalities:
                raise ValueError(f"ablation.{axis}.{branch}: the reference variant {ref_name!r} has no {branch} "
                                 f"branch (it has {ref.modalities})")
            for value in options:
                if value != getattr(getattr(ref_model, branch), axis):
                    candidates.append((f"{branch}.{axis}={value}", _with_override(ref, (branch, axis), value)))
    for value in grid.fusion:
        if value != ref_model.fusion:
            candidates.append((f"fusion={value}", _with_override(ref, ("fusion",), value)))
    for value in grid.stage2:
        if value != ref.stage2:
            candidates.append((f"stage2={value}", ref.model_copy(update={"stage2": value})))

    variants = {name: config.variant(name) for name in config.variants}
    changes = {name: ("reference" if name == ref_name else "") for name in variants}
    for name, variant in candidates:
        same = next((n for n, v in variants.items() if v == variant), None)
        if same is not None:
            changes[same] = changes[same] or name
            continue
        variants[name] = variant
        changes[name] = name
    expanded = config.model_copy(update={"variants": variants,
                                         "ablation": grid.model_copy(update={"reference": ref_name})})
    return ExperimentConfig.model_validate(expanded.model_dump()), changes


def ablation_table(results: dict[str, Any], changes: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per variant of a run's ``results.json``: the columns of ``ABLATION_COLUMNS``."""
    rows = []
    for name, v in results["variants"].items():
        t = v.get("threshold_metrics") or {}
        ci = v.get("auc_ci") or [None, None]
        rows.append({
            "variant": name, "change": (changes or {}).get(name, ""), "modalities": "+".join(v["modalities"]),
            "stage2": v.get("stage2", "none"), "n_subjects": v.get("n_subjects"), "auc": v.get("auc"),
            "auc_ci_low": ci[0], "auc_ci_high": ci[1], "accuracy": t.get("accuracy"), "f1": t.get("f1"),
            "sensitivity": t.get("sensitivity"), "specificity": t.get("specificity"),
            "delong_p": (v.get("delong") or {}).get("p"),
        })
    return pd.DataFrame(rows, columns=ABLATION_COLUMNS)


def format_value(value: Any, digits: int = 3) -> str:
    """A table cell: a float to ``digits`` places, "–" for missing."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_p(value: Any) -> str:
    """A DeLong p-value cell ("– (reference)" for the reference's own row)."""
    if value is None or value != value:
        return "– (reference)"
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def to_markdown(table: pd.DataFrame, *, title: str) -> str:
    """The ablation table as Markdown (AUC with its 95% bootstrap CI; p from the paired DeLong test)."""
    lines = [f"# {title}", "", "| variant | change | modalities | stage 2 | n | AUC [95% CI] | accuracy | F1 | "
             "sensitivity | specificity | DeLong p vs reference |", "|" + "---|" * 11]
    for r in table.itertuples():
        auc = f"{format_value(r.auc)} [{format_value(r.auc_ci_low)}, {format_value(r.auc_ci_high)}]"
        lines.append(f"| {r.variant} | {r.change or '–'} | {r.modalities} | {r.stage2} | {r.n_subjects} | {auc} | "
                     f"{format_value(r.accuracy)} | {format_value(r.f1)} | {format_value(r.sensitivity)} | {format_value(r.specificity)} | "
                     f"{format_p(r.delong_p)} |")
    lines += ["", "Subject level, out-of-fold. Accuracy, F1, sensitivity and specificity at each fold's Youden "
              "threshold chosen on its training folds. p: paired DeLong test against the reference variant on the "
              "same subjects (not corrected for multiple comparisons)."]
    return "\n".join(lines) + "\n"


def write_ablation(table: pd.DataFrame, out_dir: str | Path, *, title: str) -> tuple[Path, Path]:
    """Write ``ablation.csv`` and ``ablation.md`` into the run folder ``out_dir``."""
    layout = RunLayout(Path(out_dir))
    table.to_csv(layout.ablation_csv, index=False)
    layout.ablation_md.write_text(to_markdown(table, title=title))
    return layout.ablation_csv, layout.ablation_md
