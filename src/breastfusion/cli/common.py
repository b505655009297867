"""What every ``breastfusion`` verb shares: the console, the error exit, the progress bar, the default run folder.

A module of its own so that the verb modules (:mod:`.main`, :mod:`.ablation`)
depend on it and not on each other.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["console", "default_out", "fail", "progress_bar"]

#: The console every verb prints to.
console = Console()


def default_out(name: str) -> Path:
    """``runs/NAME-TIMESTAMP``: the run folder a verb writes to when ``--out`` is not given."""
    return Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


def fail(message: str) -> NoReturn:
    """Print ``error: MESSAGE`` and leave with exit code 2 (a usage or input error, not a crash).

    The message is printed as text, not rich markup, so ``pip install 'breastfusion[onnx]'`` or a path with
    brackets reaches the user whole."""
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code=2)


def progress_bar() -> Any:
    """A live rich progress bar on a terminal; plain periodic lines when output goes to a file or a pipe."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not console.is_terminal:
        from breastfusion.progress import PlainProgress

        return PlainProgress(console.file)
    return Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)
