"""The whole loop under torchrun (2 processes, gloo on CPU): `torchrun -m diverse_axolotl run recipe.yaml` on the
tiny model, 2 rounds, end to end through the CLI; every round folder complete, one rank writing and printing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from test_loop_integration import write_recipe

from diverse_axolotl.selection import get_selector


def torchrun(*args: str, cwd, nproc: int = 2, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        *extra,
        "-m",
        "diverse_axolotl",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=900)


def check_run(run, pool) -> None:
    """Every round folder complete; the picks are k-center's on each round's (data-parallel) embeddings."""
    for k in range(3):
        rd = run / f"round_{k}"
        assert (rd / "adapter" / "adapter_model.safetensors").is_file()
        assert (rd / "done.json").is_file() and (rd / "axolotl.log").stat().st_size > 0
        assert (rd / "axolotl.rank1.log").is_file()  # each rank's Axolotl output in its own file
        rows = [json.loads(line) for line in (rd / "train.jsonl").read_text().splitlines()]
        assert len(rows) == 8 + 6 * k
        manifest = json.loads((rd / "manifest.json").read_text())
        assert [pool[i] for i in manifest["indices"]] == rows
        leftovers = [p.name for p in rd.iterdir() if "partial" in p.name or p.name.endswith(".tmp")]
        assert not leftovers, leftovers
    for k in range(2):
        emb = np.load(run / f"round_{k}" / "embeddings.npy")
        assert emb.shape == (len(pool), 32) and np.isfinite(emb).all()
        before = json.loads((run / f"round_{k}" / "manifest.json").read_text())["indices"]
        after = json.loads((run / f"round_{k + 1}" / "manifest.json").read_text())["indices"]
        expected = get_selector("kcenter", device="cpu").select(emb, 6, already_selected=before)
        assert after[len(before) :] == expected.tolist()
    summary = json.loads((run / "summary.json").read_text())
    assert [r["rows"] for r in summary] == [8, 14, 20]
    assert all(r["steps"] > 0 for r in summary), summary  # every round trained (a sampler can silently drop all)


@pytest.mark.slow
def test_two_rounds_under_torchrun_with_two_processes(tmp_path, tiny_model, pool_file):
    recipe = write_recipe(tmp_path, tiny_model, pool_file)
    proc = torchrun("run", str(recipe), cwd=tmp_path, extra=("--standalone",))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    check_run(tmp_path / "run", json.loads(pool_file.read_text()))
    # progress and the summary printed once, by rank 0
    assert out.count("round 0: training on 8 rows") == 1, out[-3000:]
    assert out.count("run folder:") == 1
    done = {k: (tmp_path / "run" / f"round_{k}" / "done.json").stat().st_mtime_ns for k in range(3)}
    # a re-run under torchrun finds the run finished and rewrites nothing
    again = torchrun("run", str(recipe), cwd=tmp_path, extra=("--standalone",))
    assert again.returncode == 0, (again.stdout + again.stderr)[-6000:]
    assert {k: (tmp_path / "run" / f"round_{k}" / "done.json").stat().st_mtime_ns for k in range(3)} == done


@pytest.mark.slow
def test_a_rank_killed_mid_embedding_then_a_rerun_under_torchrun_finishes(tmp_path, tiny_model, pool_file):
    from diverse_axolotl.faults import FAILPOINT_ENV

    recipe = write_recipe(tmp_path, tiny_model, pool_file, {"embedding": {"max_length": 128, "batch_tokens": 256}})
    import os

    env = {**os.environ, FAILPOINT_ENV: "embedding:rank1"}  # rank 1 SIGKILLs itself after its first batch
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "diverse_axolotl",
        "run",
        str(recipe),
    ]
    lost = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=900, env=env)
    assert lost.returncode != 0
    run = tmp_path / "run"
    assert (run / "round_0" / "adapter" / "adapter_model.safetensors").is_file()  # round 0 trained, then lost
    assert not (run / "round_0" / "embeddings.npy").exists() and not (run / "round_1").exists()
    again = torchrun("run", str(recipe), cwd=tmp_path, extra=("--standalone",))
    assert again.returncode == 0, (again.stdout + again.stderr)[-6000:]
    check_run(run, json.loads(pool_file.read_text()))


@pytest.mark.slow
def test_two_nodes_on_one_machine_with_a_local_rendezvous(tmp_path, tiny_model, pool_file):
    """`--nnodes 2`: two torchrun agents (one process each) meet at a rendezvous on localhost, as two machines
    would; each is local rank 0 of its "node". The static rendezvous (`--node_rank`, `--master_addr`): with c10d's
    elastic one, the agent that hosts the store may exit before the other has shut the rendezvous down, and that
    agent then fails after a finished run (seen once on a loaded machine; torch's teardown, not ours)."""
    import socket

    recipe = write_recipe(tmp_path, tiny_model, pool_file, {"rounds": 1})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def node(rank: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--nproc_per_node",
            "1",
            "--node_rank",
            str(rank),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            "-m",
            "diverse_axolotl",
            "run",
            str(recipe),
        ]

    nodes = [
        subprocess.Popen(node(rank), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(2)
    ]
    outputs = [node.communicate(timeout=900)[0] for node in nodes]
    codes = [node.returncode for node in nodes]
    both = [
        f"--- node {rank} (exit {code}):\n{out[-5000:]}"
        for rank, (code, out) in enumerate(zip(codes, outputs, strict=True))
    ]
    assert codes == [0, 0], "\n".join(both)  # both nodes' output: the one that failed first may be either
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert [r["rows"] for r in summary] == [8, 14] and all(r["steps"] > 0 for r in summary)
    for k in range(2):
        assert (run / f"round_{k}" / "axolotl.rank1.log").is_file()
        assert (run / f"round_{k}" / "adapter" / "adapter_model.safetensors").is_file()
    assert sum(out.count("run folder:") for out in outputs) == 1  # one rank printed the summary


@pytest.mark.slow
def test_a_stateful_kmeans_selector_with_scores_runs_on_rank0_and_its_picks_reach_every_rank(
    tmp_path, tiny_model, pool_file
):
    """iterative_kmq (k-means on rank 0, a state between rounds, per-row scores computed data-parallel) under
    torchrun: round 0 from the base model's embeddings, round 1 from round 0's, as one process would pick them
    from the same files."""
    from diverse_axolotl.run_paths import RunPaths, read_selector_state

    selector = {"name": "iterative_kmq", "n_clusters": 4}
    recipe = write_recipe(tmp_path, tiny_model, pool_file, {"round0": "base", "rounds": 1, "selector": selector})
    proc = torchrun("run", str(recipe), cwd=tmp_path, extra=("--standalone",))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    run = tmp_path / "run"
    base = np.load(run / "round_0" / "base_embeddings.npy")
    m0 = json.loads((run / "round_0" / "manifest.json").read_text())
    assert m0["indices"] == get_selector("kmq", n_clusters=4).select(base, 8, seed=0).tolist()
    state0 = read_selector_state(RunPaths(run), 0)
    selected = np.asarray(m0["indices"])
    assert not (run / "round_0" / "embeddings.npy").exists()  # the clusters are in the state: no re-embedding
    new, _ = get_selector("iterative_kmq", n_clusters=4).select_with_state(
        None,
        6,
        selected,
        np.load(run / "round_0" / "scores.npy"),
        seed=1,
        state=state0,
    )
    assert json.loads((run / "round_1" / "manifest.json").read_text())["indices"][8:] == new.tolist()
    assert read_selector_state(RunPaths(run), 1) is not None  # rank 0's state, written once, read back whole
