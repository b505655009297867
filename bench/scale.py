"""Scale-out: the 8-variant MPM-MU ablation with the local executor and on Ray, and wall time on N workers.

Usage:
    python bench/scale.py [--subjects 150] [--epochs 4] [--folds 3] [--ray-cpus 2] [--target 10000]

The 8 variants and settings are those of ``bench/ablation_sharing.py`` (mpm_mu, fused_head, each stage-2
learner alone, each modality alone with stacking; resnet18_slim at 32 px), small enough for a 2-core
machine. Both arms run in this one process, one after the other: ``local`` (``execution.executor: local``)
and ``ray`` (a local Ray cluster of ``--ray-cpus`` CPUs, one CPU per task). The script checks that both
arms give the same predictions.

From the Ray arm's measured seconds per (network, fold) and the plan's dependency DAG it then simulates the
wall time of the same ablation on N identical workers (greedy list scheduling, longest ready task first),
scaled to a ``--target``-patient cohort: a training task's time grows with its training lesions (fixed
epochs), the local pass (stage-2 learners, scoring) is scaled linearly too, which under-estimates the SVM
(about quadratic in n). Prints and writes ``bench/results/scale.json``. Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablation_sharing import VARIANTS, add_grid_arguments, eight_variant_grid  # noqa: E402  (bench/ is no package)


def simulate(tasks: list[dict], workers: int) -> float:
    """Wall time of a DAG of tasks (``id``, ``needs``, ``seconds``) on ``workers`` identical workers."""
    by_id = {t["id"]: t for t in tasks}
    waiting = {t["id"]: set(t["needs"]) & set(by_id) for t in tasks}
    done: set = set()
    ready = [t["id"] for t in tasks if not waiting[t["id"]]]
    running: list[tuple[float, tuple]] = []
    clock = 0.0
    while ready or running:
        ready.sort(key=lambda i: -by_id[i]["seconds"])
        while ready and len(running) < workers:
            i = ready.pop(0)
            heapq.heappush(running, (clock + by_id[i]["seconds"], i))
        clock, finished = heapq.heappop(running)
        done.add(finished)
        for i, needs in waiting.items():
            if i not in done and i not in ready and all(n in done for n in needs) and \
                    i not in {r[1] for r in running}:
                ready.append(i)
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_grid_arguments(parser)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--target", type=int, default=10_000, help="cohort size of the wall-time estimate")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scale.json")
    args = parser.parse_args()

    import pandas as pd
    import ray
    import torch

    from breastfusion import execution
    from breastfusion.experiment.crossval import cross_validate, network_spec
    from breastfusion.execution.plan import plan_trainings

    work, cohort, config = eight_variant_grid(args, "scale-bench-")
    names, size = VARIANTS, args.image_size

    record: dict = {"what": __doc__.splitlines()[0], "variants": names, "subjects": args.subjects,
                    "folds": args.folds, "epochs": args.epochs, "finetune_epochs": max(1, args.epochs // 2),
                    "image_size": size, "encoder": "resnet18_slim", "threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
                    "loadavg_before": list(os.getloadavg())}
    started = time.perf_counter()
    local = cross_validate(cohort, config, checkpoint_dir=work / "local")
    record["local_s"] = round(time.perf_counter() - started, 1)

    started = time.perf_counter()
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, logging_level="ERROR")
    record["ray_init_s"] = round(time.perf_counter() - started, 1)
    tasks_ran: list[dict] = []
    submit = execution.run_trainings

    def timed(*a, **k):
        t0 = time.perf_counter()
        out = submit(*a, **k)
        record["ray_trainings_s"] = round(time.perf_counter() - t0, 1)
        tasks_ran.extend(out)
        return out

    execution.run_trainings = timed
    started = time.perf_counter()
    on_ray = cross_validate(cohort, config.model_copy(update={"execution": config.execution.model_copy(
        update={"executor": "ray"})}), checkpoint_dir=work / "ray")
    record["ray_s"] = round(time.perf_counter() - started, 1)
    execution.run_trainings = submit
    ray.shutdown()
    record["ray_local_pass_s"] = round(record["ray_s"] - record["ray_trainings_s"], 1)
    record["ray_cpus"] = args.ray_cpus
    record["ratio_ray_over_local"] = round(record["ray_s"] / record["local_s"], 3)
    try:
        pd.testing.assert_frame_equal(on_ray.predictions, local.predictions, check_exact=False, rtol=1e-6)
        record["same_predictions"] = True
    except AssertionError as exc:
        record["same_predictions"] = f"no: {str(exc)[:200]}"
    record["loadavg_after"] = list(os.getloadavg())

    # -- estimate: the same DAG on N workers, for a --target-patient cohort --------------------------------
    specs = [network_spec(config, v) for v in config.variants]
    plan = plan_trainings(specs, [args.folds])
    seconds = {(r["key"], r["repeat"], r["fold"]): r["seconds"] for r in tasks_ran}
    record["tasks"] = [{"network": "+".join(t.spec.modalities), "key": t.spec.key, "fold": t.fold, "depth": t.depth,
                        "seconds": seconds.get(t.id)} for t in plan]
    scale = args.target / args.subjects
    record["estimate"] = {"target_patients": args.target, "scale_factor": round(scale, 1), "workers": {}}
    for folds in (args.folds, 5):
        # per-task time ∝ training subjects: n (K - 1) / K
        factor = scale * ((folds - 1) / folds) / ((args.folds - 1) / args.folds)
        per_network = {}
        for t in plan:
            per_network.setdefault(t.spec.key, []).append(seconds[t.id])
        dag = [{"id": (key, 0, k), "needs": [(s.key, 0, k) for s in spec.init],
                "seconds": factor * sum(per_network[key]) / len(per_network[key])}
               for spec in {s.key: s for t in plan for s in [t.spec]}.values() for key in [spec.key]
               for k in range(folds)]
        local_pass = record["ray_local_pass_s"] * scale * folds / args.folds
        row = {}
        for n in (1, 2, 4, 8, 16, 32, 64):
            wall = simulate(dag, n) + local_pass
            row[n] = {"hours": round(wall / 3600, 2), "trainings_hours": round((wall - local_pass) / 3600, 2)}
        record["estimate"]["workers"][f"{folds}-fold"] = row
        record["estimate"][f"{folds}-fold_tasks"] = len(dag)
        record["estimate"][f"{folds}-fold_local_pass_hours"] = round(local_pass / 3600, 2)
        record["estimate"][f"{folds}-fold_critical_path_hours"] = round(simulate(dag, 10_000) / 3600, 2)
    record["python"], record["torch"], record["ray"] = platform.python_version(), torch.__version__, ray.__version__
    args.out.write_text(json.dumps(record, indent=2))
    print(json.dumps({k: v for k, v in record.items() if k != "tasks"}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
