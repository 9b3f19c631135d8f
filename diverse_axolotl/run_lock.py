"""One run per folder: an exclusive lock on the run folder, held while a run trains into it."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import UserError
from .run_paths import LOCK_NAME


class RunLock:
    """An exclusive lock on a run folder, so that two runs never train into one folder at once.

    flock() on `output_dir/.diverse-axolotl.lock`: the kernel drops it when the process ends, however it ends, so
    a lock file left by a killed run is stale and simply taken over. The file names the holder (pid, host,
    start time, command) for the message the second run prints; where flock is unsupported (some network file
    systems) the pid in the file decides whether the holder is still alive.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self._fd: int | None = None
        self._made_root = False

    def acquire(self) -> None:
        self._made_root = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked = self._flock(fd)
            except BaseException:
                os.close(fd)
                raise
            if not locked:
                holder = self._holder(fd)
                os.close(fd)
                self._refuse(holder)
            try:  # the holder before us may have removed the file meanwhile: lock the file that is there now
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": " ".join(sys.argv),
        }
        os.write(fd, json.dumps(info).encode())
        self._fd = fd

    def _flock(self, fd: int) -> bool:
        """True when this process now holds the lock."""
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError:  # no flock here: trust the pid in the file, if that process still runs on this host
            holder = self._holder(fd)
            return not (holder.get("host") == socket.gethostname() and _pid_alive(holder.get("pid")))

    @staticmethod
    def _holder(fd: int) -> dict:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return json.loads(os.read(fd, 1 << 16).decode() or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, holder: dict) -> None:
        pid = holder.get("pid", "unknown")
        alive = "" if _pid_alive(holder.get("pid")) else ", no longer running: a process it started still holds it"
        raise UserError(
            f"{self.root} is in use by another run (pid {pid} on {holder.get('host', 'unknown host')}{alive},"
            f" started {holder.get('started', '?')}: {holder.get('command', '?')}); wait for it to end or stop it"
        )

    def release(self) -> None:
        """Remove the lock file (while still holding it), then let go; a folder this run made and left empty
        goes too, so a run that failed early leaves nothing behind."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
        if self._made_root:
            try:
                self.root.rmdir()  # only succeeds when empty
            except OSError:
                pass

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
