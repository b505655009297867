"""Progress that works without a terminal: plain, periodic log lines where a live bar would show nothing.

rich's live progress bar redraws one screen region; with output redirected to a file (``nohup``, CI, a
cluster job) it prints nothing until the run ends. :class:`PlainProgress` has the part of rich's
``Progress`` interface the toolkit uses (``add_task``, ``advance``, ``update``, ``remove_task``, a context
manager) and writes a line whenever a task's description changes (a new variant or fold) and at most every
``every`` seconds otherwise:

    [   2m10s] ultrasound · fold 2/5: 45/150 (30%)
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import IO

__all__ = ["PlainProgress"]


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0


class PlainProgress:
    """Progress as plain lines on a stream (for non-terminal output).

    Args:
        stream: where lines go (default ``sys.stdout``), flushed after each.
        every: least seconds between two lines of the same task when its description does not change.
        clock: the time source (seconds), replaceable in tests.
    """

    def __init__(self, stream: IO[str] | None = None, *, every: float = 30.0, clock=time.monotonic):
        self.stream = stream if stream is not None else sys.stdout
        self.every, self.clock = every, clock
        self.start = clock()
        self.tasks: dict[int, _Task] = {}
        self._last: dict[int, float] = {}

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        for task_id in list(self.tasks):
            self._write(task_id)

    def add_task(self, description: str, total: float | None = None, **_: object) -> int:
        task_id = len(self._last)
        self.tasks[task_id] = _Task(description, total)
        self._write(task_id)
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        task = self.tasks[task_id]
        task.completed += advance
        finished = task.total is not None and task.completed >= task.total
        if finished or self.clock() - self._last[task_id] >= self.every:
            self._write(task_id)

    def update(self, task_id: int, *, description: str | None = None, total: float | None = None,
               completed: float | None = None, advance: float | None = None, **_: object) -> None:
        task = self.tasks[task_id]
        changed = description is not None and description != task.description
        if description is not None:
            task.description = description
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if advance:
            task.completed += advance
        if changed:
            self._write(task_id)

    def remove_task(self, task_id: int) -> None:
        self.tasks.pop(task_id, None)

    def _write(self, task_id: int) -> None:
        task = self.tasks[task_id]
        now = self.clock()
        self._last[task_id] = now
        minutes, seconds = divmod(int(now - self.start), 60)
        done = f"{task.completed:g}" + (f"/{task.total:g} ({100 * task.completed / task.total:.0f}%)"
                                        if task.total else "")
        self.stream.write(f"[{minutes:4d}m{seconds:02d}s] {task.description}: {done}\n")
        self.stream.flush()
