"""How long `breastfusion explain` takes on a 5-fold demo run, for 20 subjects, on 2 CPU threads.

Usage:
    python bench/explain_speed.py [--run RUN_DIR] [--subjects 20] [--method scorecam]

Without ``--run`` it first makes the quick demo run (``breastfusion demo --quick``: 300 synthetic
subjects, 5 folds) in a temporary folder. It prints and writes ``bench/results/explain_speed.json``:
wall time of the explanation, the machine's load, the modality shares and the faithfulness table
(the synthetic cohort's lesion masks are known). It asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="an existing run folder (default: make the quick demo)")
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--method", default="scorecam")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fused-only", action="store_true",
                        help="make the quick demo run with only its fused variant (5 folds; faster on a busy machine)")
    parser.add_argument("--epochs", type=int, default=None, help="override the quick demo's epochs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "explain_speed.json")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    import torch

    torch.set_num_threads(args.threads)
    from breastfusion.explain.runner import explain_run

    run = args.run
    demo_s = None
    if run is None:
        from breastfusion.data.manifest import load_cohort
        from breastfusion.data.synthetic.cohort import generate_cohort
        from breastfusion.experiment.demo import demo_config
        from breastfusion.experiment.run import run_experiment

        run = Path(tempfile.mkdtemp(prefix="explain-bench-")) / "run"
        started = time.perf_counter()
        config = demo_config(quick=True, seed=0)
        update = {}
        if args.fused_only:
            update["variants"] = {"fused": config.variants["fused"]}
        if args.epochs:
            update["training"] = config.training.model_copy(update={"epochs": args.epochs})
        config = config.model_copy(update=update)
        s = config.synthetic
        generate_cohort(run / "cohort", n_subjects=s.n_subjects, seed=s.seed, prevalence=s.prevalence,
                        us_frames=s.us_frames, missing_rate=s.missing_rate, image_px=s.image_px)
        run_experiment(load_cohort(run / "cohort"), config, run)
        demo_s = round(time.perf_counter() - started, 1)
    predictions = pd.read_csv(run / "predictions.csv", dtype={"subject_id": str})
    subjects = sorted(predictions["subject_id"].unique())
    chosen = [str(s) for s in np.random.default_rng(0).choice(subjects, size=args.subjects, replace=False)]
    load_before = os.getloadavg()
    started = time.perf_counter()
    result = explain_run(run, subjects=chosen, method=args.method, out=Path(tempfile.mkdtemp()) / "explain",
                         update_run=args.run is None)
    seconds = time.perf_counter() - started
    record = {
        "what": f"explain_run on a {result['folds']}-fold run: {args.subjects} subjects' heatmaps "
                f"({args.method} for overlays; scorecam, gradcam, gradcam++ scored against lesion masks), "
                "modality Shapley values of every lesion, clinical permutation importance",
        "run": str(run), "run_variants": list(json.loads((run / "results.json").read_text())["variants"]),
        "demo_run_s": demo_s, "explain_s": round(seconds, 1), "threads": args.threads,
        "cpu_count": os.cpu_count(), "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()], "platform": platform.platform(),
        "torch": torch.__version__, "variant": result["variant"], "target_layers": result["target_layers"],
        "share_percent": result["contribution"]["share_percent"],
        "efficiency_max_error": result["contribution"]["efficiency_max_error"],
        "clinical_importance": result.get("clinical_importance"),
        "faithfulness": result["faithfulness"], "subjects": chosen,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(json.dumps({k: record[k] for k in ("explain_s", "threads", "loadavg_before", "share_percent")}, indent=1))
    for row in record["faithfulness"]["table"]:
        print(f"  {row['method']:<9} {row['modality']:<11} energy in mask {row['energy_in_mask']:.3f}  "
              f"pointing game {row['pointing_game']:.2f}  (n={row['n']})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
