"""What a user sees in a real terminal session: the CLI run as a process, not through CliRunner.

Warnings that libraries print while being imported escape CliRunner's capture, so only a real process shows
whether third-party noise (torch, torchao, bitsandbytes, transformers, Axolotl, lm-eval) reaches the terminal.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata

import pytest
import yaml
from conftest import ROOT
from test_bad_input import GOOD, POOL_ROWS
from test_loop_integration import write_recipe

from diverse_axolotl import __version__

# Every line our `run` prints, and nothing else.
PLAIN_PROGRESS = r".*: [\d,]+/[\d,]+ \w+ \(\d+%\), [\d,.]+ \w+/s, .* elapsed.*"
OUR_RUN_LINES = [
    r"round \d+: training on \d+ rows with Axolotl \(log: .*axolotl\.log\)",
    r"embedding and scoring in (float32|bfloat16) on (cpu|cuda) \(selection\.embedding\.dtype: .*\)",
    r"\s*summary \(seconds per stage; trunc: rows longer than sequence_len, truncated\)\s*",
    r"[┏┃┡│└].*",
    r"run folder: .* \(summary in summary\.json\)",
    PLAIN_PROGRESS,  # a stage past a minute on a slow machine: the progress line a log gets instead of a bar
]


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "diverse_axolotl", *args], capture_output=True, text=True, cwd=cwd, timeout=900
    )


def lines_of(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


@pytest.mark.slow
def test_validate_with_axolotl_prints_exactly_one_line(tmp_path, tiny_model):
    """The full check imports Axolotl (and with it torch, torchao, bitsandbytes): none of their output shows."""
    (tmp_path / "pool.json").write_text(json.dumps(POOL_ROWS))
    recipe = {**json.loads(json.dumps(GOOD)), "base_model": str(tiny_model), "lora_rr": 8}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    proc = cli("validate", str(tmp_path / "recipe.yaml"))
    assert proc.returncode == 1, proc.stderr
    lines = lines_of(proc)
    assert len(lines) == 1, "\n".join(lines)
    assert lines[0].startswith("error: ") and "unknown key 'lora_rr' (did you mean 'lora_r'?)" in lines[0]


@pytest.mark.slow
def test_run_prints_only_our_progress_and_tables(tmp_path, tiny_model, pool_file):
    recipe = write_recipe(tmp_path, tiny_model, pool_file, {"rounds": 1})
    proc = cli("run", str(recipe))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = lines_of(proc)
    foreign = [line for line in lines if not any(re.fullmatch(p, line) for p in OUR_RUN_LINES)]
    assert not foreign, "\n".join(foreign)
    assert sum(line.startswith("round ") and not re.fullmatch(PLAIN_PROGRESS, line) for line in lines) == 2
    # The third-party output went somewhere a user can read it: the rounds' logs.
    assert (tmp_path / "run" / "round_0" / "axolotl.log").stat().st_size > 0


def test_listing_selectors_prints_no_foreign_line():
    proc = cli("selectors", "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "kcenter" in json.loads(proc.stdout)["selectors"]


def test_debug_shows_the_original_exception_with_its_traceback(tmp_path):
    """The process-level twin of test_bad_input.py::test_debug_shows_the_traceback."""
    missing = tmp_path / "missing.yaml"
    proc = cli("--debug", "validate", str(missing))
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert f"diverse_axolotl.errors.UserError: {missing}: no such recipe file" in proc.stderr
    plain = cli("validate", str(missing))
    assert lines_of(plain) == [f"error: {missing}: no such recipe file"]


def test_one_version_string():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert __version__ == metadata.version("diverse-axolotl") == pyproject
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.split()[-1] == pyproject


@pytest.mark.parametrize("verb", ["run", "validate", "select", "selectors", "eval", "report", "init", "prepare-model"])
def test_every_verbs_help_reaches_the_terminal(verb):
    """`diverse-axolotl <verb> --help` prints its usage (it once went into the verb's log file, and -h too)."""
    for flag in ("--help", "-h"):
        proc = cli(verb, flag)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"Usage: diverse-axolotl {verb} "), proc.stdout[:200]
