"""Keeping the terminal readable: only our own messages reach it.

Two layers. `only_our_output` wraps a whole CLI verb: whatever torch, torchao, bitsandbytes, transformers, Axolotl
or lm-eval print (warnings at import time, log records, "Failed to load" lines from C extensions) goes to the verb's
log file, while our messages go to the terminal through `terminal_out()` / `terminal_err()`. Inside it, `logs_to`
sends one stage's output (a round's Axolotl training, an lm-eval run) to that stage's own log in the run folder.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from pathlib import Path


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    return [
        h for lg in loggers for h in lg.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) and _writes_to_a_file(h)
    ]


def _writes_to_a_file(handler: logging.StreamHandler) -> bool:
    """Handlers writing to a terminal or file; in-memory ones (pytest's log capture) and those whose stream is
    computed (logging's last-resort stderr handler) are left alone."""
    if "stream" not in vars(handler):
        return False
    try:
        handler.stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def _swap_stream(handler: logging.StreamHandler, stream):
    """Point a handler at `stream` and return its old one (without flushing it: it may be closed)."""
    with handler.lock:  # type: ignore[union-attr]
        old, handler.stream = handler.stream, stream
    return old


@contextlib.contextmanager
def logs_to(log_file: Path, python_streams: bool = True):
    """Send everything printed meanwhile to `log_file`: log records (root at INFO), Python prints, other
    libraries' progress bars, C extensions and subprocesses (file descriptors 1 and 2 are redirected).

    Axolotl configures its log handlers with the stdout of its import time and wraps sys.stdout (colorama, a tee
    into its output_dir), so existing stream handlers are pointed at the file for the duration, handlers created
    meanwhile are pointed back at stderr, and the sys streams are restored afterwards. Our own progress bars
    still reach the terminal (see `progress`). Import Axolotl with `python_streams=False`: it wraps whatever
    sys.stdout is at import time for good.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", encoding="utf-8") as fh:
        handlers = _stream_handlers()
        saved_streams = [_swap_stream(h, fh) for h in handlers]
        root = logging.getLogger()
        file_handler = logging.StreamHandler(fh)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        saved_level = root.level
        root.addHandler(file_handler)
        root.setLevel(logging.INFO)
        saved_sys = sys.stdout, sys.stderr  # Axolotl wraps these (colorama, a tee into output_dir/debug.log)
        for stream in saved_sys:
            stream.flush()
        saved_fds = [os.dup(1), os.dup(2)]
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        if python_streams:  # Python-level writers too (tqdm under a test runner's capture)
            sys.stdout = sys.stderr = fh
        try:
            yield fh
        finally:
            for stream in (sys.stdout, sys.stderr, fh):
                with contextlib.suppress(ValueError):  # a wrapper whose file Axolotl has closed
                    stream.flush()
            sys.stdout, sys.stderr = saved_sys
            root.removeHandler(file_handler)
            root.setLevel(saved_level)
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            for handler, stream in zip(handlers, saved_streams, strict=True):
                _swap_stream(handler, stream)
            for handler in _stream_handlers():  # made meanwhile (e.g. Axolotl's import) with fh as their stream
                if handler.stream is fh:
                    _swap_stream(handler, saved_sys[1])


class _Diverted(io.TextIOBase):
    """sys.stdout and sys.stderr while a verb runs: writes go to the verb's log. Libraries keep references to
    whatever sys.stdout/sys.stderr were when they set up (log handlers, Axolotl's stdout wrapper); those stay
    valid after the verb, when writes fall back to the process's own stderr."""

    def __init__(self) -> None:
        super().__init__()
        self.target = None

    def _stream(self):
        return self.target if self.target is not None and not self.target.closed else sys.__stderr__

    def write(self, text: str) -> int:
        return self._stream().write(text)

    def flush(self) -> None:
        self._stream().flush()

    def fileno(self) -> int:
        return self._stream().fileno()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


_diverted = _Diverted()

#: The streams our own messages go to while `only_our_output` is active (None: sys.stdout / sys.stderr).
_terminal: dict[str, object] = {"out": None, "err": None}


def terminal_out():
    """Where our regular output (tables, the plan, listings) goes."""
    return _terminal["out"] or sys.stdout


def terminal_err():
    """Where our messages, errors and progress bars go."""
    return _terminal["err"] or sys.stderr


def verb_terminal_err():
    """The terminal's error stream while a CLI verb diverts third-party output, else None."""
    return _terminal["err"]


def say(message: str) -> None:
    """One line of ours on the terminal's error stream (progress messages of the loop)."""
    print(message, file=terminal_err(), flush=True)


def echo(message: str = "", **style) -> None:
    """Our regular output (click's secho: colours only on a terminal), never diverted."""
    import click

    click.secho(message, file=terminal_out(), **style)


def default_log_dir() -> Path:
    """Where each CLI verb's third-party output goes: the cache folder's logs/."""
    from .cache import cache_root

    return cache_root() / "logs"


def _own_stream(stream, fd: int):
    """A stream of ours on what `stream` writes to, that survives fd `fd` being redirected: a new stream on a
    duplicate of the fd when `stream` writes to it directly (a terminal, a pipe), else `stream` itself (an
    in-memory stream such as click's CliRunner)."""
    try:
        writes_to_fd = stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        writes_to_fd = False
    if not writes_to_fd:
        return stream, False
    stream.flush()
    own = os.fdopen(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8",
                    errors="backslashreplace")
    return own, True


@contextlib.contextmanager
def only_our_output(log_file: Path):
    """For the duration of a verb, third-party output of every kind goes to `log_file` (rewritten each time):
    file descriptors 1 and 2, sys.stdout and sys.stderr (prints, Python warnings, progress bars of libraries) and
    existing log handlers. Our own output goes through `echo` / `say` (`terminal_out()` / `terminal_err()`),
    which stay on the terminal."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text("", encoding="utf-8")
    out, own_out = _own_stream(sys.stdout, 1)
    err, own_err = _own_stream(sys.stderr, 2)
    previous = dict(_terminal)
    _terminal.update(out=out, err=err)
    try:
        with logs_to(log_file) as fh:
            _diverted.target = fh
            sys.stdout = sys.stderr = _diverted
            yield
    finally:
        _diverted.target = None
        _terminal.update(previous)
        for stream, owned in ((out, own_out), (err, own_err)):
            with contextlib.suppress(ValueError, OSError):
                stream.flush()
                if owned:
                    stream.close()
