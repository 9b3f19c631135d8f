"""Ctrl-C: whatever stage it hits, the command prints one line of ours and exits with status 130.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be, and third-party code does not
always let it through: Axolotl's trainer installs a handler that exits 0 (see `training.our_sigint`), dataset
preparation can wrap the interrupt in another exception, and an interrupt that lands inside a library's lock can
leave the process hung. So the handler records that an interruption was asked for (the CLI then reports any
exception as the interruption), and gives the orderly way out a few seconds before leaving at once. Leaving at
once loses nothing: every file is written atomically and the run folder's lock is released by the kernel.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

LINE = "interrupted: finished rounds are kept; continue with --resume"
#: Seconds the orderly exit (finally blocks, lock release) may take after Ctrl-C before the process leaves anyway.
GRACE_S = 10.0

_requested = threading.Event()
_said = threading.Lock()


def requested() -> bool:
    """Whether Ctrl-C arrived during the current command."""
    return _requested.is_set()


def say_interrupted() -> None:
    """Our one line, printed once even if the watchdog and the orderly exit race."""
    if not _said.acquire(blocking=False):
        return
    import click

    from .logs import terminal_err

    click.secho(LINE, fg="yellow", file=terminal_err())


def _leave_now() -> None:
    with contextlib.suppress(Exception):
        say_interrupted()
    os._exit(130)


_finished = threading.Event()


def _watchdog() -> None:
    if not _finished.wait(GRACE_S):
        _leave_now()


def _on_sigint(signum, frame) -> None:
    """First Ctrl-C: KeyboardInterrupt for an orderly exit, bounded by GRACE_S; a second one leaves at once."""
    if _requested.is_set():
        _leave_now()
    _requested.set()
    threading.Thread(target=_watchdog, name="ctrl-c watchdog", daemon=True).start()
    raise KeyboardInterrupt


@contextlib.contextmanager
def handling_interrupts():
    """Our SIGINT handler for the duration of a command (main thread only; elsewhere Python's stays)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested.clear()
    _finished.clear()
    if _said.locked():
        _said.release()
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        if not _requested.is_set():  # after Ctrl-C the watchdog guards the rest of the exit too
            _finished.set()
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
