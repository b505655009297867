"""What makes a folder a run folder (shared by the readers of runs; imports nothing heavy)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["RUN_FILES", "missing_run_file"]

#: Files every run folder has (``breastfusion run``, ``demo`` and ``ablate`` write them).
RUN_FILES = ("config.yaml", "results.json", "predictions.csv")


def missing_run_file(root: str | Path) -> str | None:
    """``None`` when ``root`` holds every file of :data:`RUN_FILES`, else a message naming the first missing one."""
    root = Path(root)
    for name in RUN_FILES:
        if not (root / name).is_file():
            return (f"{root} is not a run folder: {name} is missing "
                    "(make one with `breastfusion run` or `breastfusion demo`)")
    return None
