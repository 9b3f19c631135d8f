"""k-center's two levers against outlier hunting (issue 17's ablation), each against an exhaustive float64 reference:
cosine k-center (`normalize`) and k-center with outliers (`outlier_fraction`)."""

from __future__ import annotations

import numpy as np
import pytest

from diverse_axolotl.selection import get_selector, kcenter
from diverse_axolotl.selection.kcenter import isolation, outliers_to_skip


def reference_farthest_first(x: np.ndarray, budget: int, candidates: np.ndarray, selected=(), start=None) -> list[int]:
    """Exhaustive float64 farthest-first over `candidates`: distances to the `selected` rows, or with none selected,
    the first pick is the candidate farthest from `start` (which is not a selected row); ties: lowest id."""
    x = x.astype(np.float64)
    full = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    nearest = full[list(selected)].min(0) if len(selected) else np.sqrt(((x - start) ** 2).sum(1))
    picks: list[int] = []
    for i in range(budget):
        masked = np.where(candidates, nearest, -np.inf)
        masked[picks] = -np.inf
        pick = int(np.flatnonzero(masked == masked.max())[0])
        picks.append(pick)
        nearest = full[pick] if (i == 0 and not len(selected)) else np.minimum(nearest, full[pick])
    return picks


def unit_rows(x: np.ndarray) -> np.ndarray:
    c = x.astype(np.float64) - x.astype(np.float64).mean(0)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cosine_kcenter_is_farthest_first_on_centred_unit_rows(seed):
    rng = np.random.default_rng(seed)
    # rows of very different lengths: plain k-center picks the long ones, cosine k-center must not care
    x = (rng.normal(size=(240, 12)) * rng.uniform(0.1, 10.0, size=(240, 1)) + 3.0).astype(np.float32)
    u = unit_rows(x)
    want = reference_farthest_first(u, 30, np.ones(len(x), bool), start=u.mean(0))
    got = get_selector("kcenter", device="cpu", normalize=True, outlier_fraction=0).select(x, 30)
    assert got.tolist() == want
    plain = get_selector("kcenter", device="cpu", normalize=False, outlier_fraction=0).select(x, 30)
    assert plain.tolist() != got.tolist()


def test_isolation_is_the_kth_neighbour_distance():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(150, 6)).astype(np.float32)
    d = np.sqrt(((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    want = np.sort(d, axis=1)[:, 4]  # the 5th nearest other row (the sample is the whole pool below 4,096 rows)
    np.testing.assert_allclose(isolation(x, 5, seed=0), want, rtol=1e-9, atol=1e-9)


def test_kcenter_with_outliers_never_picks_the_most_isolated_rows():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 8))
    x[:10] = 60.0 * np.concatenate(
        [np.eye(8)[:5], -np.eye(8)[:5]]
    )  # ten far-flung rows: plain k-center takes them first
    x = x.astype(np.float32)
    plain = get_selector("kcenter", device="cpu", normalize=False, outlier_fraction=0).select(x, 10)
    assert set(plain.tolist()) == set(range(10))
    sel = get_selector("kcenter", device="cpu", outlier_fraction=0.05, outlier_neighbours=3, normalize=False)
    picks = sel.select(x, 40, already_selected=[50])
    skipped = outliers_to_skip(isolation(x, 3, seed=0), 0.05, [50])
    assert set(range(10)) <= set(skipped.tolist()) and len(skipped) == 10
    assert sel.last_info == {"outliers_skipped": 10}
    candidates = np.ones(len(x), bool)
    candidates[skipped] = False
    candidates[50] = False
    want = reference_farthest_first(x, 40, candidates, selected=[50])
    assert picks.tolist() == want


def test_outliers_never_make_the_budget_impossible():
    x = np.random.default_rng(5).normal(size=(20, 4)).astype(np.float32)
    picks = get_selector("kcenter", device="cpu", outlier_fraction=0.5).select(x, 18)
    assert len(set(picks.tolist())) == 18


def test_bad_lever_values_are_refused():
    with pytest.raises(Exception, match="outlier_fraction"):
        get_selector("kcenter", outlier_fraction=1.5)


def test_the_default_is_cosine_kcenter_with_five_percent_outliers():
    """Issue 17's validation rule made both levers the default; the paper's k-center is spelled out."""
    rng = np.random.default_rng(6)
    x = (rng.normal(size=(240, 12)) * rng.uniform(0.1, 10.0, size=(240, 1)) + 3.0).astype(np.float32)
    default = get_selector("kcenter", device="cpu")
    got = default.select(x, 30, seed=2)
    assert default.last_info == {"outliers_skipped": 12}
    skipped = outliers_to_skip(isolation(x, 10, seed=2, normalize=True), 0.05, [])
    candidates = np.ones(len(x), bool)
    candidates[skipped] = False
    u = unit_rows(x)
    assert got.tolist() == reference_farthest_first(u, 30, candidates, start=u.mean(0))
    cosine_only = get_selector("kcenter", device="cpu", outlier_fraction=0).select(x, 30, seed=2)
    assert cosine_only.tolist() != got.tolist()


def test_isolation_of_a_block_of_rows_is_those_rows_of_the_whole(monkeypatch):
    monkeypatch.setattr(kcenter, "isolation_block_rows", lambda n, sample_rows=4096: 16)
    x = np.random.default_rng(7).normal(size=(100, 5)).astype(np.float32)
    whole = isolation(x, 4, seed=1, normalize=True)
    parts = [isolation(x, 4, seed=1, normalize=True, rows=(lo, min(lo + 32, 100))) for lo in range(0, 100, 32)]
    assert np.concatenate(parts).tobytes() == whole.tobytes()


N_SHARDED = 301


def _sharded_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import pickle

    import torch
    import torch.distributed as dist

    from diverse_axolotl import distributed
    from diverse_axolotl.selection.sharded import select_across_ranks

    torch.set_num_threads(1)
    kcenter.isolation_block_rows = lambda n, sample_rows=4096: 16  # many blocks per rank, rank edges inside them
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    emb = np.load(f"{out_dir}/emb.npy", mmap_mode="r")
    out = {}
    for already in ([], [5, 77, 140]):
        sel = get_selector("kcenter", device="cpu")
        picks, _ = select_across_ranks(sel, emb, 25, already, None, 3, None, N_SHARDED)
        out[len(already)] = (picks.tolist(), sel.last_info)
    with open(f"{out_dir}/rank{rank}.pkl", "wb") as f:
        pickle.dump(out, f)
    distributed.shutdown()


def test_sharded_kcenter_with_outliers_over_torch_distributed_equals_one_process(tmp_path, monkeypatch):
    import pickle
    import socket

    import torch.multiprocessing as mp

    rng = np.random.default_rng(3)
    x = rng.normal(size=(N_SHARDED, 16))
    x[::29] *= 25.0  # far-flung rows in every rank's block: the outliers the default skips
    np.save(tmp_path / "emb.npy", x.astype(np.float32))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_sharded_worker, args=(3, port, str(tmp_path)), nprocs=3, join=True)
    monkeypatch.setattr(kcenter, "isolation_block_rows", lambda n, sample_rows=4096: 16)
    emb = np.load(tmp_path / "emb.npy")
    for already in ([], [5, 77, 140]):
        one = get_selector("kcenter", device="cpu")
        want = one.select(emb, 25, already_selected=already, seed=3).tolist()
        skipped = set(outliers_to_skip(isolation(emb, 10, seed=3, normalize=True), 0.05, already, 25).tolist())
        assert len(skipped) == 15 and not skipped & set(want)
        assert (
            want != get_selector("kcenter", device="cpu", outlier_fraction=0).select(emb, 25, already, seed=3).tolist()
        )
        for rank in range(3):
            picks, info = pickle.loads((tmp_path / f"rank{rank}.pkl").read_bytes())[len(already)]
            assert picks == want
            assert info == {"ranks": 3, "outliers_skipped": 15}
