"""The k-means selectors under torch.distributed (gloo, CPU): trained on rank 0 on their sample, every rank assigns
its own chunks of rows, rank 0 draws. 2 and 3 ranks give the picks (identical), state and objective of one process."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import numpy as np
import pytest

from diverse_axolotl import distributed
from diverse_axolotl.selection import kmeans as km

N, DIM, BUDGET, CHUNK = 700, 9, 30, 37  # small chunks: many per rank, a ragged last one, rank edges inside blobs
CASES = {  # max_points_per_centroid small enough that k-means trains on a sample, as at scale
    "kmq": ("kmq", {"n_clusters": 8, "max_points_per_centroid": 20}),
    "kmq_choose_k": ("kmq", {"k_candidates": [3, 6], "init": "random", "nredo": 2, "max_points_per_centroid": 15}),
    "kmeans_random": ("kmeans_random", {"n_clusters": 7, "max_points_per_centroid": 20}),
    "kmeans_closest": ("kmeans_closest", {"max_points_per_centroid": 4, "nredo": 2}),
    "iterative_kmq": ("iterative_kmq", {"n_clusters": 6, "max_points_per_centroid": 20}),
}


def _write(tmp: Path) -> None:
    rng = np.random.default_rng(7)
    emb = (rng.normal(size=(N, DIM)) + 3 * rng.integers(0, 6, size=(N, 1))).astype(np.float32)
    emb[100:110] = emb[100]  # duplicate rows: exact ties in distance
    np.save(tmp / "emb.npy", emb)


def _data(tmp: Path):
    """The round's embeddings as the loop hands them to every rank: the one file, memory-mapped."""
    return np.load(tmp / "emb.npy", mmap_mode="r"), np.arange(0, N, 11), np.random.default_rng(8).normal(size=N)


def _select(name: str, emb, chosen, scores, select):
    from diverse_axolotl.selection.registry import get_selector

    selector, params = CASES[name]
    sel = get_selector(selector, **params)
    picks, state = select(sel, emb, BUDGET, chosen, scores if selector != "kmeans_closest" else None, 3, None)
    return picks, state, sel.last_info


def _one_process(sel, emb, budget, chosen, scores, seed, state):
    with_state = getattr(sel, "select_with_state", None)
    if with_state is not None:
        return with_state(emb, budget, already_selected=chosen, scores=scores, seed=seed, state=state)
    return sel.select(emb, budget, already_selected=chosen, scores=scores, seed=seed), None


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from diverse_axolotl.selection import sharded
    from diverse_axolotl.selection.sharded import select_across_ranks

    torch.set_num_threads(1)
    km.ASSIGN_CHUNK = CHUNK
    assigned = []
    plain = sharded.assign_chunks

    def counting(emb, rows, centroids, first, last, gpu=None):
        assigned.append(last - first)
        return plain(emb, rows, centroids, first, last, gpu)

    sharded.assign_chunks = counting
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    out = Path(out_dir)
    emb, chosen, scores = _data(out)

    def across(sel, emb, budget, chosen, scores, seed, state):
        return select_across_ranks(sel, emb, budget, chosen, scores, seed, state, N)

    result = {}
    for name in CASES:
        assigned.clear()
        result[name] = _select(name, emb, chosen, scores, across)
        result[f"{name}.chunks"] = sum(assigned)  # chunks this rank assigned for this selector
    (out / f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
    distributed.shutdown()  # a barrier, then destroy: no rank tears gloo down while another still talks


@pytest.mark.parametrize("world", [2, 3])
def test_kmeans_selectors_across_ranks_pick_what_one_process_picks(tmp_path, monkeypatch, world):
    import torch.multiprocessing as mp

    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    _write(tmp_path)
    mp.spawn(_worker, args=(world, free, str(tmp_path)), nprocs=world, join=True)

    monkeypatch.setattr(km, "ASSIGN_CHUNK", CHUNK)
    emb, chosen, scores = _data(tmp_path)
    for rank in range(world):
        got = pickle.loads((tmp_path / f"rank{rank}.pkl").read_bytes())
        for name in CASES:
            assert got[f"{name}.chunks"] > 0, name  # every rank assigned rows: rank 0 did not do it alone
            picks, state, info = _select(name, emb, chosen, scores, _one_process)
            g_picks, g_state, g_info = got[name]
            assert g_picks.tolist() == picks.tolist(), name
            assert g_info == info, name  # the objective (float64 sums per chunk, added in order) too
            if state is not None:
                np.testing.assert_array_equal(g_state.pop("assignment"), state.pop("assignment"))
                assert g_state == state


def test_chunked_assignment_does_not_depend_on_the_chunk_size(monkeypatch):
    """The chunks are what the ranks share: assigning in chunks must equal assigning in one search."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 5)).astype(np.float32)
    centroids = x[:12].copy()
    whole, objective = km.assign(x, None, centroids)
    monkeypatch.setattr(km, "ASSIGN_CHUNK", 23)
    chunked, chunked_objective = km.assign(x, None, centroids)
    assert whole.tolist() == chunked.tolist()
    assert chunked_objective == pytest.approx(objective, rel=1e-12)
    exact = ((x[:, None, :].astype(np.float64) - centroids[None].astype(np.float64)) ** 2).sum(-1)
    assert (exact[np.arange(500), whole] <= exact.min(1) + 1e-4).all()
    tie = np.zeros((2, 5), dtype=np.float32)  # two equal centroids: the lower id wins
    assert km.assign(np.ones((3, 5), dtype=np.float32), None, tie)[0].tolist() == [0, 0, 0]
