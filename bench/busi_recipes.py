"""Recipes measured on BUSI beside the shipped ones: what more compute buys, never how the configs were chosen.

The shipped BUSI figures (``bench/real_data.py``) come from configs chosen on other data
(``bench/ultrasound_selection.py``). This runs the ``ultrasound`` variant of CONFIG with JSON overrides on the same
BUSI cohort and folds (near-duplicates grouped, 5-fold) and appends its pooled out-of-fold AUC to
``bench/results/busi_recipes.json``. A recipe measured here is reported as what it is (its own row, measured on
the folds it is scored on); adopting one as a default would need a selection run first.

Usage:
    python bench/busi_recipes.py NAME configs/bus_clinical_lite0.yaml '{"training": {"seeds": 3}}' \
        [--work /tmp/bf/real] [--data ../shared/data]
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
RESULTS = ROOT / "bench" / "results" / "busi_recipes.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("config", type=Path)
    parser.add_argument("overrides", nargs="?", default="{}")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bf/real"))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()

    from breastmnist_selection import record_run, with_overrides
    from real_data import prepare, variant_entry

    from breastfusion.config import load_config, select_variants
    from breastfusion.experiment.run import run_experiment

    cohort = prepare("busi", args.data, args.work, group_duplicates=True)
    overrides = json.loads(args.overrides)
    config = with_overrides(select_variants(load_config(args.config), ["ultrasound"]), overrides)
    out = args.work / "busi_recipes" / args.name
    start = time.perf_counter()
    run_experiment(cohort, config, out)
    e = variant_entry(json.loads((out / "results.json").read_text()), "ultrasound")
    record_run(RESULTS, {"name": args.name, "config": str(args.config), "overrides": overrides,
                         "auc": e["auc"], "auc_ci": e["auc_ci"], "seconds": round(time.perf_counter() - start, 1),
                         "command": "python bench/busi_recipes.py " + " ".join(sys.argv[1:])})


if __name__ == "__main__":
    main()
