"""Does ensembling two recipes help? Measured on the selection folds, never on a reported figure's folds.

``breastfusion ensemble`` (the mean logit of runs on the same folds) of selection runs that
``bench/ultrasound_selection.py`` left under ``WORK/us_selection/NAME`` (BrEaST-Lesions ultrasound, folds of
``cv.seed`` 1 or 2, never the reported seed 0). Appends the ensemble's pooled AUC, each member's and the paired
DeLong test against each to ``bench/results/ultrasound_selection.json`` (entries with ``ensemble_of``).

With ``--busi``, the runs are BUSI runs under ``WORK`` (``busi_recipes/NAME`` of ``bench/busi_recipes.py``,
``runs/NAME`` of ``bench/real_data.py``), and the entry goes to ``bench/results/busi_recipes.json``: figures on
reported folds, which inform but never choose a recipe.

Usage:
    python bench/selection_ensembles.py NAME RUN_A RUN_B [RUN_C ...] [--work /tmp/bf/real]
    python bench/selection_ensembles.py NAME busi_recipes/lite0_seeds3 runs/busi_localised --busi
    (--allow-different-manifest: members on the same lesions whose manifest files differ, e.g. a pooled cohort
    built in memory by an earlier bench version and the one `breastfusion data pool` writes)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("runs", nargs="+", help="selection run names (folders under WORK/us_selection), or with "
                        "--busi folders under WORK")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bf/real"))
    parser.add_argument("--busi", action="store_true", help="BUSI runs; record in busi_recipes.json")
    parser.add_argument("--allow-different-manifest", action="store_true",
                        help="members whose manifest files differ but list the same lesions (a pooled cohort "
                        "built in memory and the same one written by `breastfusion data pool`)")
    args = parser.parse_args()

    from breastmnist_selection import record_run

    from breastfusion.experiment.run_ensemble import ensemble_runs

    if args.busi:
        from busi_recipes import RESULTS

        folders, out = [args.work / r for r in args.runs], args.work / "busi_ensembles" / args.name
    else:
        from ultrasound_selection import RESULTS

        folders = [args.work / "us_selection" / r for r in args.runs]
        out = args.work / "us_selection_ensembles" / args.name
    shutil.rmtree(out, ignore_errors=True)  # predictions only: rebuilt from the members in seconds
    results = ensemble_runs(folders, out, variants=["ultrasound"],
                            allow_different_manifest=args.allow_different_manifest)
    v = results["variants"]["ultrasound"]
    auc = "auc" if args.busi else "selection_auc"
    record_run(RESULTS, {  # the members' folds are equal (ensemble_runs checks), so is their cv.seed
        "name": args.name, "ensemble_of": args.runs, "cv_seed": results["cv"]["seed"],
        auc: v["auc"], f"{auc}_ci": v["auc_ci"],
        "members": [{"run": r, auc: t["auc_b"], "auc_difference": t["auc_difference"], "p": t["p"]}
                    for r, t in zip(args.runs, v["vs_members"])],
        "command": "python bench/selection_ensembles.py " + " ".join(sys.argv[1:])})


if __name__ == "__main__":
    main()
