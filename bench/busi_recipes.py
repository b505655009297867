"""Recipes measured on BUSI beside the shipped ones: what more compute buys, never how the configs were chosen.

The shipped BUSI figures (``bench/real_data.py``) come from configs chosen on other data
(``bench/ultrasound_selection.py``). This runs the ``ultrasound`` variant of CONFIG with JSON overrides on the same
BUSI cohort and folds (near-duplicates grouped, 5-fold) and appends its pooled out-of-fold AUC to
``bench/results/busi_recipes.json``. A recipe measured here is reported as what it is (its own row, measured on
the folds it is scored on); adopting one as a default would need a selection run first.

Usage:
    python bench/busi_recipes.py NAME configs/bus_clinical_lite0.yaml '{"training": {"seeds": 3}}' \
        [--work /tmp/bf/real] [--data ../shared/data] [--pool breast_lesions_usg]

``--pool breast_lesions_usg`` adds every BrEaST lesion to each training fold (never tested).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
RESULTS = ROOT / "bench" / "results" / "busi_recipes.json"


def main() -> None:
    from breastmnist_selection import record_run, with_overrides
    from real_data import prepare
    from ultrasound_selection import pooled, recipe_args, run_ultrasound

    from breastfusion.config import load_config

    args = recipe_args(__doc__)
    if args.pool == "busi":
        raise SystemExit("--pool busi: BUSI is the cohort measured here; pool another dataset")
    overrides = json.loads(args.overrides)
    cohort, config = pooled(prepare("busi", args.data, args.work, group_duplicates=True),
                            with_overrides(load_config(args.config), overrides), args)
    measured = run_ultrasound(cohort, config, args.work / "busi_recipes" / args.name)
    record_run(RESULTS, {"name": args.name, "config": str(args.config), "overrides": overrides,
                         **({"pool": args.pool} if args.pool else {}), **measured,
                         "command": "python bench/busi_recipes.py " + " ".join(sys.argv[1:])})


if __name__ == "__main__":
    main()
