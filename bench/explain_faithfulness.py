"""Do CAM heatmaps point at the lesion? Energy in mask and pointing game vs a random heatmap, on real masks.

Usage:
    python bench/explain_faithfulness.py --dataset busi [--root /work/shared/data/busi] [--subjects 60]

Prepares the dataset with its adapter (``breastfusion data prepare``, images hard-linked into a
temporary folder: nothing is copied into the repository), cross-validates an ultrasound-only network
(the config's default encoder, from scratch), then explains ``--subjects`` random held-out subjects
with Score-CAM, Grad-CAM and Grad-CAM++ and scores each heatmap against the radiologists' masks.
Prints and writes ``bench/results/explain_faithfulness_{dataset}.json``; asserts nothing.
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
    parser.add_argument("--subjects", type=int, default=60)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from breastfusion.config import load_config
    from breastfusion.data.manifest import load_cohort
    from breastfusion.explain.runner import explain_run
    from breastfusion.run import run_experiment

    work = args.work or Path(tempfile.mkdtemp(prefix=f"faith-{args.dataset}-"))
    manifest_dir, run_dir = work / "manifest", work / "run"
    if not (manifest_dir / "manifest.csv").is_file():
        subprocess.run([sys.executable, "-m", "breastfusion.cli", "data", "prepare", args.dataset,
                        "--root", str(args.root or ROOTS[args.dataset]), "--out", str(manifest_dir)], check=True)
    started = time.perf_counter()
    if not (run_dir / "results.json").is_file():
        config = load_config(None, name=f"{args.dataset}-faithfulness", manifest=manifest_dir,
                             variants={"ultrasound": ["ultrasound"]},
                             model={"ultrasound": {"image_size": args.image_size}},
                             training={"epochs": args.epochs}, cv={"n_splits": args.folds, "bootstrap": 200})
        run_experiment(load_cohort(manifest_dir), config, run_dir)
    train_s = time.perf_counter() - started
    results = json.loads((run_dir / "results.json").read_text())
    subjects = sorted(load_cohort(manifest_dir).lesions["subject_id"].unique())
    chosen = [str(s) for s in np.random.default_rng(0).choice(subjects, size=min(args.subjects, len(subjects)),
                                                              replace=False)]
    started = time.perf_counter()
    result = explain_run(run_dir, subjects=chosen, method="scorecam", out=work / "explain", update_run=True)
    record = {
        "dataset": args.dataset, "run": str(run_dir), "auc": results["variants"]["ultrasound"]["auc"],
        "auc_ci": results["variants"]["ultrasound"]["auc_ci"], "folds": args.folds, "epochs": args.epochs,
        "image_size": args.image_size, "encoder": load_config(run_dir / "config.yaml").model.ultrasound.encoder,
        "train_s": round(train_s, 1), "explain_s": round(time.perf_counter() - started, 1),
        "n_subjects_explained": len(chosen), "target_layers": result["target_layers"],
        "faithfulness": result["faithfulness"],
    }
    out = Path(__file__).parent / "results" / f"explain_faithfulness_{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"{args.dataset}: ultrasound AUC {record['auc']:.3f} ({args.folds}-fold), layer {result['target_layers']}")
    for row in result["faithfulness"]["table"]:
        print(f"  {row['method']:<9} energy in mask {row['energy_in_mask']:.3f}  pointing game "
              f"{row['pointing_game']:.2f}  (n={row['n']})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
