"""Run an experiment's (network, fold) trainings as Ray tasks.

Each training is one Ray task with the CPUs and GPUs of ``execution.cpus_per_task`` /
``gpus_per_task``; a network that starts from single-modality networks receives their tasks' results as
arguments, so Ray starts it as soon as those finish on its fold (a DAG, not a barrier per wave). A task
trains exactly as the local runner does (:meth:`breastfusion.experiment.crossval.FoldTrainer.network`, the same
seeds) and writes the same files (``networks/KEY/foldK.safetensors``, ``.csv``, ``network.json``, and
``foldK-running/last.ckpt`` after every epoch), so:

* a failed or lost task is rerun by Ray (``execution.max_retries``) and resumes from its last epoch;
* a killed driver, started again on the same run folder (``--resume``), submits only the unfinished trainings;
* the local pass that follows loads every network and gives the local executor's predictions.

The run's checkpoint folder must be one path that every node reads and writes (a shared filesystem on a
multi-node cluster); cohort tables and decoded images travel through Ray's object store.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from breastfusion.config import ExperimentConfig
from breastfusion.data.manifest import Cohort
from breastfusion.data.tensors import LesionImages
from breastfusion.experiment.crossval import FoldPositions, NetworkSpec
from breastfusion.execution import ExecutionError
from breastfusion.execution.plan import TrainingTask, finished, plan_trainings

__all__ = ["run_trainings", "train_task", "import_ray"]


def import_ray():
    """The ``ray`` module, or an :class:`ExecutionError` that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ExecutionError("execution.executor 'ray' needs Ray: pip install 'breastfusion[ray]' "
                             "(or use --executor local)") from None
    return ray


def train_task(cohort: Cohort, config: ExperimentConfig, images: LesionImages, checkpoint_dir: str,
               positions: FoldPositions, task: TrainingTask, *needs: Any, threads: int = 1) -> dict[str, Any]:
    """Train one (network, fold) into ``checkpoint_dir`` exactly as the local runner would (runs in a worker).

    ``needs`` are the results of the tasks it starts from (only their completion matters: their weights are
    read from the checkpoint folder).

    Returns:
        ``{"key", "repeat", "fold", "seconds", "host", "trained"}`` (``trained`` False when the files were
        already there, e.g. on a retry after the task had finished writing them).

    Raises:
        ExecutionError: a network it starts from is not in the checkpoint folder (the folder is not shared
            between the nodes).
    """
    import torch

    from breastfusion.experiment.crossval import FoldTrainer

    torch.set_num_threads(max(1, threads))
    # Arrays from Ray's object store are read-only views; the datasets index with them, so own a copy.
    positions = FoldPositions(positions.fit.copy(), positions.test.copy(),
                              None if positions.validation is None else positions.validation.copy())
    root = Path(checkpoint_dir)
    for dep in task.spec.init:
        dep_task = TrainingTask(dep, task.repeat, task.fold, 0)
        if not finished(root, dep_task):
            raise ExecutionError(f"{dep_task.describe()} is finished but not in {root} on {socket.gethostname()}: "
                                 "the checkpoint folder must be on a filesystem every Ray node shares")
    done = finished(root, task)
    started = time.perf_counter()
    runner = FoldTrainer(cohort, config, images, root, None)
    fold = runner.fold(task.repeat, task.fold, positions)
    runner.network(task.spec, fold)
    return {"key": task.spec.key, "repeat": task.repeat, "fold": task.fold, "modalities": list(task.spec.modalities),
            "depth": task.depth, "seconds": round(time.perf_counter() - started, 3), "host": socket.gethostname(),
            "trained": not done}


def run_trainings(cohort: Cohort, config: ExperimentConfig, images: LesionImages,
                  repeats: Sequence[Sequence[FoldPositions]], specs: Sequence[NetworkSpec], checkpoint_dir: Path | None,
                  *, on_done: Callable[[dict[str, Any]], None] | None = None,
                  task_fn: Callable[..., dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Train every unfinished (network, fold) of the experiment on Ray, writing the local runner's files.

    Joins the cluster at ``execution.address`` (``None``: ``$RAY_ADDRESS``, else a new local cluster)
    unless Ray is already initialised in this process, and shuts down only a cluster it started.

    Args:
        cohort, config, images: what :func:`~breastfusion.experiment.crossval.cross_validate` prepared.
        repeats: every repeat's fold positions (:func:`~breastfusion.experiment.crossval.fold_positions`).
        specs: the networks the variants need.
        checkpoint_dir: the run's checkpoint folder (required: it is where results meet).
        on_done: called with each finished task's result, in completion order (progress).
        task_fn: the function a task runs (default :func:`train_task`; tests wrap it to inject faults).

    Returns:
        The results of the tasks that ran (finished trainings found on disk are not resubmitted).

    Raises:
        ExecutionError: Ray missing, no checkpoint folder, or a task that failed after its retries
            (naming the network and fold; rerunning with ``--resume`` keeps every finished training).
    """
    if checkpoint_dir is None:
        raise ExecutionError("execution.executor 'ray' writes each training into the run's checkpoint folder; "
                             "call cross_validate with checkpoint_dir (breastfusion run / ablate always do)")
    ray = import_ray()
    execution = config.execution
    tasks = plan_trainings(specs, [len(split) for split in repeats])
    pending = [t for t in tasks if not finished(checkpoint_dir, t)]
    if not pending:
        return []
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=execution.address, include_dashboard=False, logging_level="ERROR",
                 configure_logging=True)
    try:
        remote = ray.remote(task_fn or train_task).options(
            num_cpus=execution.cpus_per_task, num_gpus=execution.gpus_per_task,
            max_retries=execution.max_retries, retry_exceptions=True)
        shared = [ray.put(cohort), ray.put(config), ray.put(images)]
        folds = {(r, k): ray.put(p) for r, split in enumerate(repeats) for k, p in enumerate(split)}
        refs: dict[tuple[str, int, int], Any] = {}
        names: dict[Any, TrainingTask] = {}
        threads = max(1, int(execution.cpus_per_task))
        for task in pending:  # dependency order: a task's needs are submitted before it
            needs = [refs[n] for n in task.needs if n in refs]
            ref = remote.remote(*shared, str(checkpoint_dir), folds[(task.repeat, task.fold)], task, *needs,
                                threads=threads)
            refs[task.id], names[ref] = ref, task
        results, waiting = [], list(refs.values())
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            try:
                result = ray.get(ready[0])
            except Exception as exc:
                task = names[ready[0]]
                for ref in waiting:
                    ray.cancel(ref)
                raise ExecutionError(f"{task.describe()} failed after {execution.max_retries} retries: "
                                     f"{_root_cause(exc)}; finished trainings are kept in {checkpoint_dir}: fix the "
                                     "cause and run again with --resume") from None
            results.append(result)
            if on_done:
                on_done(result)
        return results
    finally:
        if started_here:
            ray.shutdown()


def _root_cause(exc: BaseException) -> str:
    """The worker's own exception, not Ray's wrapper around it."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
