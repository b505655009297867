"""Plan every (network, fold) training an experiment needs, in dependency order.

A multimodal network initialised from single-modality networks (``NetworkSpec.init``) can only start once
those have finished on the same fold; every other pair of trainings is independent. The plan is the DAG a
distributed executor submits: each task lists the tasks it waits for.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from breastfusion.experiment.crossval import NetworkSpec, unique_networks
from breastfusion.experiment.run_folder import CheckpointLayout, fold_tag

__all__ = ["TrainingTask", "plan_trainings", "waves", "finished", "checkpoint_paths"]


@dataclass(frozen=True)
class TrainingTask:
    """One network trained on one fold of one repeat.

    Attributes:
        spec: the network.
        repeat: the repeat (0 for a single cross-validation).
        fold: the fold within the repeat.
        depth: 0 for a network trained from its encoder's initial weights, else 1 + the deepest network it
            starts from (tasks of one depth are independent of each other).
    """

    spec: NetworkSpec
    repeat: int
    fold: int
    depth: int

    @property
    def tag(self) -> str:
        """The fold's file tag, as the local runner writes it (``fold2``, ``repeat1-fold2``)."""
        return fold_tag(self.fold, self.repeat)

    @property
    def id(self) -> tuple[str, int, int]:
        return self.spec.key, self.repeat, self.fold

    @property
    def needs(self) -> tuple[tuple[str, int, int], ...]:
        """The ids of the tasks this one starts from (the same fold's single-modality networks)."""
        return tuple((s.key, self.repeat, self.fold) for s in self.spec.init)

    def describe(self) -> str:
        return f"network {self.spec.key} ({'+'.join(self.spec.modalities)}), {self.tag}"


def _depth(spec: NetworkSpec) -> int:
    return 0 if not spec.init else 1 + max(_depth(s) for s in spec.init)


def plan_trainings(specs: Iterable[NetworkSpec], folds_per_repeat: Sequence[int]) -> list[TrainingTask]:
    """Every (network, fold) to train, dependencies first, each once.

    Args:
        specs: the networks the variants need (their ``init`` networks are added when not listed).
        folds_per_repeat: the number of folds of each repeat (``[5]``: one 5-fold cross-validation).

    Returns:
        Tasks sorted by (depth, repeat, fold, first appearance of the network): every task comes after the
        tasks it :attr:`~TrainingTask.needs`.
    """
    unique = {spec.key: spec for spec in unique_networks(specs)}
    order = {key: i for i, key in enumerate(unique)}
    tasks = [TrainingTask(spec, r, k, _depth(spec)) for spec in unique.values()
             for r, n in enumerate(folds_per_repeat) for k in range(n)]
    return sorted(tasks, key=lambda t: (t.depth, t.repeat, t.fold, order[t.spec.key]))


def waves(tasks: Sequence[TrainingTask]) -> list[list[TrainingTask]]:
    """The tasks grouped by depth: each wave depends only on earlier waves."""
    out: dict[int, list[TrainingTask]] = {}
    for task in tasks:
        out.setdefault(task.depth, []).append(task)
    return [out[d] for d in sorted(out)]


def checkpoint_paths(checkpoint_dir: Path, task: TrainingTask) -> tuple[Path, Path]:
    """The weights and predictions files the local runner writes for ``task``."""
    layout, args = CheckpointLayout(Path(checkpoint_dir)), (task.spec.key, task.fold, task.repeat)
    return layout.network_weights(*args), layout.network_predictions(*args)


def finished(checkpoint_dir: Path, task: TrainingTask) -> bool:
    """Whether ``task``'s weights and predictions are both on disk (the local runner then loads, not trains)."""
    return all(p.is_file() for p in checkpoint_paths(checkpoint_dir, task))
