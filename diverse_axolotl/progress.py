"""Progress bars with rate and ETA (rich), shown only when our error stream is a terminal.

Under the CLI the bars go to `logs.terminal_err()`, which stays on the terminal while third-party output goes to
log files. Used as a library, the console writes to a duplicate of the process's original stderr taken at
import, so bars still reach the terminal while Axolotl's output is redirected (see `logs.logs_to`).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .distributed import is_rank0  # one bar per run under torchrun: rank 0's
from .logs import verb_terminal_err


def _terminal_console() -> Console:
    try:
        if os.isatty(2):
            return Console(file=os.fdopen(os.dup(2), "w", buffering=1), force_terminal=True)
    except OSError:
        pass
    return Console(file=sys.stderr)


_import_time_console = _terminal_console()


def _console() -> Console:
    stream = verb_terminal_err()
    if stream is None:
        return _import_time_console
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return Console(file=stream, force_terminal=tty or None)


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
    console = _console()
    with Progress(
        *columns, console=console, transient=False, disable=not console.is_terminal or not is_rank0(),
        redirect_stdout=False, redirect_stderr=False,  # prints of other libraries stay where they were going
    ) as prog:
        task = prog.add_task(description, total=total, rate="")

        def advance(n: int = 1) -> None:
            prog.advance(task, n)
            t = prog.tasks[task]
            if t.elapsed:
                prog.update(task, rate=f"{t.completed / t.elapsed:,.0f} {unit}/s")

        yield advance
