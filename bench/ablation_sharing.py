"""What sharing work between ablation variants saves: 8 variants in one grid vs the same 8 run one by one.

Usage:
    python bench/ablation_sharing.py [--subjects 150] [--epochs 4] [--folds 3]

The 8 variants are MPM-MU's stage-2 ablation: the full model (mammography + ultrasound, stacking), its
stage-1 head, each stage-2 learner alone (4), and each modality alone with stacking (2). "One by one" runs
``cross_validate`` once per variant, with only that variant in the config (what 8 separate
`breastfusion run` commands would do, the on-disk image cache warm for both arms). Both arms run in this
one process, one after the other, so their ratio compares like with like on a noisy machine; the script
also checks that each variant's predictions are the same in both arms (sharing changes cost, not numbers).
Prints the figures and writes ``bench/results/ablation_sharing.json``. Asserts nothing about time.
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


#: The 8 variants of MPM-MU's stage-2 ablation that this bench and bench/scale.py run.
VARIANTS = ["mpm_mu", "fused_head", "stage2=logistic", "stage2=svm", "stage2=random_forest", "stage2=extra_trees",
            "modalities=mammography", "modalities=ultrasound"]


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """The grid's size options (shared with bench/scale.py)."""
    parser.add_argument("--subjects", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=32)


def eight_variant_grid(args: argparse.Namespace, prefix: str):
    """A synthetic cohort in a new temporary folder (its own array cache, warmed) and the 8-variant config.

    Returns:
        (work folder, cohort, config with exactly :data:`VARIANTS`).
    """
    from breastfusion.experiment.ablation import expand_ablation
    from breastfusion.config import load_config, select_variants
    from breastfusion.data.manifest import load_cohort
    from breastfusion.data.synthetic.cohort import generate_cohort
    from breastfusion.experiment.crossval import cross_validate

    work = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["BREASTFUSION_CACHE"] = str(work / "cache")
    generate_cohort(work / "cohort", n_subjects=args.subjects, seed=0, image_px=64)
    cohort = load_cohort(work / "cohort")
    size = args.image_size
    config = load_config(
        Path(__file__).parents[1] / "configs" / "mpm_mu.yaml",
        model={"mammography": {"encoder": "resnet18_slim", "attention": "cbam", "image_size": size},
               "ultrasound": {"encoder": "resnet18_slim", "attention": "eca", "image_size": size}},
        training={"epochs": args.epochs, "finetune_epochs": max(1, args.epochs // 2)},
        cv={"n_splits": args.folds, "bootstrap": 100},
        ablation={"reference": "mpm_mu", "modalities": [["mammography"], ["ultrasound"]],
                  "stage2": ["logistic", "svm", "random_forest", "extra_trees"]},
    )
    config, _ = expand_ablation(config)
    config = select_variants(config, VARIANTS)
    cross_validate(cohort, select_variants(config, ["modalities=mammography", "modalities=ultrasound"])
                   .model_copy(update={"training": config.training.model_copy(update={"epochs": 1})}))  # warm cache
    return work, cohort, config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_grid_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ablation_sharing.json")
    args = parser.parse_args()

    import pandas as pd
    import torch

    from breastfusion.config import select_variants
    from breastfusion.experiment.crossval import cross_validate

    work, cohort, config = eight_variant_grid(args, "ablation-bench-")
    names, size = VARIANTS, args.image_size

    load_before = os.getloadavg()
    started = time.perf_counter()
    shared = cross_validate(cohort, config).predictions
    shared_s = time.perf_counter() - started

    alone_s: dict[str, float] = {}
    same = True
    for name in names:
        started = time.perf_counter()
        alone = cross_validate(cohort, select_variants(config, [name])).predictions
        alone_s[name] = round(time.perf_counter() - started, 1)
        mine = shared[shared["variant"] == name].reset_index(drop=True)
        try:
            pd.testing.assert_frame_equal(mine, alone.reset_index(drop=True), check_exact=False, rtol=1e-6)
        except AssertionError:
            same = False
    total_alone = sum(alone_s.values())
    record = {
        "what": "8 MPM-MU ablation variants: one shared cross-validation vs one cross-validation per variant",
        "variants": names, "subjects": args.subjects, "folds": args.folds, "epochs": args.epochs,
        "finetune_epochs": config.training.finetune_epochs, "image_size": size, "encoder": "resnet18_slim",
        "shared_s": round(shared_s, 1), "one_by_one_s": round(total_alone, 1), "one_by_one_per_variant_s": alone_s,
        "ratio_shared_over_one_by_one": round(shared_s / total_alone, 3), "target_ratio": 0.6,
        "same_predictions_in_both_arms": same,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "loadavg_before": [round(v, 2) for v in load_before], "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(), "torch": torch.__version__,
    }
    print(json.dumps(record, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
