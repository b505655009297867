"""External validation on real data: a model fitted on BUSI, applied unchanged to BrEaST-Lesions.

For each CONFIG this runs the ``ultrasound`` variant on BUSI (near-duplicates grouped, 5-fold, as in
``bench/real_data.py``; a finished run in ``--work`` is reused), exports the run as a bundle, and predicts every
BrEaST-Lesions lesion with it, at the bundle's threshold (chosen on BUSI; nothing is tuned on BrEaST). It writes
``bench/results/external_validation.json``: per config the BUSI out-of-fold AUC, the BrEaST AUC [95% CI],
sensitivity and specificity at the bundle threshold, and the shift checks (prevalence, score distribution).

The two cohorts come from different hospitals, scanners and teams (BUSI: Baheya Hospital, Cairo, 2018;
BrEaST-Lesions: another collection, on TCIA), so this measures what ``breastfusion predict`` reports when a model
meets another site.

Usage:
    python bench/external_validation.py [configs/bus_clinical.yaml configs/bus_clinical_roi.yaml]
        [configs/bus_clinical_lite0.yaml+configs/bus_clinical_localised.yaml]   (an ensemble of the two runs)
        [--work /tmp/bf/real] [--data ../shared/data] [--epochs-scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
RESULTS = ROOT / "bench" / "results" / "external_validation.json"
DEFAULT_CONFIGS = (ROOT / "configs" / "bus_clinical.yaml", ROOT / "configs" / "bus_clinical_roi.yaml")


def _busi_run(config_path: Path, busi, work: Path, epochs_scale: float) -> tuple[Path, bool, float]:
    """``config_path``'s ultrasound variant on BUSI in ``work/runs/external_{stem}``: (run, reused, seconds)."""
    from real_data import run_config

    run = work / "runs" / f"external_{config_path.stem}"
    start = time.perf_counter()
    reused = (run / "results.json").is_file() and epochs_scale == 1.0
    if reused:
        print(f"  reusing the finished run {run}", flush=True)
    else:
        run_config(busi, config_path, run, variants=["ultrasound"], epochs_scale=epochs_scale)
    return run, reused, time.perf_counter() - start


def busi_to_breast(config_paths: list[Path], data: Path, work: Path, *, epochs_scale: float = 1.0) -> dict:
    """Fit the ultrasound variant of ``config_paths`` on BUSI and validate its bundle on BrEaST-Lesions; two or
    more configs are ensembled (``breastfusion ensemble`` of their runs, then its ensemble bundle)."""
    import shutil

    from real_data import prepare

    from breastfusion import export_bundle, load_bundle
    from breastfusion.experiment.run_ensemble import ensemble_runs
    from breastfusion.predict import external_validation

    busi = prepare("busi", data, work, group_duplicates=True)
    breast = prepare("breast_lesions_usg", data, work)
    fitted = [_busi_run(c, busi, work, epochs_scale) for c in config_paths]
    name = "+".join(c.stem for c in config_paths)
    run = fitted[0][0]
    if len(fitted) > 1:
        run = work / "runs" / f"external_{name}"
        shutil.rmtree(run, ignore_errors=True)  # predictions only: rebuilt from the member runs in seconds
        ensemble_runs([f[0] for f in fitted], run, variants=["ultrasound"])
    out = work / "bundles" / f"external_{name}"
    shutil.rmtree(out, ignore_errors=True)
    bundle = load_bundle(export_bundle(run, out, variant="ultrasound"))
    start = time.perf_counter()
    summary = external_validation(bundle.predict(breast), bundle)
    reused = all(f[1] for f in fitted)
    networks = (f"{len(config_paths)} runs x {bundle.n_folds} fold networks, their logits averaged"
                if len(config_paths) > 1 else f"{bundle.n_folds} fold networks")
    return {"config": "+".join(str(c.relative_to(ROOT)) for c in config_paths),
            "train": f"BUSI ({len(busi.lesions)} lesions, {networks})",
            "test": f"BrEaST-Lesions ({summary['n_subjects']} lesions)",
            "busi_out_of_fold_auc": summary["training"]["auc_out_of_fold"],
            "breast_auc": summary["auc"], "breast_auc_ci": summary["auc_ci"],
            "breast_at_threshold": summary["at_threshold"],
            "busi_at_threshold_out_of_fold": summary["training"]["at_threshold_out_of_fold"],
            "prevalence_shift": summary["prevalence_shift"], "score_shift": summary["score_shift"],
            "warnings": summary["warnings"], "fit_seconds": None if reused else sum(f[2] for f in fitted),
            "fit_reused": reused, "predict_seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=[str(c) for c in DEFAULT_CONFIGS],
                        help="config files; A.yaml+B.yaml ensembles the two runs")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bf/real"))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="scale every epoch count (smoke runs)")
    args = parser.parse_args()
    if not args.data.is_dir():
        parser.error(f"{args.data}: no such folder (the real datasets of ../shared/data)")
    rows = {}
    for argument in args.configs:
        configs = [Path(c).resolve() for c in argument.split("+")]
        key = "+".join(c.stem for c in configs)
        print(f"== {key}: fit on BUSI, validate on BrEaST-Lesions", flush=True)
        rows[key] = busi_to_breast(configs, args.data, args.work, epochs_scale=args.epochs_scale)
        r = rows[key]
        t = r["breast_at_threshold"]
        print(f"  BUSI out-of-fold AUC {r['busi_out_of_fold_auc']:.3f}; BrEaST AUC {r['breast_auc']:.3f} "
              f"[{r['breast_auc_ci'][0]:.3f}, {r['breast_auc_ci'][1]:.3f}], sensitivity {t['sensitivity']:.3f}, "
              f"specificity {t['specificity']:.3f} at the BUSI threshold", flush=True)
    if args.epochs_scale != 1.0:
        print("epochs scaled: a smoke run, bench/results/external_validation.json left as it was")
        return
    latest = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for row in rows.values():
        row["measured"] = {"at": stamp, "command": "python bench/external_validation.py " + " ".join(sys.argv[1:])}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({**latest, **rows}, indent=2, default=float))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
