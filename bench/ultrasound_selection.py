"""Ultrasound recipe selection on folds that are never reported (issue 12: nothing tuned on a test fold).

The BUSI recipes (``configs/bus_clinical.yaml`` from scratch, ``configs/bus_clinical_lite0.yaml`` with
ImageNet weights) are chosen here, on BrEaST-Lesions ultrasound with cross-validation folds of another seed
(``cv.seed: 1``; the reported BrEaST figures use seed 0), never on BUSI. Each call runs the ``ultrasound``
variant of CONFIG with JSON overrides and appends its pooled out-of-fold AUC to
``bench/results/ultrasound_selection.json``.

Usage:
    python bench/ultrasound_selection.py NAME configs/bus_clinical.yaml '{"training": {"epochs": 60}}' \
        [--work /tmp/bf/real] [--data ../shared/data] [--pool busi]

``--pool busi`` adds every BUSI lesion to each training fold (never tested; ``cv.training_only_column``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
RESULTS = ROOT / "bench" / "results" / "ultrasound_selection.json"

#: The selection folds' seed; bench/real_data.py reports BrEaST with the configs' own seed (0).
SELECTION_CV_SEED = 1


def recipe_args(doc: str) -> argparse.Namespace:
    """NAME CONFIG ['OVERRIDES'] [--work] [--data]: the command line of this script and ``busi_recipes.py``."""
    from real_data import POOLABLE

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("config", type=Path)
    parser.add_argument("overrides", nargs="?", default="{}")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bf/real"))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--pool", choices=list(POOLABLE), help="pool this dataset into every training fold "
                        "(training-only: the folds and the AUC are the cohort's own)")
    return parser.parse_args()


def pooled(cohort, config, args: argparse.Namespace):
    """``cohort`` and ``config`` with ``--pool``'s dataset in every training fold (unchanged without it)."""
    if args.pool is None:
        return cohort, config
    from breastmnist_selection import with_overrides
    from real_data import pooled_cohort

    from breastfusion.data.pooling import TRAINING_ONLY_COLUMN

    return (pooled_cohort(cohort, args.pool, args.data, args.work),
            with_overrides(config, {"cv": {"training_only_column": TRAINING_ONLY_COLUMN}}))


def run_ultrasound(cohort, config, out: Path) -> dict:
    """The ``ultrasound`` variant of ``config`` run on ``cohort`` into ``out``: its pooled AUC, CI and seconds."""
    from real_data import variant_entry

    from breastfusion.config import select_variants
    from breastfusion.experiment.run import run_experiment

    start = time.perf_counter()
    run_experiment(cohort, select_variants(config, ["ultrasound"]), out)
    e = variant_entry(json.loads((out / "results.json").read_text()), "ultrasound")
    return {"auc": e["auc"], "auc_ci": e["auc_ci"], "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    args = recipe_args(__doc__)

    from breastmnist_selection import record_run, with_overrides
    from real_data import prepare

    from breastfusion.config import load_config

    cohort = prepare("breast_lesions_usg", args.data, args.work)
    overrides = json.loads(args.overrides)
    config = with_overrides(load_config(args.config), {"cv": {"seed": SELECTION_CV_SEED}} | overrides)
    if config.cv.seed == 0:
        raise SystemExit("cv.seed 0 gives the reported BrEaST folds; selection must use other folds")
    cohort, config = pooled(cohort, config, args)
    measured = run_ultrasound(cohort, config, args.work / "us_selection" / args.name)
    record_run(RESULTS, {"name": args.name, "config": str(args.config), "overrides": overrides,
                         **({"pool": args.pool} if args.pool else {}),
                         "cv_seed": config.cv.seed, "selection_auc": measured["auc"],
                         "selection_auc_ci": measured["auc_ci"], "seconds": measured["seconds"]})


if __name__ == "__main__":
    main()
