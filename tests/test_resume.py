"""A run killed (SIGKILL) at several points and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import filecmp
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_loop_integration import write_recipe

CLI = str(Path(sys.executable).parent / "diverse-axolotl")


def run_cli(recipe: Path, *args: str, failpoint: str | None = None) -> subprocess.CompletedProcess:
    # a cache per run folder: run b must compute its own embeddings, not reuse run a's
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DIVERSE_AXOLOTL_CACHE": str(recipe.parent / "cache")}
    env.pop("DIVERSE_AXOLOTL_FAILPOINT", None)
    if failpoint:
        env["DIVERSE_AXOLOTL_FAILPOINT"] = failpoint
    return subprocess.run([CLI, "run", str(recipe), *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_killed_and_resumed_equals_uninterrupted(tmp_path, tiny_model, pool_file):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = write_recipe(tmp_path / "a", tiny_model, pool_file)
    broken = write_recipe(tmp_path / "b", tiny_model, pool_file)
    done = run_cli(straight)
    assert done.returncode == 0, done.stderr

    # during training of round 1, while embedding after round 1, between round 2's two files
    for point in ("train:1", "embed:1", "between-files:2"):
        killed = run_cli(broken, failpoint=point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-2000:])
    assert not (tmp_path / "b" / "run" / "round_2" / "done.json").exists()
    resumed = run_cli(broken, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "finished earlier" in resumed.stderr

    a, b = tmp_path / "a" / "run", tmp_path / "b" / "run"
    for k in range(3):
        assert filecmp.cmp(a / f"round_{k}" / "train.jsonl", b / f"round_{k}" / "train.jsonl", shallow=False)
        ma, mb = (json.loads((run / f"round_{k}" / "manifest.json").read_text()) for run in (a, b))
        ma.pop("timings", None), mb.pop("timings", None)
        assert ma == mb
    for k in range(2):
        assert np.array_equal(
            np.load(a / f"round_{k}" / "embeddings.npy"), np.load(b / f"round_{k}" / "embeddings.npy")
        )
    leftovers = [p for p in b.rglob("*") if ".partial" in p.name or p.name.endswith(".tmp")]
    assert leftovers == []
