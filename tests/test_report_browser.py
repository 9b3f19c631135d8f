"""report.html opened in headless Chromium (Debian package `chromium`), as a user would open it: from file://,
every <img> must have loaded and the tables must be on screen.

Chromium is driven through the DevTools protocol over `--remote-debugging-pipe` (fd 3: commands in, fd 4: replies
out, each message JSON ended by a NUL byte), so no Python package beyond the standard library is needed and the page
is opened directly, with no harness page and no relaxed file:// security flags.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from fakes import fake_run

from diverse_axolotl.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
)
TIMEOUT_S = 60.0

# Runs in the page once its load event has fired (images included): what a user would see.
PAGE_STATE = """(() => {
  const shown = (el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  return {
    url: location.href,
    readyState: document.readyState,
    images: [...document.images].map((img) => ({
      src: img.getAttribute("src"), complete: img.complete, naturalWidth: img.naturalWidth,
      naturalHeight: img.naturalHeight, shown: shown(img),
    })),
    tables: [...document.querySelectorAll("table")].map((t) => ({rows: t.rows.length, shown: shown(t)})),
  };
})()"""


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A headless Chromium spoken to over the DevTools pipe (fd 3 / fd 4 of the child)."""

    def __init__(self, binary: str):
        self.profile = tempfile.mkdtemp(prefix="da-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # Chromium wants the pipe as its fd 3 and fd 4: move the child's ends out of the way (>= 10), then let a tiny
        # Python shim put them in place and exec the browser (dash's `3<&N` takes no N above 9).
        child_r, child_w = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_child_r, from_child_w))
        os.close(to_child_r)
        os.close(from_child_w)
        self.log = tempfile.TemporaryFile()  # Chromium's stderr, shown when it dies (a pipe nobody reads could fill up)
        shim = (
            f"import os, sys; os.dup2({child_r}, 3); os.dup2({child_w}, 4); os.close({child_r}); os.close({child_w}); "
            "os.execv(sys.argv[1], sys.argv[1:])"
        )
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", shim, binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self.log,
                pass_fds=(child_r, child_w),
            )
        finally:
            os.close(child_r)
            os.close(child_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = TIMEOUT_S):
        """Send one command; wait for its reply (keeping the events that arrive meanwhile); return its result."""
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        try:
            os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        except BrokenPipeError:
            raise RuntimeError(
                f"Chromium is gone (exit {self.proc.poll()}) before {method}\n{self.stderr_tail()}"
            ) from None
        reply = self._wait(lambda m: m.get("id") == self._next_id, timeout, method)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait_event(self, method: str, session: str, timeout: float = TIMEOUT_S) -> dict:
        for i, event in enumerate(self.events):
            if event.get("method") == method and event.get("sessionId") == session:
                return self.events.pop(i)
        return self._wait(lambda m: m.get("method") == method and m.get("sessionId") == session, timeout, method)

    def _wait(self, want, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                msg = json.loads(raw)
                if want(msg):
                    return msg
                if "method" in msg:
                    self.events.append(msg)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"Chromium gave no answer to {what} within {timeout:.0f} s")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 16)
                if not chunk:
                    raise RuntimeError(
                        f"Chromium closed the DevTools pipe while waiting for {what}\n{self.stderr_tail()}"
                    )
                self._buffer += chunk

    def stderr_tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def open(self, url: str) -> dict:
        """Open url in a fresh tab, wait for its load event, return PAGE_STATE."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            self.send("Page.enable", session=session)
            nav = self.send("Page.navigate", {"url": url}, session=session)
            if nav.get("errorText"):
                raise RuntimeError(f"Chromium could not open {url}: {nav['errorText']}")
            self.wait_event("Page.loadEventFired", session)
            result = self.send("Runtime.evaluate", {"expression": PAGE_STATE, "returnByValue": True}, session=session)
            if "exceptionDetails" in result:
                raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
            return result["result"]["value"]
        finally:
            self.send("Target.closeTarget", {"targetId": target})

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.send("Browser.close", timeout=10)
                self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - never leave a browser behind
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log.close()
            os.close(self._to_child)
            os.close(self._from_child)
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    binary = find_browser()
    if binary is None:
        pytest.skip(f"no Chromium binary on PATH (looked for {', '.join(BROWSERS)}); Debian: apt-get install chromium")
    chromium = Chromium(binary)
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    base = tmp_path_factory.mktemp("browser report")  # a space in the path: the page must still load
    rng = np.random.default_rng(0)
    runs = [
        fake_run(base / "runs" / "kc0", "kcenter", 0, 0.0, rng),
        fake_run(base / "runs" / "rand", "random", 0, -0.1, rng),
    ]
    return write_report(runs, base / "report")


def broken_images(state: dict) -> list[str]:
    return [
        f"{img['src']} (complete={img['complete']}, naturalWidth={img['naturalWidth']}, shown={img['shown']})"
        for img in state["images"]
        if not (img["complete"] and img["naturalWidth"] > 0 and img["shown"])
    ]


def test_report_page_loads_its_images_in_chromium(browser, report):
    url = report["html"].resolve().as_uri()
    state = browser.open(url)
    assert state["url"] == url and state["readyState"] == "complete"
    assert len(state["images"]) == len(report["pngs"]) >= 8
    assert broken_images(state) == []
    assert {(img["naturalWidth"], img["naturalHeight"]) for img in state["images"]} == {(800, 480)}
    assert sorted(img["src"] for img in state["images"]) == sorted(p.name for p in report["pngs"])
    page = report["html"].read_text()
    assert len(state["tables"]) == page.count("<table") >= 2
    assert all(t["shown"] and t["rows"] >= 2 for t in state["tables"]), state["tables"]  # header + at least one row


def test_a_missing_png_is_caught(browser, report, tmp_path):
    """The check itself: the same page with one PNG gone must report exactly that image as broken."""
    copy = tmp_path / "report"
    shutil.copytree(report["html"].parent, copy)
    gone = report["pngs"][0].name
    (copy / gone).unlink()
    state = browser.open((copy / "report.html").as_uri())
    broken = broken_images(state)
    assert len(broken) == 1 and broken[0].startswith(f"{gone} ("), broken
