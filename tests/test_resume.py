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


def stoppable_embedding(monkeypatch) -> dict:
    """Pool embedding that records its batches after each one and counts its forward passes; set `stop_after` in
    the returned dict to raise KeyboardInterrupt inside batch stop_after + 1, before its rows are written."""
    from diverse_axolotl import embedding

    monkeypatch.setattr(embedding, "CHECKPOINT_S", 0.0)  # a record after every batch
    real_pool_hidden = embedding.pool_hidden
    forwards = {"n": 0, "stop_after": None}

    def counted(*args, **kwargs):
        forwards["n"] += 1
        if forwards["stop_after"] is not None and forwards["n"] > forwards["stop_after"]:
            raise KeyboardInterrupt
        return real_pool_hidden(*args, **kwargs)

    monkeypatch.setattr(embedding, "pool_hidden", counted)
    return forwards


def test_an_interrupted_embedding_continues_after_its_last_recorded_batch(tmp_path, tiny_model, monkeypatch):
    """A file left by an embedding stopped mid-way is continued under the same tag: only the batches it did not
    record run again, and the rows equal an uninterrupted embedding's; under another tag it starts over."""
    from diverse_axolotl import embedding
    from diverse_axolotl.inference import token_budget_batches
    from diverse_axolotl.models import load_model

    model = load_model(tiny_model, None, device="cpu", dtype="float32")
    rng = np.random.default_rng(0)
    ids = [rng.integers(5, 200, size=int(n)).tolist() for n in rng.integers(3, 40, size=30)]
    want = embedding.embed_token_ids(model, ids, 0, batch_tokens=64)
    n_batches = len(token_budget_batches([len(t) for t in ids], 64))
    assert n_batches > 6

    forwards = stoppable_embedding(monkeypatch)
    out = tmp_path / ".embeddings.partial.npy"

    def attempt(tag: str, stop_after: int | None):
        forwards.update(n=0, stop_after=stop_after)
        return embedding.embed_token_ids(model, ids, 0, batch_tokens=64, out=out, resume_tag=tag)

    with pytest.raises(KeyboardInterrupt):
        attempt("round 1", stop_after=4)
    assert json.loads(embedding.progress_file(out).read_text())["batches_done"] == 4
    got = attempt("round 1", stop_after=None)
    assert forwards["n"] == n_batches - 4
    np.testing.assert_array_equal(np.asarray(got), want)

    out.replace(tmp_path / "embeddings.npy")  # published, as the loop does, with its record removed
    embedding.progress_file(out).unlink()
    with pytest.raises(KeyboardInterrupt):
        attempt("round 1", stop_after=2)
    attempt("round 2", stop_after=None)  # another model or rows: nothing of the file is trusted
    assert forwards["n"] == n_batches


def test_an_interrupted_select_continues_its_pool_embedding(tmp_path, tiny_model, pool_file, monkeypatch):
    """`select` stopped (Ctrl-C) mid-embedding leaves the rows it recorded in the cache folder; the next `select`
    embeds only the rest, picks what an uninterrupted run picks, and leaves no partial file, record or lock."""
    from click.testing import CliRunner

    from diverse_axolotl import select_model
    from diverse_axolotl.cli import main

    forwards = stoppable_embedding(monkeypatch)

    def select(cache: Path, stop_after: int | None):
        monkeypatch.setenv("DIVERSE_AXOLOTL_CACHE", str(cache))
        forwards.update(n=0, stop_after=stop_after)
        out = cache.parent / f"{cache.name}.jsonl"
        args = ["select", pool_file, "--selector", "kcenter", "--param", "device=cpu", "--budget", "6"]
        result = CliRunner().invoke(main, [str(a) for a in [*args, "--model", tiny_model, "--out", out]])
        return result, out

    real_spec = select_model.embedding_spec  # small batches (the default 16,384 tokens hold this whole pool)
    monkeypatch.setattr(
        select_model,
        "embedding_spec",
        lambda causal, spec=None, selector=None: real_spec(causal, spec, selector).model_copy(
            update={"batch_tokens": 256}
        ),
    )
    whole, whole_out = select(tmp_path / "whole", None)
    assert whole.exit_code == 0, whole.output
    n_batches = forwards["n"]
    assert n_batches >= 4
    stopped, _ = select(tmp_path / "cache", n_batches // 2)
    assert stopped.exit_code == 130, stopped.output
    folder = tmp_path / "cache" / "embeddings"
    assert [p.name for p in folder.glob(".*.partial.npy")], "the recorded rows were not kept"
    again, out = select(tmp_path / "cache", None)
    assert again.exit_code == 0, again.output
    assert forwards["n"] == n_batches - n_batches // 2
    assert out.read_text() == whole_out.read_text()
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []
