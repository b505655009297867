"""Where cross-validation trainings run: in this process (``local``) or as tasks on a Ray cluster (``ray``).

The local runner (:mod:`breastfusion.evaluation.crossval`) stays the one place that trains and scores; a
distributed executor only trains every (network, fold) the experiment needs ahead of it, writing exactly the
checkpoint files the local runner writes, so the local pass then loads them (its resume path) and the
predictions are the local executor's by construction.
"""

from breastfusion.execution.plan import TrainingTask, finished, plan_trainings, waves

__all__ = ["ExecutionError", "TrainingTask", "plan_trainings", "waves", "finished", "run_trainings"]


class ExecutionError(RuntimeError):
    """A distributed training could not run or failed; the message names the network, the fold and the fix."""


def run_trainings(*args, **kwargs):
    """Train every pending (network, fold) with the configured executor (see
    :func:`breastfusion.execution.ray_executor.run_trainings`)."""
    from breastfusion.execution.ray_executor import run_trainings as run

    return run(*args, **kwargs)
