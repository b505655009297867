"""How optimistic is "the best variant of the ablation", and what does choosing it inside each training fold give?

Usage:
    python bench/nested_selection.py [--subjects 120] [--seeds 0 1 2] [--inner 3] [--epochs 6]

For each seed: a synthetic cohort (``--subjects`` subjects at 32 px), six candidate variants of similar
strength (ultrasound with no attention / ECA / CBAM, mammography, clinical, ultrasound + clinical) with timm's
small test ResNet, 5 outer folds; :func:`breastfusion.experiment.nested.nested_selection` with ``--inner``
inner folds. Reports per seed the naive AUC (best candidate chosen on the outer test folds), the selected
AUC (chosen inside each outer training fold), their difference (optimism), the choices per fold and the
seconds taken. Prints and writes ``bench/results/nested_selection.json``; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

_TINY = {"encoder": "test_resnet", "encoder_kwargs": {}, "image_size": 32}
CANDIDATES = {
    "ultrasound": ["ultrasound"],
    "ultrasound.attention=eca": {"modalities": ["ultrasound"], "model": {"ultrasound": {"attention": "eca"}}},
    "ultrasound.attention=cbam": {"modalities": ["ultrasound"], "model": {"ultrasound": {"attention": "cbam"}}},
    "mammography": ["mammography"],
    "clinical": ["clinical"],
    "ultrasound+clinical": ["ultrasound", "clinical"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=120)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--inner", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()

    from breastfusion.config import load_config
    from breastfusion.data.manifest import load_cohort
    from breastfusion.data.synthetic.cohort import generate_cohort
    from breastfusion.experiment.nested import nested_selection

    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            generate_cohort(Path(tmp), n_subjects=args.subjects, seed=seed, image_px=32, masks=False)
            config = load_config(None, name=f"nested-bench-{seed}", variants=CANDIDATES, cache=False,
                                 model={"mammography": _TINY, "ultrasound": _TINY},
                                 training={"epochs": args.epochs, "batch_size": 16, "finetune_epochs": 2,
                                           "seed": seed},
                                 cv={"n_splits": 5, "seed": seed, "bootstrap": 1000})
            started = time.perf_counter()
            summary = nested_selection(load_cohort(tmp), config, inner_folds=args.inner).summary
            seconds = time.perf_counter() - started
        row = {"seed": seed, "naive_variant": summary["naive"]["variant"], "naive_auc": summary["naive"]["auc"],
               "selected_auc": summary["selected"]["auc"], "selected_auc_ci": summary["selected"]["auc_ci"],
               "optimism": summary["optimism"], "chosen": [f["chosen"] for f in summary["folds"]],
               "outer_auc": summary["outer_auc"], "seconds": round(seconds, 1)}
        rows.append(row)
        print(f"seed {seed}: naive {row['naive_auc']:.3f} ({row['naive_variant']}) · selected "
              f"{row['selected_auc']:.3f} · optimism {row['optimism']:+.3f} · chosen {row['chosen']} · "
              f"{row['seconds']:.0f} s")
    mean = sum(r["optimism"] for r in rows) / len(rows)
    print(f"mean optimism over {len(rows)} cohort(s): {mean:+.3f}")
    out = Path(__file__).parent / "results" / "nested_selection.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "candidates": list(CANDIDATES), "runs": rows,
                               "mean_optimism": mean}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
