"""Where cross-validation trainings run: in this process (``local``) or as tasks on a Ray cluster (``ray``).

The local runner (:mod:`breastfusion.experiment.crossval`) stays the one place that trains and scores; a
distributed executor only trains every (network, fold) the experiment needs ahead of it, writing exactly the
checkpoint files the local runner writes, so the local pass then loads them (its resume path) and the
predictions are the local executor's by construction.
"""

from breastfusion.execution.plan import TrainingTask, finished, plan_trainings, waves

__all__ = ["ExecutionError", "TrainingTask", "plan_trainings", "waves", "finished", "run_trainings",
           "EXECUTORS", "with_executor", "same_experiment"]

#: The executors ``execution.executor`` / ``--executor`` accept.
EXECUTORS = ("local", "ray")


class ExecutionError(RuntimeError):
    """A distributed training could not run or failed; the message names the network, the fold and the fix."""


def run_trainings(*args, **kwargs):
    """Train every pending (network, fold) with the configured executor (see
    :func:`breastfusion.execution.ray_executor.run_trainings`)."""
    from breastfusion.execution.ray_executor import run_trainings as run

    return run(*args, **kwargs)


def with_executor(config, executor: str | None = None, address: str | None = None):
    """``config`` with the CLI's ``--executor`` / ``--ray-address`` applied (``None`` keeps the config's).

    Raises:
        ConfigError: an unknown executor (the message lists :data:`EXECUTORS`).
    """
    from breastfusion.config import ConfigError

    changes = {}
    if executor is not None:
        if executor not in EXECUTORS:
            raise ConfigError(f"--executor should be one of {list(EXECUTORS)}, got {executor!r}")
        changes["executor"] = executor
    if address is not None:
        changes["address"] = address
    if not changes:
        return config
    return config.model_copy(update={"execution": config.execution.model_copy(update=changes)})


def same_experiment(a, b) -> bool:
    """Whether two configs describe the same experiment, wherever it runs (``execution`` is ignored), so a run
    started on Ray can be resumed locally and the other way round."""
    return a.model_copy(update={"execution": b.execution}) == b
