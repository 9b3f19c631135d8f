"""Test hooks at exact places of a run: die there (SIGKILL, like a lost machine) or wait there for a signal.

The environment names the point; unset, each hook costs one dictionary look-up. The loop, the Axolotl bridge and
our Axolotl plugin call them, so they live apart from all three.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

FAILPOINT_ENV = "DIVERSE_AXOLOTL_FAILPOINT"


def failpoint(name: str) -> None:
    """Die at once (SIGKILL, like a lost machine) when the environment names this point; tests use it to
    interrupt a run at exact places and check that resuming gives the same result as never stopping."""
    if os.environ.get(FAILPOINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


PAUSE_ENV = "DIVERSE_AXOLOTL_PAUSE"
PAUSE_MARKER_ENV = "DIVERSE_AXOLOTL_PAUSE_MARKER"


def pause_point(name: str) -> None:
    """Wait here (touching the marker file first) when the environment names this point, until a signal ends
    the wait: tests deliver Ctrl-C, or start a second run, at an exact stage instead of racing the clock."""
    if os.environ.get(PAUSE_ENV) != name:
        return
    marker = os.environ.get(PAUSE_MARKER_ENV)
    if marker:
        Path(marker).write_text(str(os.getpid()))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        time.sleep(0.05)
