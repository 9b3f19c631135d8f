"""Issue 12: nothing of the user's is lost, nothing unfinished passes for done.

--force deletes only what a run wrote; a finished round is one whose files all exist; one run per folder at a time
(two real processes); Ctrl-C at any stage is exit 130 with our one line (real SIGINT to the process group), and
--resume then finishes; a failed first attempt does not block the corrected retry; a changed pool is named; a
report over a stopped run says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from test_loop_integration import write_recipe

from diverse_axolotl.cli import main
from diverse_axolotl.errors import UserError
from diverse_axolotl.interrupt import LINE as INTERRUPTED
from diverse_axolotl.loop import LOCK_NAME, Loop, RunLock
from diverse_axolotl.recipe import load_recipe

CLI = str(Path(sys.executable).parent / "diverse-axolotl")


def _recipe(
    folder: Path, model: Path, pool: Path, name: str = "recipe.yaml", output_dir: str = "run", **selection
) -> Path:
    """A small recipe (no training needed for most tests here)."""
    recipe = {
        "base_model": str(model),
        "adapter": "lora",
        "sequence_len": 128,
        "output_dir": output_dir,
        "selection": {
            "pool": {"path": str(pool), "format": "alpaca"},
            "selector": {"name": "kcenter"},
            "seed_size": 4,
            "per_round": 4,
            "rounds": 1,
            **selection,
        },
    }
    path = folder / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def _fake_earlier_run(root: Path, trained_round_0: bool, pool_sha256: str | None = None) -> None:
    """The files an earlier run of another recipe left: run.json, round_0 (with or without a trained adapter)."""
    (root / "round_0" / "adapter").mkdir(parents=True)
    (root / "run.json").write_text(
        json.dumps({"recipe_hash": "another", "recipe_file": "/elsewhere/old.yaml", "pool_sha256": pool_sha256})
    )
    (root / "round_0" / "manifest.json").write_text(json.dumps({"indices": [0, 1]}))
    (root / "summary.json").write_text("[]")
    (root / ".run.json.abc123.tmp").write_text("")
    if trained_round_0:
        for name in ("adapter_config.json", "adapter_model.safetensors", "train_result.json"):
            (root / "round_0" / "adapter" / name).write_text("{}")


# -- item 1: --force ------------------------------------------------------------------------------------------
def test_force_deletes_only_what_a_run_wrote(tmp_path, tiny_model, pool_file):
    notes = tmp_path / "notes.md"
    notes.write_text("my notes")
    # output_dir: . beside the recipe, the pool and the notes: refused before anything runs, --force or not
    _recipe(tmp_path, tiny_model, pool_file, output_dir=".")
    second = _recipe(tmp_path, tiny_model, pool_file, name="recipe2.yaml", output_dir=".", seed=1)
    for args in (["validate", str(second), "--skip-axolotl"], ["run", str(second), "--force"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and "holds the recipe" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.md", "pool.json", "recipe.yaml", "recipe2.yaml"]
    assert notes.read_text() == "my notes"

    # a run folder that also holds the user's files: --force removes the run's files and keeps the rest
    work = tmp_path / "work"
    _fake_earlier_run(work, trained_round_0=True)
    (work / "keep.txt").write_text("mine")
    (work / "plots").mkdir()
    loop = Loop(load_recipe(_recipe(tmp_path, tiny_model, pool_file, output_dir="work")))
    with pytest.raises(UserError, match="different recipe"):
        loop.prepare()
    loop.prepare(force=True)
    assert sorted(p.name for p in work.iterdir()) == ["keep.txt", "plots", "run.json"]
    assert json.loads((work / "run.json").read_text())["recipe_hash"] == loop.recipe.hash

    # a non-empty folder that holds no run is refused, with --force too
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("1,2")
    loop = Loop(load_recipe(_recipe(tmp_path, tiny_model, pool_file, output_dir="other")))
    for force in (False, True):
        with pytest.raises(UserError, match=r"not empty and holds no run \(it has data.csv\)"):
            loop.prepare(force=force)
    assert sorted(p.name for p in other.iterdir()) == ["data.csv"]


# -- item 6: a failed first attempt does not block the corrected retry -------------------------------------------
def test_a_run_that_never_trained_round_0_does_not_block_a_retry(tmp_path, tiny_model, pool_file):
    _fake_earlier_run(tmp_path / "run", trained_round_0=False)
    loop = Loop(load_recipe(_recipe(tmp_path, tiny_model, pool_file)))
    loop.prepare()  # no "different recipe", no --force needed
    assert json.loads((tmp_path / "run" / "run.json").read_text())["recipe_hash"] == loop.recipe.hash
    assert not (tmp_path / "run" / "round_0").exists()


def test_a_failed_run_leaves_nothing_behind(tmp_path, tiny_model, pool_file):
    """A run that fails before writing anything (here: Axolotl's check of the recipe) removes the folder it made."""
    result = CliRunner().invoke(main, ["run", str(_recipe(tmp_path, tiny_model, pool_file))])
    assert result.exit_code == 1 and "Axolotl rejected" in result.output, result.output
    assert not (tmp_path / "run").exists()


# -- item 8: a pool edited after a run ----------------------------------------------------------------------------
def test_an_edited_pool_is_named_with_the_run(tmp_path, tiny_model, pool_file):
    _fake_earlier_run(tmp_path / "run", trained_round_0=True, pool_sha256="f" * 64)
    loop = Loop(load_recipe(_recipe(tmp_path, tiny_model, pool_file)))
    with pytest.raises(UserError) as err:
        loop.prepare()
    message = str(err.value)
    assert f"the content of the pool {pool_file} changed" in message
    assert f"the run in {tmp_path / 'run'} (started by /elsewhere/old.yaml)" in message


# -- item 8: report over an unfinished run --------------------------------------------------------------------------
def test_report_on_an_unfinished_run_says_so(tmp_path):
    run = tmp_path / "run"
    (run / "round_0").mkdir(parents=True)
    (run / "round_1").mkdir()
    (run / "run.json").write_text(
        json.dumps({"recipe": {"selection": {"selector": {"name": "kcenter"}, "seed": 0, "rounds": 2}}})
    )
    (run / "round_0" / "manifest.json").write_text(json.dumps({"indices": list(range(8)), "entered_round": [0] * 8}))
    (run / "round_0" / "done.json").write_text(json.dumps({"round": 0, "rows": 8, "train_loss": 2.0, "train_s": 1.0}))
    (run / "round_1" / "manifest.json").write_text(
        json.dumps({"indices": list(range(14)), "entered_round": [0] * 8 + [1] * 6})
    )
    result = CliRunner().invoke(main, ["report", str(run), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert f"note: {run} is unfinished: rounds 0 trained of 3 (0..2)" in result.output
    md = (tmp_path / "report" / "report.md").read_text()
    assert "unfinished: rounds 0 trained of 3" in md
    assert "| 8 | 2 |" in md and "| 14 |" not in md  # round 0's loss is there, round 1 (selected only) is not


# -- item 3: one run per folder --------------------------------------------------------------------------------------
def _env(folder: Path, **extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DIVERSE_AXOLOTL_CACHE": str(folder / "cache")}
    for key in ("DIVERSE_AXOLOTL_FAILPOINT", "DIVERSE_AXOLOTL_PAUSE", "DIVERSE_AXOLOTL_PAUSE_MARKER"):
        env.pop(key, None)
    return {**env, **extra}


def _start_paused(recipe: Path, point: str, *args: str) -> tuple[subprocess.Popen, Path]:
    """A real `run` in its own process group, waiting at pause point `point` (the marker file says it is there)."""
    marker = recipe.parent / f"paused-{point.replace(':', '-')}"
    marker.unlink(missing_ok=True)
    env = _env(recipe.parent, DIVERSE_AXOLOTL_PAUSE=point, DIVERSE_AXOLOTL_PAUSE_MARKER=str(marker))
    proc = subprocess.Popen(
        [CLI, "run", str(recipe), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"never reached pause point {point} (exit {proc.returncode}): {err[-3000:]}")
        time.sleep(0.1)
    return proc, marker


def _ctrl_c(proc: subprocess.Popen) -> tuple[int, str]:
    """Ctrl-C as a terminal sends it: SIGINT to the whole process group."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"Ctrl-C did not end the run: {err[-3000:]}")
    return proc.returncode, err


def _our_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def test_a_second_run_on_the_same_folder_is_refused(tmp_path, tiny_model, pool_file):
    recipe = write_recipe(
        tmp_path, tiny_model, pool_file, selection={"rounds": 0}
    )  # without the lock, both would train
    first, _ = _start_paused(recipe, "locked")
    try:
        second = subprocess.run(
            [CLI, "run", str(recipe)], env=_env(tmp_path), capture_output=True, text=True, timeout=300
        )
        lines = _our_lines(second.stderr)
        assert second.returncode == 1, second.stderr[-3000:]
        assert len(lines) == 1 and f"is in use by another run (pid {first.pid} on " in lines[0], second.stderr[-3000:]
        assert not (tmp_path / "run" / "run.json").exists()
    finally:
        code, err = _ctrl_c(first)
    assert code == 130 and _our_lines(err)[-1].endswith(INTERRUPTED), err[-3000:]
    assert not (tmp_path / "run").exists()  # the lock went with its holder, and so did the folder it made


def test_a_stale_lock_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": "here", "command": "old run"}))
    with RunLock(tmp_path):
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(UserError, match=f"in use by another run \\(pid {os.getpid()} on "):
            RunLock(tmp_path).acquire()  # a second lock in the same folder (here: from this process) is refused
    assert not (tmp_path / LOCK_NAME).exists()


# -- items 4 and 2: Ctrl-C at every stage, --resume, and a finished round missing a file -----------------------
@pytest.mark.slow
def test_ctrl_c_anywhere_exits_130_and_missing_files_are_redone(tmp_path, tiny_model, pool_file):
    # float32 embeddings: dtype auto decides per process by timing bf16 against fp32 on a CPU
    embedding = {"max_length": 128, "batch_tokens": 2048, "dtype": "float32"}
    recipe = write_recipe(tmp_path, tiny_model, pool_file, selection={"rounds": 1, "embedding": embedding})
    run = tmp_path / "run"
    # during Axolotl's training loop of round 0; then round 1's dataset preparation, after round 0 finished training
    # (Axolotl's own SIGINT handler, which exits 0, would have been installed by then)
    for point in ("training-step", "datasets:round_1"):
        proc, _ = _start_paused(recipe, point)
        code, err = _ctrl_c(proc)
        assert code == 130, (point, err[-3000:])
        assert _our_lines(err)[-1].endswith(INTERRUPTED) and "Traceback" not in err, (point, err[-3000:])
    assert (run / "round_0" / "done.json").is_file() and not (run / "round_1" / "done.json").exists()

    resumed = subprocess.run(
        [CLI, "run", str(recipe), "--resume"], env=_env(tmp_path), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "round 0: finished earlier, reusing it" in resumed.stderr

    # item 2: files of finished rounds deleted -> each is redone, and comes out the same
    adapter = (run / "round_1" / "adapter" / "adapter_model.safetensors").read_bytes()
    embeddings = np.load(run / "round_0" / "embeddings.npy")
    train_file = (run / "round_0" / "train.jsonl").read_text()
    for path in (run / "round_0" / "embeddings.npy", run / "round_0" / "train.jsonl"):
        path.unlink()
    for path in (run / "round_1" / "adapter").iterdir():
        path.unlink()
    (run / "round_1" / "adapter").rmdir()
    env = _env(tmp_path, DIVERSE_AXOLOTL_CACHE=str(tmp_path / "empty-cache"))  # embeddings recomputed, not fetched
    again = subprocess.run([CLI, "run", str(recipe), "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "round 0: finished earlier, but lacks round_0/train.jsonl, round_0/embeddings.npy" in again.stderr
    assert "round 1: finished earlier, but lacks round_1/adapter/" in again.stderr
    assert "finished earlier, reusing it" not in again.stderr
    assert (run / "round_0" / "train.jsonl").read_text() == train_file
    assert np.array_equal(np.load(run / "round_0" / "embeddings.npy"), embeddings)
    assert (run / "round_1" / "adapter" / "adapter_model.safetensors").read_bytes() == adapter
    assert len(json.loads((run / "summary.json").read_text())) == 2
