"""Nested selection on BUSI: pool BrEaST-Lesions into the from-scratch training folds, or not?

The from-scratch ultrasound recipe (``configs/bus_clinical.yaml``) scores higher on BUSI with BrEaST-Lesions
pooled into every training fold, but that comparison was made on BUSI's test folds. This makes the choice without
them (:func:`breastfusion.experiment.nested.nested_recipe_selection`): inside each outer training fold of BUSI
(grouped 5-fold, ``cv.seed`` 0, the reported folds), ``--inner`` grouped inner folds rank the two recipes:

* ``unpooled``: ``bus_clinical.yaml``'s ``ultrasound`` variant on BUSI alone (listed first: a tie keeps it);
* ``pooled``: the same with every BrEaST lesion added to each training set (never tested).

Each inner run trains one network per fold (the config's ``seeds: 1``). The recipes scored on the outer folds are
the three-network versions (``--outer NAME=RUN``: a run folder's ``predictions.csv`` and
``calibration_predictions.csv``); without ``--outer`` a recipe's outer predictions are trained here with one
network. The selected AUC is each outer fold's test subjects scored by the recipe its training subjects chose.

Usage:
    python bench/busi_nested_pooling.py [--outer unpooled=RUN pooled=RUN] [--inner 3] [--work /tmp/bf/real]
        [--data ../shared/data] [--prefill NAME:K ...]

``--prefill pooled:0 pooled:1`` only trains those (recipe, outer fold) inner runs into the checkpoint folder
(``WORK/busi_nested/NAME/outerK``), so that two processes can share the work; the full command then reads them
back. Writes ``bench/results/busi_nested_pooling.json`` (not with ``--prefill``).
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
RESULTS = ROOT / "bench" / "results" / "busi_nested_pooling.json"
CONFIG = ROOT / "configs" / "bus_clinical.yaml"
POOL = "breast_lesions_usg"


def recipes(data: Path, work: Path, outer: dict[str, Path]):
    """The two candidate recipes on BUSI (near-duplicates grouped), with outer predictions read from ``outer``."""
    import pandas as pd
    from breastmnist_selection import with_overrides
    from real_data import pooled_cohort, prepare

    from breastfusion.config import load_config
    from breastfusion.data.pooling import TRAINING_ONLY_COLUMN
    from breastfusion.experiment.nested import Recipe

    busi = prepare("busi", data, work, group_duplicates=True)
    config = with_overrides(load_config(CONFIG), {"cv": {"seed": 0}})
    cohorts = {"unpooled": (busi, config),
               "pooled": (pooled_cohort(busi, POOL, data, work),
                          with_overrides(config, {"cv": {"training_only_column": TRAINING_ONLY_COLUMN}}))}
    def read(name: str, file: str):
        run = outer.get(name)
        return pd.read_csv(run / file, dtype={"subject_id": str, "lesion_id": str}) if run else None

    return {name: Recipe(cohort, cfg, "ultrasound", read(name, "predictions.csv"),
                         read(name, "calibration_predictions.csv"))
            for name, (cohort, cfg) in cohorts.items()}


def _pairs(text: str) -> tuple[str, str]:
    for sep in ("=", ":"):
        if sep in text:
            key, value = text.split(sep, 1)
            return key, value
    raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=RUN or NAME:K")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outer", type=_pairs, nargs="*", default=[], metavar="NAME=RUN")
    parser.add_argument("--inner", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bf/real"))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--prefill", type=_pairs, nargs="*", default=[], metavar="NAME:K")
    args = parser.parse_args()

    from breastfusion.experiment.nested import nested_recipe_selection, recipe_inner_cv

    outer = {name: Path(run) for name, run in args.outer}
    candidates = recipes(args.data, args.work, outer)
    unknown = sorted({name for name, _ in [*args.outer, *args.prefill]} - set(candidates))
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; expected {list(candidates)}")
    checkpoints = args.work / "busi_nested"
    started = time.perf_counter()
    if args.prefill:
        for name, k in args.prefill:
            recipe_inner_cv(candidates[name], int(k), args.inner, checkpoint_dir=checkpoints / name / f"outer{k}")
            print(f"{name} outer fold {k}: inner runs done ({time.perf_counter() - started:.0f} s)", flush=True)
        return
    summary = nested_recipe_selection(candidates, inner_folds=args.inner, checkpoint_dir=checkpoints).summary
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["outer_runs"] = {name: str(run) for name, run in outer.items()}
    summary["inner_networks_per_fold"] = 1
    summary["command"] = "python bench/busi_nested_pooling.py " + " ".join(sys.argv[1:])
    for fold in summary["folds"]:
        print(f"outer fold {fold['fold']}: inner AUC " + ", ".join(f"{c} {a:.3f}" for c, a in fold["inner_auc"].items())
              + f" -> {fold['chosen']}")
    sel, naive = summary["selected"], summary["naive"]
    print(f"selected AUC {sel['auc']:.4f} [{sel['auc_ci'][0]:.3f}, {sel['auc_ci'][1]:.3f}] · naive "
          f"{naive['variant']} {naive['auc']:.4f} · outer " + ", ".join(f"{c} {a:.4f}"
                                                                       for c, a in summary["outer_auc"].items()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
