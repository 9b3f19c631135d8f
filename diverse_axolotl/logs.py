"""Keeping the terminal readable: Axolotl's and lm-eval's output goes to log files in the run folder."""

from __future__ import annotations

import contextlib
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
    with handler.lock:
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
            yield
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
            for handler, stream in zip(handlers, saved_streams):
                _swap_stream(handler, stream)
            for handler in _stream_handlers():  # made meanwhile (e.g. Axolotl's import) with fh as their stream
                if handler.stream is fh:
                    _swap_stream(handler, saved_sys[1])
