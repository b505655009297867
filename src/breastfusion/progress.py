"""Progress that works without a terminal: plain, periodic log lines where a live bar would show nothing.

rich's live progress bar redraws one screen region; with output redirected to a file (``nohup``, CI, a
cluster job) it prints nothing until the run ends. :class:`PlainProgress` has the part of rich's
``Progress`` interface the toolkit uses (``add_task``, ``advance``, ``update``, ``remove_task``, a context
manager) and writes a line whenever a task's description changes (a new variant or fold) and at most every
``every`` seconds otherwise. Extra task fields given to ``update`` (as rich keeps them, e.g. the
network's ``epoch`` and its mean training ``loss``, which cross-validation passes after every epoch) follow,
so a log shows the run is learning, not just moving:

    [   2m10s] ultrasound · fold 2/5: 45/150 (30%) · epoch 5/30 · loss 0.4812
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import IO

__all__ = ["PlainProgress"]


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    fields: dict[str, object] = field(default_factory=dict)


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
        self.tasks[task_id].completed += advance
        self._maybe_write(task_id)

    def update(self, task_id: int, *, description: str | None = None, total: float | None = None,
               completed: float | None = None, advance: float | None = None, **fields: object) -> None:
        """Like rich's ``Progress.update``: a new description writes a line at once; ``advance`` counts as
        :meth:`advance` does (a line when finished or ``every`` seconds on); other keywords are kept as the
        task's fields and shown on its lines (``None`` hides one)."""
        task = self.tasks[task_id]
        changed = description is not None and description != task.description
        if description is not None:
            task.description = description
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        task.fields.update(fields)
        if changed:
            if advance:
                task.completed += advance
            self._write(task_id)
        elif advance:
            self.advance(task_id, advance)

    def _maybe_write(self, task_id: int) -> None:
        task = self.tasks[task_id]
        finished = task.total is not None and task.completed >= task.total
        if finished or self.clock() - self._last[task_id] >= self.every:
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
        extra = "".join(f" · {name} {value:.4g}" if isinstance(value, float) else f" · {name} {value}"
                        for name, value in task.fields.items() if value is not None)
        self.stream.write(f"[{minutes:4d}m{seconds:02d}s] {task.description}: {done}{extra}\n")
        self.stream.flush()
