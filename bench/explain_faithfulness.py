"""Do CAM heatmaps point at the lesion? Energy in mask and pointing game vs a random heatmap, on real masks.

Usage:
    python bench/explain_faithfulness.py --dataset busi [--root /work/shared/data/busi] [--subjects 60]
    python bench/explain_faithfulness.py --dataset breast_lesions_usg --folds 5 --subjects 0 --threads 1

Prepares the dataset with its adapter (``breastfusion data prepare``, images hard-linked into a
temporary folder: nothing is copied into the repository), cross-validates an ultrasound-only network
(the config's default encoder, from scratch), then explains ``--subjects`` random held-out subjects
(0: all) with Score-CAM, Grad-CAM and Grad-CAM++ and scores each heatmap against the radiologists'
masks. Two baselines: the random heatmap of the explain runner (8 draws per image) and a fixed centre
prior (a Gaussian at the image centre, sigma a quarter of the side), which a CAM must beat to show it
finds the lesion rather than the middle of the scan. Each CAM method's paired difference from each
baseline, per image, is given with a 95% bootstrap CI over images. Prints and writes
``bench/results/explain_faithfulness_{dataset}.json``; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOTS = {"busi": "/work/shared/data/busi", "breast_lesions_usg": "/work/shared/data/breast_lesions_usg"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="busi", choices=sorted(ROOTS))
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None, help="folder for the manifest and run (default: a temp dir)")
    parser.add_argument("--subjects", type=int, default=60, help="subjects explained (0: all)")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target-layer", default=None, help="CAM layer (default: chosen per architecture); "
                        "the JSON name then ends with it")
    parser.add_argument("--cache", default=None, help="preprocessed-array cache folder (default: WORK/cache)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix=f"faith-{args.dataset}-"))
    os.environ["BREASTFUSION_CACHE"] = str(args.cache or work / "cache")  # keep the user's cache clean

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from breastfusion.config import load_config
    from breastfusion.data.manifest import load_cohort
    from breastfusion.explain.runner import explain_run, parse_target_layers
    from breastfusion.experiment.run import run_experiment

    manifest_dir, run_dir = work / "manifest", work / "run"
    if not (manifest_dir / "manifest.csv").is_file():
        subprocess.run([sys.executable, "-m", "breastfusion", "data", "prepare", args.dataset,
                        "--root", str(args.root or ROOTS[args.dataset]), "--out", str(manifest_dir)], check=True)
    started = time.perf_counter()
    trained = not (run_dir / "results.json").is_file()  # else the run is reused (train_s: null)
    if trained:
        config = load_config(None, name=f"{args.dataset}-faithfulness", manifest=manifest_dir,
                             variants={"ultrasound": ["ultrasound"]},
                             model={"ultrasound": {"image_size": args.image_size}},
                             training={"epochs": args.epochs}, cv={"n_splits": args.folds, "bootstrap": 200})
        run_experiment(load_cohort(manifest_dir), config, run_dir)
    train_s = time.perf_counter() - started
    results = json.loads((run_dir / "results.json").read_text())
    subjects = sorted(load_cohort(manifest_dir).lesions["subject_id"].unique())
    size = len(subjects) if args.subjects <= 0 else min(args.subjects, len(subjects))
    chosen = [str(s) for s in np.random.default_rng(0).choice(subjects, size=size, replace=False)]
    started = time.perf_counter()
    explain_dir = work / ("explain" + (f"-{args.target_layer}" if args.target_layer else ""))
    result = explain_run(run_dir, subjects=chosen, method="scorecam", out=explain_dir, update_run=True,
                         target_layers=parse_target_layers(args.target_layer))
    record = {
        "dataset": args.dataset, "run": str(run_dir), "auc": results["variants"]["ultrasound"]["auc"],
        "auc_ci": results["variants"]["ultrasound"]["auc_ci"], "folds": args.folds, "epochs": args.epochs,
        "image_size": args.image_size, "encoder": load_config(run_dir / "config.yaml").model.ultrasound.encoder,
        "train_s": round(train_s, 1) if trained else None, "explain_s": round(time.perf_counter() - started, 1),
        "n_subjects_explained": len(chosen), "target_layers": result["target_layers"],
        "preprocess": load_config(run_dir / "config.yaml").model.ultrasound.preprocess,
        "threads": args.threads, "faithfulness": result["faithfulness"],
        "paired_vs_baselines": paired_differences(explain_dir / "faithfulness.csv"),
    }
    suffix = f"_{args.target_layer.replace('.', '_')}" if args.target_layer else ""
    out = Path(__file__).parent / "results" / f"explain_faithfulness_{args.dataset}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"{args.dataset}: ultrasound AUC {record['auc']:.3f} ({args.folds}-fold), layer {result['target_layers']}")
    for row in result["faithfulness"]["table"]:
        print(f"  {row['method']:<9} energy in mask {row['energy_in_mask']:.3f}  pointing game "
              f"{row['pointing_game']:.2f}  (n={row['n']})")
    for row in record["paired_vs_baselines"]:
        print(f"  {row['method']:<9} - {row['baseline']:<6} energy {row['energy_diff']:+.3f} "
              f"[{row['energy_ci'][0]:+.3f}, {row['energy_ci'][1]:+.3f}]  pointing {row['pointing_diff']:+.2f} "
              f"[{row['pointing_ci'][0]:+.2f}, {row['pointing_ci'][1]:+.2f}]  "
              f"(n={row['energy_n']}/{row['pointing_n']})")
    print(f"wrote {out}")


def paired_differences(scores_csv: Path, *, n_boot: int = 2000) -> list[dict]:
    """Per image, each CAM method's score minus the random baseline (mean of its draws) and minus the
    centre prior; mean and 95% percentile-bootstrap CI over images."""
    import numpy as np
    import pandas as pd

    scores = pd.read_csv(scores_csv)
    scores = scores[scores["modality"] == "ultrasound"]
    # the runner scores both baselines on every image: "random" (mean of its draws) and "centre"
    per_image = scores.groupby(["lesion_id", "method"])[["energy_in_mask", "pointing_game"]].mean().unstack()
    rng = np.random.default_rng(0)
    rows = []
    methods = [m for m in per_image["energy_in_mask"].columns if m not in ("random", "centre")]
    for method in methods:
        for baseline in ("random", "centre"):
            row = {"method": method, "baseline": baseline}
            for metric, key in (("energy_in_mask", "energy"), ("pointing_game", "pointing")):
                # an all-zero heatmap has no energy share (NaN): such images are left out of that comparison
                diff = (per_image[(metric, method)] - per_image[(metric, baseline)]).dropna().to_numpy()
                means = diff[rng.integers(0, len(diff), (n_boot, len(diff)))].mean(axis=1)
                row[f"{key}_n"] = int(len(diff))
                row[f"{key}_diff"] = float(diff.mean())
                row[f"{key}_ci"] = [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
                row[f"{baseline}_{key}"] = float(per_image[(metric, baseline)].mean())
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
