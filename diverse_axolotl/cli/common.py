"""What every CLI verb shares: how errors and Ctrl-C end a verb, and the demo model's default folder.

Kept apart from cli.py so that the modules adding verbs (cli_eval) need not import the main command group.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from . import interrupt
from .errors import UserError
from .logs import terminal_err

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
