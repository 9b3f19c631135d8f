"""Progress bars with rate and ETA (rich) when our error stream is a terminal; otherwise (a log file, `nohup`)
one plain line a minute for stages that last longer than that, so a log shows how far an hour-long stage is.

Under the CLI the bars go to `logs.terminal_err()`, which stays on the terminal while third-party output goes to
log files. Used as a library, the console writes to a duplicate of the process's original stderr taken at
import, so bars still reach the terminal while Axolotl's output is redirected (see `logs.logs_to`).
"""

from __future__ import annotations

import os
import sys
import time
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


PLAIN_EVERY_S = 60.0  # seconds between the plain progress lines written to a non-terminal


class _PlainProgress:
    """`advance(n)` writes `description: done/total unit (pct), rate, elapsed, eta` once per PLAIN_EVERY_S seconds;
    `close()` writes a last line if any was written (a stage shorter than that stays silent)."""

    def __init__(self, console: Console, description: str, total: int, unit: str):
        self.console, self.description, self.total, self.unit = console, description, total, unit
        self.start = self.last = time.monotonic()
        self.done, self.wrote = 0, False

    def advance(self, n: int = 1) -> None:
        self.done += n
        if time.monotonic() - self.last >= PLAIN_EVERY_S:
            self._line()

    def close(self) -> None:
        if self.wrote:
            self._line()

    def _line(self) -> None:
        now = self.last = time.monotonic()
        rate = self.done / max(now - self.start, 1e-9)
        eta = f", eta {_minutes((self.total - self.done) / rate)}" if 0 < self.done < self.total else ""
        self.console.file.write(
            f"{self.description}: {self.done:,}/{self.total:,} {self.unit} ({self.done / max(self.total, 1):.0%}),"
            f" {rate:,.1f} {self.unit}/s, {_minutes(now - self.start)} elapsed{eta}\n"
        )
        self.console.file.flush()
        self.wrote = True


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


@contextmanager
def progress_bar(description: str, total: int, unit: str = "rows"):
    """Yield `advance(n)`; shows done/total, rate and ETA (a bar on a terminal, a line a minute elsewhere)."""
    console = _console()
    if not console.is_terminal:
        if not is_rank0():
            yield lambda n=1: None
            return
        plain = _PlainProgress(console, description, total, unit)
        try:
            yield plain.advance
        finally:
            plain.close()
        return
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
        *columns, console=console, transient=False, disable=not is_rank0(),
        redirect_stdout=False, redirect_stderr=False,  # prints of other libraries stay where they were going
    ) as prog:
        task = prog.add_task(description, total=total, rate="")

        def advance(n: int = 1) -> None:
            prog.advance(task, n)
            t = prog.tasks[task]
            if t.elapsed:
                prog.update(task, rate=f"{t.completed / t.elapsed:,.0f} {unit}/s")

        yield advance
