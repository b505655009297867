"""BreastMNIST recipe selection on data that is never reported (issue 12: nothing tuned on a test split).

The official test split is dropped; the official val split plays "test"; 78 stratified train images (the val
split's size) play "val" for early stopping. Each call trains ``configs/breastmnist.yaml`` with JSON overrides
and appends the held-out AUC to ``bench/results/breastmnist_selection.json``.

Usage:
    python bench/breastmnist_selection.py NAME '{"model": {"ultrasound": {"encoder": "resnet18"}}}' \
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
RESULTS = ROOT / "bench" / "results" / "breastmnist_selection.json"


def selection_manifest(root: Path, seed: int = 0) -> Path:
    """``root``'s manifest without its test rows, val relabelled test and a stratified share of train as val."""
    import numpy as np
    import pandas as pd

    out = root / "manifest.valsel.csv"
    if out.is_file():
        return out
    m = pd.read_csv(root / "manifest.csv")
    m = m[m.split != "test"].copy()
    n_val, n_train = int((m.split == "val").sum()), int((m.split == "train").sum())
    m.loc[m.split == "val", "split"] = "test"
    rng = np.random.default_rng(seed)
    for label in sorted(m.label.unique()):
        idx = m.index[(m.split == "train") & (m.label == label)]
        m.loc[rng.choice(idx, round(len(idx) * n_val / n_train), replace=False), "split"] = "val"
    m.to_csv(out, index=False)
    return out


def with_overrides(config, overrides: dict):
    """``config`` with the nested ``overrides`` merged in, validated again."""
    from breastfusion.config import deep_merge

    return type(config).model_validate(deep_merge(config.model_dump(), overrides))


def record_run(results: Path, entry: dict) -> None:
    """Print ``entry`` and put it in ``results``' ``runs`` list, replacing an earlier run of the same name."""
    print(entry)
    previous = json.loads(results.read_text()) if results.is_file() else {"runs": []}
    previous["runs"] = [r for r in previous["runs"] if r["name"] != entry["name"]] + [entry]
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(previous, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("overrides", nargs="?", default="{}")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bf/real"))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()

    from real_data import prepare

    from breastfusion.config import load_config
    from breastfusion.data.manifest import load_cohort
    from breastfusion.experiment.run import run_experiment

    prepare("breastmnist", args.data, args.work)
    overrides = json.loads(args.overrides)
    config = with_overrides(load_config(ROOT / "configs" / "breastmnist.yaml"), overrides)
    out = args.work / "selection" / args.name
    start = time.perf_counter()
    run_experiment(load_cohort(selection_manifest(args.work / "breastmnist")), config, out)
    auc = json.loads((out / "results.json").read_text())["variants"]["ultrasound"]["auc"]
    entry = {"name": args.name, "overrides": overrides, "selection_auc": auc,
             "seconds": round(time.perf_counter() - start, 1)}
    record_run(RESULTS, entry)


if __name__ == "__main__":
    main()
