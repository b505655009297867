"""The ``breastfusion`` command line: one verb per job.

Heavy libraries (torch, timm, Lightning) are imported inside the verbs, so
``--help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from breastfusion import __version__
from breastfusion.cli.ablation import ablate
from breastfusion.cli.common import console, default_out, fail, progress_bar
from breastfusion.cli.data import app as data_app, cache_app  # sub-apps; heavy imports stay inside the verbs
from breastfusion.cli.models import app as models_app

app = typer.Typer(
    name="breastfusion",
    help="Multimodal breast-lesion classification: mammography + ultrasound + clinical data → benign vs malignant.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"breastfusion {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """Multimodal breast-lesion classification: mammography + ultrasound + clinical data."""


def _results_table(results: dict[str, Any]) -> Table:
    synthetic = results.get("oracle_auc") is not None
    table = Table(title=f"{results['name']}: subject-level AUC, out-of-fold ({results['cv']['n_splits']}-fold CV)")
    for column in ("variant", "modalities", "AUC", "95% CI") + (("ceiling",) if synthetic else ()):
        table.add_column(column, justify="left" if column in ("variant", "modalities") else "right")
    for name, v in results["variants"].items():
        row = [name, " + ".join(v["modalities"]), f"{v['auc']:.3f}", f"{v['auc_ci'][0]:.3f} – {v['auc_ci'][1]:.3f}"]
        if synthetic:
            row.append(f"{v['ceiling_auc']:.3f}")
        table.add_row(*row)
    if synthetic:
        lo, hi = results["oracle_auc_ci"]
        table.add_row("[i]oracle[/i]", "all latents", f"[b]{results['oracle_auc']:.3f}[/b]", f"{lo:.3f} – {hi:.3f}",
                      "")
    return table


@app.command()
def demo(
    quick: Annotated[bool, typer.Option("--quick", help="A smaller cohort and fewer epochs (under 2 minutes).")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default: runs/demo-TIMESTAMP).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the cohort, the folds and training.")] = 0,
) -> None:
    """Generate a synthetic multimodal cohort and cross-validate mammography, ultrasound, clinical and fused models.

    Prints each variant's AUC with a 95% bootstrap CI beside the oracle (the
    Bayes-optimal AUC on that cohort) and writes a run folder with the config,
    predictions, results.json, roc.png and report.html.
    """
    from breastfusion.experiment.demo import run_demo

    out = out or default_out("demo-quick" if quick else "demo")
    with progress_bar() as progress:
        results = run_demo(out, quick=quick, seed=seed, progress=progress)
    console.print(_results_table(results))
    console.print(f"Run folder: [b]{out}[/b] (report: {out / 'report.html'}) · {results['runtime_s']:.0f} s")


@app.command()
def run(
    config: Annotated[Optional[Path], typer.Argument(help="Experiment YAML (default: the demo's settings).")] = None,
    manifest: Annotated[Optional[Path], typer.Option("--manifest", help="Manifest folder (overrides the config's).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default: runs/NAME-TIMESTAMP).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Decode and preprocess every image again.")] = False,
    exclude_unreadable: Annotated[bool, typer.Option(
        "--exclude-unreadable", help="Leave unreadable images out (listed in preprocessing.json).")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out: finished "
                                         "folds are kept, a running fold restarts from its last epoch.")] = False,
    variants: Annotated[Optional[str], typer.Option(
        "--variants", help="Run only these variants of the config (comma-separated names), e.g. the image-only "
        "arm on a cohort without clinical data.")] = None,
    executor: Annotated[Optional[str], typer.Option("--executor", help="local (this process) or ray (each "
                                                    "network and fold a Ray task); default: the config's "
                                                    "execution.executor.")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster to join, e.g. auto "
                                                       "(default: execution.address).")] = None,
) -> None:
    """Cross-validate the variants of an experiment on a manifest folder and write a run folder."""
    from breastfusion.config import ConfigError, load_config, select_variants
    from breastfusion.execution import ExecutionError, same_experiment, with_executor
    from breastfusion.data.manifest import ManifestError
    from breastfusion.experiment.crossval import MissingModalityError
    from breastfusion.experiment.ensemble_recipe import is_ensemble_recipe
    from breastfusion.experiment.run import run_experiment
    from breastfusion.experiment.run_ensemble import EnsembleError
    from breastfusion.experiment.run_folder import RunLayout

    try:
        if is_ensemble_recipe(config):
            _run_recipe(config, manifest=manifest, out=out, no_cache=no_cache, exclude_unreadable=exclude_unreadable,
                        resume=resume, variants=variants, executor=executor, ray_address=ray_address)
            return
        cfg = load_config(config, **_data_overrides(manifest, no_cache, exclude_unreadable))
        if variants:
            cfg = select_variants(cfg, _names(variants))
        cfg = with_executor(cfg, executor, ray_address)
        if out is not None and RunLayout(out).checkpoints.root.exists() and not resume:
            fail(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        if resume and out is not None and RunLayout(out).config.is_file() and not same_experiment(
                load_config(RunLayout(out).config), cfg):
            fail(f"--resume: the configuration differs from the one in {RunLayout(out).config}; "
                 f"resume with that file (`breastfusion run {out}/config.yaml --resume --out {out}`)")
        cohort = _run_cohort(cfg.manifest, "config")
        out = out or default_out(cfg.name)
        with progress_bar() as progress:
            results = run_experiment(cohort, cfg, out, progress=progress)
    except (ConfigError, ManifestError, MissingModalityError, FileNotFoundError, ExecutionError,
            EnsembleError) as exc:
        fail(str(exc))
    console.print(_results_table(results))
    console.print(f"Run folder: [b]{out}[/b]")


def _data_overrides(manifest: Path | None, no_cache: bool, exclude_unreadable: bool) -> dict:
    """``run``'s data flags as config overrides (``None``: keep the config's value)."""
    return {"manifest": manifest, "cache": False if no_cache else None,
            "exclude_unreadable": True if exclude_unreadable else None}


def _names(option: str) -> list[str]:
    """A comma-separated option as its names."""
    return [v.strip() for v in option.split(",") if v.strip()]


def _run_cohort(manifest: Path | None, where: str):
    """The cohort a run trains on; a clear failure when neither ``--manifest`` nor the config/recipe names one."""
    from breastfusion.data.manifest import load_cohort

    if manifest is None:
        fail(f"no manifest: give --manifest DIR or set `manifest:` in the {where} "
             "(or run `breastfusion synthetic --out DIR` to make one)")
    return load_cohort(manifest)


def _run_recipe(path: Path, *, manifest: Path | None, out: Path | None, no_cache: bool, exclude_unreadable: bool,
                resume: bool, variants: str | None, executor: str | None, ray_address: str | None) -> None:
    """``run`` of an ensemble recipe: each member config into ``OUT/members/NAME``, then their ensemble in ``OUT``
    (:mod:`breastfusion.experiment.ensemble_recipe`). Errors propagate to ``run``'s handler."""
    from breastfusion.execution import with_executor
    from breastfusion.experiment.ensemble_recipe import load_ensemble_recipe, member_dir, run_ensemble_recipe
    from breastfusion.experiment.run_folder import RunLayout

    recipe = load_ensemble_recipe(path, **_data_overrides(manifest, no_cache, exclude_unreadable))
    if variants:
        recipe = recipe.with_variants(_names(variants))
    recipe = recipe.model_copy(update={"members": {name: with_executor(cfg, executor, ray_address)
                                                   for name, cfg in recipe.members.items()}})
    if out is not None and RunLayout(out).results.exists():
        fail(f"{out} already holds a finished run (results.json); choose another --out")
    if out is not None and member_dir(out, "").exists() and not resume:
        fail(f"{out} already holds the members of a recipe run; pass --resume to continue it "
             f"(`breastfusion run {path} --resume --out {out}`) or choose another --out")
    cohort = _run_cohort(recipe.manifest, "recipe")
    out = out or default_out(recipe.name)
    with progress_bar() as progress:
        results = run_ensemble_recipe(cohort, recipe, out, progress=progress)
    console.print(_ensemble_table(results))
    console.print(f"Run folder: [b]{out}[/b] (members: {member_dir(out, '')}; report: {out / 'report.html'})")


@app.command()
def synthetic(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the cohort to.")],
    n_subjects: Annotated[int, typer.Option("--n", help="Number of subjects.")] = 600,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    prevalence: Annotated[float, typer.Option("--prevalence", help="P(malignant).")] = 0.42,
    us_frames: Annotated[int, typer.Option("--us-frames", help="Ultrasound frames per lesion.")] = 1,
    missing_rate: Annotated[float, typer.Option("--missing-rate", help="Chance a modality is missing.")] = 0.0,
) -> None:
    """Write a synthetic cohort (PNG images, manifest.csv, clinical.csv, truth.csv) to a folder."""
    from breastfusion.data.synthetic.cohort import generate_cohort

    try:
        cohort = generate_cohort(out, n_subjects=n_subjects, seed=seed, prevalence=prevalence,
                                 us_frames=us_frames, missing_rate=missing_rate)
    except ValueError as exc:
        fail(str(exc))
    auc = ", ".join(f"{m} {a:.3f}" for m, a in cohort.modality_oracle_auc.items())
    console.print(f"Wrote {len(cohort.manifest)} images of {n_subjects} subjects to {out}\n"
                  f"oracle AUC {cohort.oracle_auc:.3f} (per modality: {auc})")


@app.command()
def explain(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (from `breastfusion demo` or `breastfusion run`).")],
    subjects: Annotated[Optional[list[str]], typer.Option(
        "--subjects", help="Subject IDs to draw heatmaps for (repeat, or comma-separate); default: the most "
        "confident correct and misclassified cases.")] = None,
    method: Annotated[str, typer.Option("--method", help="scorecam, gradcam or gradcam++.")] = "scorecam",
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for overlays and tables "
                                                "(default: RUN/explain).")] = None,
    variant: Annotated[Optional[str], typer.Option("--variant", help="Variant to explain (default: the one "
                                                   "with the most modalities).")] = None,
    target_layer: Annotated[Optional[str], typer.Option(
        "--target-layer", help="CAM layer inside the encoder, e.g. backbone.layer3 or final; per modality as "
        "ultrasound=final,mammography=backbone.layer3 (default: chosen per architecture).")] = None,
    n_cases: Annotated[int, typer.Option("--n-cases", help="Gallery cases per side when --subjects is not "
                                         "given.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed of random baselines and shuffles.")] = 0,
) -> None:
    """Explain a run: heatmaps, modality contributions (Shapley), clinical importance, faithfulness.

    Each subject is explained by the fold network that did not see it. Writes
    overlays and tables to the output folder and adds `explanations` to the
    run's results.json and a gallery to its report.html.
    """
    from breastfusion.explain.runner import explain_run, parse_target_layers
    from breastfusion.experiment.run_artifacts import RunFolderError

    ids = [s.strip() for item in subjects or [] for s in item.split(",") if s.strip()] or None
    try:
        with progress_bar() as progress:
            result = explain_run(run_dir, subjects=ids, method=method, out=out, variant=variant,
                                 target_layers=parse_target_layers(target_layer), n_cases=n_cases, seed=seed,
                                 progress=progress)
    except (RunFolderError, ValueError, KeyError, FileNotFoundError) as exc:
        fail(str(exc).strip("'\""))
    shares = result["contribution"]["share_percent"]
    console.print(f"{result['variant']}: modality contribution " +
                  " / ".join(f"{m} {v:.0f}%" for m, v in shares.items()))
    if result["contribution"].get("note"):
        console.print(f"[yellow]note:[/yellow] {result['contribution']['note']}")
    for row in (result.get("faithfulness") or {}).get("table", []):
        console.print(f"  {row['method']:<9} {row['modality']:<11} energy in mask {row['energy_in_mask']:.3f}  "
                      f"pointing game {row['pointing_game']:.2f}  (n={row['n']})")
    console.print(f"Explanations: [b]{result['out_dir']}[/b] · report: {Path(run_dir) / 'report.html'} · "
                  f"{result['runtime_s']:.0f} s")


def _comparison_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"Paired DeLong test, subject level ({result['n_subjects']} subjects in common, "
                        f"{result['n_malignant']} malignant)")
    for column in ("", "run", "variant", "AUC", "DeLong 95% CI"):
        table.add_column(column, justify="right" if column in ("AUC", "DeLong 95% CI") else "left")
    for key in ("a", "b"):
        side = result[key]
        lo, hi = side["auc_ci_delong"]
        table.add_row(key.upper(), side["run"], side["variant"], f"{side['auc']:.3f}", f"{lo:.3f} – {hi:.3f}")
    lo, hi = result["difference_ci"]
    table.add_row("A − B", "", "", f"[b]{result['auc_difference']:+.3f}[/b]", f"{lo:+.3f} – {hi:+.3f}")
    return table


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="First run folder.")],
    run_b: Annotated[Path, typer.Argument(help="Second run folder (may be the same folder, with another variant).")],
    variant_a: Annotated[Optional[str], typer.Option("--variant-a", help="Variant of RUN_A (default: its "
                                                     "reference variant).")] = None,
    variant_b: Annotated[Optional[str], typer.Option("--variant-b", help="Variant of RUN_B (default: its "
                                                     "reference variant).")] = None,
    json_file: Annotated[Optional[Path], typer.Option("--json", help="Also write the result as JSON.")] = None,
    allow_different_manifest: Annotated[bool, typer.Option(
        "--allow-different-manifest", help="Compare even when the runs recorded different manifest hashes "
        "(labels of the common subjects must still agree).")] = False,
) -> None:
    """Paired DeLong test of two runs' (or variants') subject-level AUCs on the subjects both predicted."""
    import json

    from breastfusion.evaluation.compare import RunComparisonError, compare_runs

    try:
        result = compare_runs(run_a, run_b, variant_a=variant_a, variant_b=variant_b,
                              allow_different_manifest=allow_different_manifest)
    except RunComparisonError as exc:
        fail(str(exc))
    console.print(_comparison_table(result))
    console.print(f"z = {result['z']:.3f}, p = {result['p']:.3g} (two-sided)"
                  + (f" · left out: {result['n_only_a']} subjects only in A, {result['n_only_b']} only in B"
                     if result["n_only_a"] or result["n_only_b"] else ""))
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(result, indent=2))
        console.print(f"JSON: {json_file}")

def _ensemble_table(results: dict[str, Any]) -> Table:
    members = results["ensemble"]["members"]
    table = Table(title=f"{results['name']}: mean logit of {len(members)} runs, subject-level AUC, out-of-fold "
                        f"({results['cv']['n_splits']}-fold CV)")
    table.add_column("variant")
    table.add_column("ensemble AUC [95% CI]", justify="right")
    for j in range(len(members)):
        table.add_column(f"run {chr(65 + j)}: AUC (ensemble − it, DeLong p)", justify="right")
    table.caption = " · ".join(f"{chr(65 + j)}: {m['name']} ({m['run']})" for j, m in enumerate(members))
    for name, v in results["variants"].items():
        row = [name, f"[b]{v['auc']:.3f}[/b] ({v['auc_ci'][0]:.3f} – {v['auc_ci'][1]:.3f})"]
        for test in v["vs_members"]:
            row.append(f"{test['auc_b']:.3f} (Δ {test['auc_difference']:+.3f}, p {test['p']:.2g})")
        table.add_row(*row)
    return table


@app.command()
def ensemble(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run folders on the same cohort and folds.")],
    out: Annotated[Path, typer.Option("--out", help="The ensemble's run folder (created).")],
    variants: Annotated[Optional[str], typer.Option(
        "--variants", help="Variants to ensemble (comma-separated; default: every variant the runs share).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="The ensemble's name (default: the members' names "
                                                "joined by +).")] = None,
    allow_different_manifest: Annotated[bool, typer.Option(
        "--allow-different-manifest", help="Accept runs that recorded different manifest hashes (their lesions, "
        "folds and labels must still agree).")] = False,
) -> None:
    """Average finished runs' out-of-fold logits, fold by fold, and write the ensemble's run folder and report.

    E.g. an ImageNet network on the whole frame with a from-scratch one on the localiser's crop: each lesion's
    score is the mean of the members' logits on the same held-out fold, and each fold's threshold is chosen on
    the members' averaged calibration scores of that fold. Prints each variant's AUC beside each member's, with
    the paired DeLong test of the ensemble against it.
    """
    from breastfusion.experiment.run_ensemble import EnsembleError, ensemble_runs

    try:
        results = ensemble_runs(runs, out, name=name, allow_different_manifest=allow_different_manifest,
                                variants=[v.strip() for v in variants.split(",") if v.strip()] if variants else None)
    except (EnsembleError, FileNotFoundError) as exc:
        fail(str(exc))
    console.print(_ensemble_table(results))
    console.print(f"Ensemble folder: [b]{out}[/b] (report: {out / 'report.html'})")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (from `breastfusion run` or `breastfusion demo`).")],
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to create (absent or empty).")],
    variant: Annotated[Optional[str], typer.Option("--variant", help="Variant to export (default: the run's "
                                                   "reference variant).")] = None,
    onnx: Annotated[bool, typer.Option("--onnx", help="Also write each fold network as ONNX (fold{k}.onnx), for "
                                       "`predict --runtime onnx` (pip install 'breastfusion\\[onnx]').")] = False,
    allow_outside_root: Annotated[bool, typer.Option(
        "--allow-outside-root",
        help="Accept image paths in the run's cohort manifest that lie outside the cohort folder (a run made with "
             "Experiment.fit on a manifest DataFrame, or a manifest pointing at a shared image store). Export reads "
             "the cohort only to refit clinical preprocessors that an older run did not save. Off by "
             "default: a cohort folder is expected to hold its images, so a manifest cannot make the export read "
             "files elsewhere on the machine (e.g. ../../ paths) and the folder stays self-contained.")] = False,
) -> None:
    """Export a run's fitted variant as a bundle: fold networks, clinical preprocessors, stage-2 learners, calibration.

    The bundle is safe to load (safetensors and skops, never pickle) and checked
    by sha256; `breastfusion predict BUNDLE COHORT_DIR` applies it to new cases.
    The run's cohort must still be where the run found it.
    """
    from breastfusion.bundle import BundleError, export_bundle, load_bundle
    from breastfusion.config import ConfigError
    from breastfusion.data.manifest import ManifestError
    from breastfusion.onnx_export import OnnxUnavailableError
    from breastfusion.experiment.run_artifacts import RunFolderError

    try:
        export_bundle(run_dir, out, variant=variant, onnx=onnx, allow_outside_root=allow_outside_root)
        meta = load_bundle(out).meta
    except (BundleError, RunFolderError, ConfigError, FileNotFoundError, OnnxUnavailableError) as exc:
        fail(str(exc))
    except ManifestError as exc:  # the run's cohort, refitting the clinical preprocessors
        outside = "resolves outside" in str(exc) and not allow_outside_root
        fail(f"the run's cohort: {exc}" + ("\nIf the run was made on these images where they are (e.g. "
                                             "Experiment.fit on a manifest DataFrame), pass --allow-outside-root."
                                             if outside else ""))
    metrics = meta["metrics"]
    lo, hi = metrics["auc_ci"] or (float("nan"), float("nan"))
    networks = (f"{len(meta['members'])} runs x {meta['n_folds']} fold networks" if "members" in meta
                else f"{meta['n_folds']} fold networks")
    console.print(f"Bundle: [b]{out}[/b] · variant {meta['variant']} ({' + '.join(meta['modalities'])}) · "
                  f"{networks} · out-of-fold AUC {metrics['auc']:.3f} ({lo:.3f} – {hi:.3f})")


#: Subjects shown on screen by `predict`; every subject is in the CSV.
_HEAD_ROWS = 10


def _predictions_table(predictions: Any, bundle: Any, out: Path) -> Table:
    labelled = "label" in predictions.columns
    table = Table(title=f"{bundle.variant} ({' + '.join(bundle.modalities)}): mean of {bundle.n_folds} fold "
                        "networks, subject level")
    columns = ["subject", "lesions", "modalities", "P(malignant)", "sd", "threshold", "call", "fold votes"]
    for column in columns + (["label"] if labelled else []):
        table.add_column(column, justify="left" if column in ("subject", "modalities", "call", "label") else "right")
    for row in predictions.head(_HEAD_ROWS).itertuples(index=False):
        call = f"[red]{row.call}[/red]" if row.call == "malignant" else row.call
        cells = [str(row.subject_id), str(row.n_lesions), row.modalities_used.replace(";", " + "),
                 f"{row.prob:.3f}", f"{row.prob_sd:.3f}", f"{row.threshold:.3f}", call,
                 f"{row.fold_votes_malignant}/{bundle.n_folds}"]
        table.add_row(*cells, *([row.label] if labelled else []))
    if len(predictions) > _HEAD_ROWS:
        table.caption = f"first {_HEAD_ROWS} of {len(predictions)} subjects; all are in {out}"
    return table


def _number(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _validation_summary(summary: dict[str, Any]) -> Table:
    """`predict`'s summary of a cohort (external validation when labelled; see predict.external_validation)."""
    training = summary["training"]
    table = Table(title="External validation (subject level)" if summary["labelled"]
                  else "New cohort vs training (no labels: no performance figures)")
    table.add_column("", justify="left")
    table.add_column("this cohort", justify="right")
    table.add_column("training cohort", justify="right")
    if summary["labelled"]:
        table.add_row("subjects (malignant)", f"{summary['n_subjects']} ({summary['n_malignant']})",
                      f"{training['n_subjects']} ({training['n_malignant']})")
        table.add_row("prevalence", _number(summary["prevalence"], 2), _number(training["prevalence"], 2))
        ci, train_ci = summary["auc_ci"], training["auc_ci_out_of_fold"]
        table.add_row("AUC [95% CI]",
                      f"{_number(summary['auc'])} [{_number(ci[0])}, {_number(ci[1])}]" if ci
                      else "– (one class only)",
                      f"{_number(training['auc_out_of_fold'])} [{_number(train_ci[0])}, {_number(train_ci[1])}]"
                      if train_ci else _number(training["auc_out_of_fold"]))
        at, train_at = summary["at_threshold"], training["at_threshold_out_of_fold"] or {}
        for name, key in (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("PPV", "ppv"),
                          ("NPV", "npv")):
            table.add_row(f"{name} at the bundle threshold", _number(at[key]), _number(train_at.get(key)))
    else:
        table.add_row("subjects", str(summary["n_subjects"]), str(training["n_subjects"]))
    shift = summary["score_shift"]
    table.add_row("median P(malignant)", _number(shift["median_new"]), _number(shift["median_training"]))
    table.caption = ("training: out-of-fold, at each fold's threshold · "
                     f"score distribution: Kolmogorov-Smirnov p = {shift['p_value']:.2g}"
                     + (f" · prevalence: Fisher's exact p = {summary['prevalence_shift']['p_value']:.2g}"
                        if summary["prevalence_shift"] else ""))
    return table


class _ConsoleNotes(logging.Handler):
    """Prints the library's notes (ignored modalities, absent clinical data) and warnings while a verb runs."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            console.print(f"[yellow]warning:[/yellow] {record.getMessage()}")
        else:
            console.print(f"[cyan]note:[/cyan] {record.getMessage()}")


@app.command()
def predict(
    bundle_dir: Annotated[Path, typer.Argument(help="A bundle folder (from `breastfusion export`).")],
    cohort_dir: Annotated[Path, typer.Argument(help="Folder with manifest.csv (label may be empty) and optional "
                                               "clinical.csv, as for `breastfusion run`.")],
    out: Annotated[Path, typer.Option("--out", help="CSV to write, one row per subject.")] = Path("predictions.csv"),
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the summary (external validation "
                                                     "figures and shift checks) as JSON.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Lesions per forward pass.")] = 64,
    runtime: Annotated[str, typer.Option("--runtime", help="torch, or onnx: ONNX Runtime on the CPU (a bundle "
                                         "exported with --onnx).")] = "torch",
) -> None:
    """Apply a bundle to new cases: P(malignant) per subject, the call at the folds' threshold, the folds' votes.

    Each fold network predicts every lesion; its outputs are aggregated and
    recalibrated as the run did for its held-out subjects, then averaged over
    folds. A case may lack a modality; images the bundle does not read are ignored.
    When the cohort is labelled, prints an external validation: AUC with a 95%
    bootstrap interval, sensitivity / specificity / PPV / NPV at the bundle's
    threshold, and a warning when prevalence or the score distribution differs
    from the training cohort's (the threshold may then not transfer).
    """
    import json
    import warnings

    from breastfusion.bundle import BundleError, load_bundle
    from breastfusion.data.manifest import ManifestError
    from breastfusion.data.readers import ImageReadError
    from breastfusion.predict import external_validation
    from breastfusion.onnx_export import OnnxUnavailableError

    handler = _ConsoleNotes()
    notes = [logging.getLogger(f"breastfusion.{name}") for name in ("bundle", "predict")]
    levels = [logger.level for logger in notes]
    for logger in notes:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bundle = load_bundle(bundle_dir)
            predictions = bundle.predict(cohort_dir, batch_size=batch_size, runtime=runtime)
        # The library's own warnings (missing clinical columns, unseen categories) are UserWarnings.
        for warning in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)):
            console.print(f"[yellow]warning:[/yellow] {warning}")
        console.print(_predictions_table(predictions, bundle, out))
        summary = external_validation(predictions, bundle)  # its shift warnings print through the handler
    except (BundleError, ManifestError, ImageReadError, FileNotFoundError, ValueError,
            OnnxUnavailableError) as exc:
        fail(str(exc))
    finally:
        for logger, level in zip(notes, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)
    console.print(_validation_summary(summary))
    out.parent.mkdir(parents=True, exist_ok=True)
    predictions.to_csv(out, index=False)
    console.print(f"Predictions: [b]{out}[/b] ({len(predictions)} subjects)")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({**summary, "predictions_csv": str(out)}, indent=2))
        console.print(f"Summary: [b]{json_out}[/b]")


@app.command()
def serve(
    bundle_dir: Annotated[Path, typer.Argument(help="A bundle folder (from `breastfusion export`).")],
    host: Annotated[str, typer.Option("--host", help="Interface to bind; the default is reachable from this "
                                      "machine only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8765,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.001, help="Largest request body "
                                                 "accepted; bigger uploads get 413.")] = 50.0,
    heatmap: Annotated[str, typer.Option("--heatmap", help="The page's default heatmap method: scorecam, gradcam, "
                                         "gradcam++ or none. Score-CAM costs one forward pass per target-layer "
                                         "channel for each image and fold network (27 s per network on one CPU "
                                         "core for EfficientNet-Lite0 at 128 px); gradcam one.")] = "scorecam",
) -> None:
    """A local web page that applies a bundle to one case: upload images, fill in clinical values, read the call."""
    from breastfusion.app.server import METHODS
    from breastfusion.app.server import serve as serve_app
    from breastfusion.bundle import BundleError, load_bundle

    if heatmap not in METHODS:
        fail(f"--heatmap: {heatmap!r} is not one of {list(METHODS)}")
    try:
        bundle = load_bundle(bundle_dir)
    except (BundleError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    console.print(f"Serving [b]{bundle_dir}[/b] ({bundle.variant}) at http://{host}:{port}/ (Ctrl+C stops)")
    serve_app(bundle, host=host, port=port, max_upload_bytes=int(max_upload_mb * 2**20), heatmap_method=heatmap)

app.command()(ablate)
app.add_typer(data_app, name="data")
app.add_typer(cache_app, name="cache")
app.add_typer(models_app, name="models")


if __name__ == "__main__":  # pragma: no cover
    app()
