"""Progress bars with rate and ETA (rich), shown only when stderr is a terminal.

The console writes to a duplicate of the process's original stderr, so bars still reach the terminal while
Axolotl's output is redirected into a log file (see `training._logs_to`).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

def _terminal_console() -> Console:
    try:
        if os.isatty(2):
            return Console(file=os.fdopen(os.dup(2), "w", buffering=1), force_terminal=True)
    except OSError:
        pass
    return Console(file=sys.stderr)


console = _terminal_console()


@contextmanager
def progress_bar(description: str, total: int, unit: str = "rows"):
    """Yield `advance(n)`; shows done/total, rate and ETA."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(
        *columns, console=console, transient=False, disable=not console.is_terminal,
        redirect_stdout=False, redirect_stderr=False,  # prints of other libraries stay where they were going
    ) as prog:
        task = prog.add_task(description, total=total, rate="")

        def advance(n: int = 1) -> None:
            prog.advance(task, n)
            t = prog.tasks[task]
            if t.elapsed:
                prog.update(task, rate=f"{t.completed / t.elapsed:,.0f} {unit}/s")

        yield advance
