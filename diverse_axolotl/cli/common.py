"""What every CLI verb shares: how errors and Ctrl-C end a verb, the demo model's default folder, and the tables
verbs print.

Kept apart from the package's __init__ (which builds the command group) so that the verb modules never import it.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from .. import interrupt
from ..errors import UserError
from ..logs import terminal_err, terminal_out

DEFAULT_MODEL_DIR = Path("models/SmolLM2-135M-Instruct")


def friendly_errors(fn):
    """UserError (and a missing file) -> one red line and exit code 1; --debug shows the traceback.
    Ctrl-C at any stage -> our one line and exit code 130 (see `interrupt`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        try:
            with interrupt.handling_interrupts():
                return fn(*args, **kwargs)
        except UserError as exc:
            if ctx.find_root().params.get("debug") and not interrupt.requested():
                raise
            if interrupt.requested():
                interrupt.say_interrupted()
                sys.exit(130)
            click.secho(f"error: {exc}", fg="red", file=terminal_err())
            sys.exit(1)
        except KeyboardInterrupt:
            interrupt.say_interrupted()
            sys.exit(130)
        except BaseException:
            # Ctrl-C that a library turned into another exception or an exit status on its way out
            if interrupt.requested() and not ctx.find_root().params.get("debug"):
                interrupt.say_interrupted()
                sys.exit(130)
            raise

    return wrapper


def cell(value, digits: int) -> str:
    """A table cell: '-' for a missing value, floats to `digits` decimals."""
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_tables(*tables) -> None:
    """Rich tables on the terminal (not into the verb's log file, where third-party output goes)."""
    from rich.console import Console

    console = Console(file=terminal_out())
    for table in tables:
        console.print(table)


def table(title: str, columns: list[str], rows: list[list[str]], justify: dict[str, str] | None = None):
    """A rich Table; every column right-aligned unless `justify` says otherwise."""
    from rich.table import Table

    out = Table(title=title)
    for col in columns:
        out.add_column(col, justify=(justify or {}).get(col, "right"))  # type: ignore[arg-type]
    for row in rows:
        out.add_row(*row)
    return out
