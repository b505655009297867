"""``breastfusion ablate``: run a config's ablation grid as one shared experiment and write its table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from breastfusion.cli.common import console, default_out, fail, progress_bar

__all__ = ["ablate"]


def ablate(
    config: Annotated[Path, typer.Argument(help="Experiment YAML with an `ablation:` grid (e.g. configs/mpm_mu.yaml).")],
    dataset: Annotated[Optional[str], typer.Option(
        "--dataset", help="`synthetic`: render the config's synthetic cohort into OUT/cohort.")] = None,
    manifest: Annotated[Optional[Path], typer.Option("--manifest", help="Manifest folder (overrides the config's).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Fewer subjects (synthetic), epochs and bootstrap "
                                        "resamples.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default: runs/NAME-ablation-TIMESTAMP).")] = None,
    nested_inner_folds: Annotated[Optional[int], typer.Option(
        "--nested-inner-folds", min=2, help="Also choose the variant inside each outer training fold by an inner "
        "cross-validation with K folds, and report the chosen models' outer AUC beside the naive best "
        "(writes nested_selection.json; costs about K times the grid per outer fold).")] = None,
    executor: Annotated[Optional[str], typer.Option("--executor", help="local or ray (each network and fold a "
                                                    "Ray task); default: the config's execution.executor.")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster to join, e.g. auto.")] = None,
) -> None:
    """Run an ablation grid: each modality alone, attention off/ECA/CBAM per branch, each fusion, each encoder,
    each stage-2 learner vs stacking — one factor at a time away from the full model.

    Networks are trained once and shared between variants (a stage-2 learner reuses its network and its
    features; a modality subset reuses the branch it initialises). Writes the run folder with
    ablation.csv, ablation.md and the table in report.html.

    Picking the best row of that table and quoting its AUC is optimistic (the test folds chose it). With
    --nested-inner-folds K the choice is made again inside each outer fold, from its training subjects only
    (K grouped inner folds), and the chosen models' outer-fold AUC is reported (nested_selection.json).
    """
    from breastfusion.experiment.ablation import expand_ablation
    from breastfusion.config import ConfigError, load_config
    from breastfusion.data.manifest import ManifestError, load_cohort
    from breastfusion.experiment.demo import make_synthetic_cohort, quick_overrides
    from breastfusion.experiment.crossval import MissingModalityError
    from breastfusion.execution import ExecutionError, with_executor
    from breastfusion.experiment.run import run_experiment
    from breastfusion.experiment.run_folder import RunLayout

    if dataset not in (None, "synthetic"):
        fail(f"--dataset should be `synthetic` (for a real cohort give --manifest DIR), got {dataset!r}")
    if dataset and manifest:
        fail("give either --dataset synthetic or --manifest DIR, not both")
    try:
        cfg = load_config(config, manifest=manifest)
        if quick:
            cfg = quick_overrides(cfg)
        cfg, changes = expand_ablation(with_executor(cfg, executor, ray_address))
        out = out or default_out(f"{cfg.name}-ablation")
        if RunLayout(out).checkpoints.root.exists():
            fail(f"{out} already holds a run; choose another --out")
        with progress_bar() as progress:
            if dataset == "synthetic" or cfg.manifest is None:
                cohort = make_synthetic_cohort(cfg, RunLayout(out).cohort, progress=progress)
            else:
                cohort = load_cohort(cfg.manifest)
            results = run_experiment(cohort, cfg, out, progress=progress, ablation=changes)
            nested = _nested(cohort, cfg, out, nested_inner_folds, progress) if nested_inner_folds else None
    except (ConfigError, ManifestError, MissingModalityError, FileNotFoundError, KeyError, ValueError,
            ExecutionError) as exc:
        fail(str(exc).strip("'\""))
    console.print(_ablation_table(results))
    if nested is not None:
        console.print(_nested_table(nested))
    written = "ablation.csv, ablation.md, report.html" + (", nested_selection.json" if nested else "")
    console.print(f"Run folder: [b]{out}[/b] ({written}) · {results['runtime_s']:.0f} s")


def _nested(cohort, config, out: Path, inner_folds: int, progress) -> dict:
    """Nested selection among every variant of the run, on the run's own outer folds (its predictions reused)."""
    import json

    import pandas as pd

    from breastfusion.experiment.nested import nested_selection
    from breastfusion.experiment.run_folder import RunLayout

    layout = RunLayout(out)
    read = {"dtype": {"subject_id": str, "lesion_id": str}}
    selection = nested_selection(cohort, config, inner_folds=inner_folds,
                                 outer_predictions=pd.read_csv(layout.predictions, **read),
                                 outer_calibration=pd.read_csv(layout.calibration, **read),
                                 progress=progress)
    layout.nested_selection.write_text(json.dumps(selection.summary, indent=2))
    return selection.summary


def _nested_table(summary: dict):
    """Per outer fold the chosen variant and its inner AUC; then the selected and the naive figures."""
    from rich.table import Table

    from breastfusion.experiment.ablation import format_value as f

    table = Table(title=f"Nested selection ({summary['inner_folds']} inner folds per outer fold, subject level)")
    for column in ("outer fold", "chosen", "inner AUC of chosen", "best other inner AUC"):
        table.add_column(column, justify="left" if column == "chosen" else "right")
    for fold in summary["folds"]:
        others = [auc for name, auc in fold["inner_auc"].items() if name != fold["chosen"]]
        table.add_row(str(fold["fold"]), fold["chosen"], f(fold["inner_auc"][fold["chosen"]]),
                      f(max(others)) if others else "–")
    sel, naive = summary["selected"], summary["naive"]
    table.caption = (f"selected (chosen inside each training fold): AUC {f(sel['auc'])} "
                     f"[{f(sel['auc_ci'][0])}, {f(sel['auc_ci'][1])}] · naive best on the test folds "
                     f"({naive['variant']}): {f(naive['auc'])} · optimism {f(summary['optimism'])}")
    return table


def _ablation_table(results: dict):
    """The ablation as a rich table (the same numbers as ablation.csv)."""
    from rich.table import Table

    from breastfusion.experiment.ablation import format_p, format_value

    table = Table(title=f"{results['name']}: ablation vs {results['reference_variant']} (subject level, out-of-fold)")
    for column in ("variant", "modalities", "stage 2", "AUC [95% CI]", "F1", "sens", "spec", "DeLong p"):
        table.add_column(column, justify="left" if column in ("variant", "modalities", "stage 2") else "right")

    f = format_value
    for row in results["ablation"]:
        table.add_row(row["variant"], row["modalities"], row["stage2"],
                      f"{f(row['auc'])} [{f(row['auc_ci_low'])}, {f(row['auc_ci_high'])}]", f(row["f1"]),
                      f(row["sensitivity"]), f(row["specificity"]), format_p(row["delong_p"]))
    return table
