"""GPU smoke check: the quick demo and one MPM-MU ablation variant on CUDA, against a CPU reference.

Usage (on a machine with an NVIDIA GPU; ``bench/gpu_smoke.sh`` wraps it):
    python bench/gpu_smoke.py [--reference bench/results/gpu_smoke_cpu_reference.json] [--tolerance 0.03]
    python bench/gpu_smoke.py --write-reference   # CPU only: run the quick demo here and save its AUCs

1. The quick demo (``breastfusion demo --quick``'s config) with ``training.accelerator: gpu`` (bf16/fp16
   autocast as :func:`breastfusion.training.fit.select_device` and the autocast check choose) and
   ``num_workers: auto``; each variant's out-of-fold AUC is compared with the CPU reference of the same seeds
   (read from ``--reference``, or run here first when the file is absent). Mixed precision and GPU kernels
   change the numbers a little, not the AUC beyond ``--tolerance``.
2. One ablation variant of ``configs/mpm_mu.yaml --quick`` (the stage-1 fused head, ``fused_head``, with the
   single-modality networks it starts from) on CUDA.

Writes ``bench/results/gpu_smoke.json``: wall seconds, training throughput (lesion-epochs per second: the
training lesions of every (network, fold) × its epochs, over the wall time), device name, precision, the
AUCs and their differences. Exits 1 when an AUC differs from the reference by more than the tolerance or
CUDA is absent (without --write-reference); timing is reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).parent / "results"


def _lesion_epochs(config, n_lesions: int) -> int:
    from breastfusion.experiment.crossval import unique_networks, network_spec

    specs = unique_networks([network_spec(config, v) for v in config.variants])
    per_fold = n_lesions * (config.cv.n_splits - 1) / config.cv.n_splits
    return int(config.cv.n_splits * per_fold * sum(s.training.epochs for s in specs))


def _run(config, out: Path, cohort=None) -> dict:
    from breastfusion.experiment.demo import make_synthetic_cohort
    from breastfusion.experiment.run import run_experiment

    cohort = cohort or make_synthetic_cohort(config, out / "cohort")
    started = time.perf_counter()
    results = run_experiment(cohort, config, out)
    seconds = time.perf_counter() - started
    work = _lesion_epochs(config, len(cohort.lesions))
    return {"seconds": round(seconds, 1), "lesion_epochs": work, "lesion_epochs_per_s": round(work / seconds, 1),
            "auc": {name: round(v["auc"], 4) for name, v in results["variants"].items()}}


def _on(config, accelerator: str):
    training = config.training.model_copy(update={"accelerator": accelerator,
                                                  "num_workers": "auto" if accelerator == "gpu" else 0})
    return config.model_copy(update={"training": training})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=RESULTS / "gpu_smoke_cpu_reference.json")
    parser.add_argument("--write-reference", action="store_true", help="run the CPU reference only and save it")
    parser.add_argument("--tolerance", type=float, default=0.03, help="largest AUC difference GPU vs CPU")
    args = parser.parse_args()

    import torch

    from breastfusion.experiment.ablation import expand_ablation
    from breastfusion.config import load_config, select_variants
    from breastfusion.experiment.demo import demo_config, quick_overrides
    from breastfusion.training.fit import select_device

    demo = demo_config(quick=True)
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        tmp = Path(tmp)
        if args.write_reference or not args.reference.is_file():
            reference = {"what": "CPU reference of bench/gpu_smoke.py: the quick demo", **_run(_on(demo, "cpu"),
                                                                                              tmp / "cpu"),
                         "threads": torch.get_num_threads(), "torch": torch.__version__}
            args.reference.write_text(json.dumps(reference, indent=2))
            print(json.dumps(reference, indent=2))
            if args.write_reference:
                return
        reference = json.loads(args.reference.read_text())
        if not torch.cuda.is_available():
            sys.exit("gpu_smoke: CUDA is not available here (torch.cuda.is_available() is False); run it on a "
                     "GPU machine, or --write-reference for the CPU part")
        record: dict = {"what": __doc__.splitlines()[0], "device": torch.cuda.get_device_name(0),
                        "precision": select_device("gpu")[1], "torch": torch.__version__,
                        "cuda": torch.version.cuda, "tolerance": args.tolerance, "cpu_reference": reference}
        record["demo_quick_gpu"] = _run(_on(demo, "gpu"), tmp / "gpu")
        diff = {v: round(abs(a - reference["auc"][v]), 4) for v, a in record["demo_quick_gpu"]["auc"].items()}
        record["auc_difference"] = diff
        mpm = quick_overrides(load_config(Path(__file__).parents[1] / "configs" / "mpm_mu.yaml"))
        mpm, _ = expand_ablation(mpm)
        record["ablation_variant_gpu"] = {"variant": "fused_head",
                                          **_run(_on(select_variants(mpm, ["fused_head"]), "gpu"), tmp / "ablation")}
        record["speedup_demo_gpu_over_cpu"] = round(reference["seconds"] / record["demo_quick_gpu"]["seconds"], 2)
        record["ok"] = all(d <= args.tolerance for d in diff.values())
    (RESULTS / "gpu_smoke.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    if not record["ok"]:
        sys.exit(f"gpu_smoke: AUC on the GPU differs from the CPU reference by more than {args.tolerance}: {diff}")


if __name__ == "__main__":
    main()
