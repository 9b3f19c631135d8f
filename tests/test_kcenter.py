"""kcenter against farthest-first written out plainly over an N x N distance matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diverse_axolotl import distributed
from diverse_axolotl.selection import get_selector


def exhaustive_farthest_first(x: np.ndarray, budget: int, already) -> np.ndarray:
    x = x.astype(np.float64)
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))  # N x N
    already = list(already)
    picks = []
    if already:
        nearest = dist[:, already].min(1)
    else:
        first = int(np.argmax(np.linalg.norm(x - x.mean(0), axis=1)))  # farthest from the pool mean
        picks.append(first)
        nearest = dist[:, first].copy()
    while len(picks) < budget:
        nearest[already + picks] = -np.inf
        j = int(np.argmax(nearest))  # ties: lowest index
        picks.append(j)
        nearest = np.minimum(nearest, dist[:, j])
    return np.array(picks)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("already", [[], [3, 70, 111]])
def test_kcenter_equals_exhaustive_farthest_first(seed, already):
    x = np.random.default_rng(seed).standard_normal((150, 12)).astype(np.float32)
    picks = get_selector("kcenter", device="cpu", chunk_rows=64, normalize=False, outlier_fraction=0).select(
        x, 20, already_selected=already
    )
    np.testing.assert_array_equal(picks, exhaustive_farthest_first(x, 20, already))


def test_kcenter_first_pick_with_nothing_selected_is_farthest_from_mean():
    x = np.zeros((10, 3), dtype=np.float32)
    x[6] = [5, 5, 5]
    x[2] = [-4, 0, 0]
    assert get_selector("kcenter", device="cpu", normalize=False).select(x, 1)[0] == 6


@pytest.mark.parametrize("projection", ["random", "pca"])
def test_kcenter_projection_returns_valid_picks(projection):
    x = np.random.default_rng(0).standard_normal((120, 32)).astype(np.float32)
    already = [1, 2, 3]
    sel = get_selector("kcenter", device="cpu", project_dim=8, projection=projection)
    picks = sel.select(x, 15, already_selected=already, seed=4)
    assert len(np.unique(picks)) == 15 and not np.isin(picks, already).any()
    np.testing.assert_array_equal(picks, sel.select(x, 15, already_selected=already, seed=4))


def _distributed_worker(
    rank: int, world: int, port: int, data: np.ndarray, budget: int, already, out_dir: str, normalize: bool
):
    import torch.distributed as dist

    from diverse_axolotl.selection.kcenter import farthest_first_distributed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    bounds = np.linspace(0, len(data), world + 1).astype(int)
    lo, hi = bounds[rank], bounds[rank + 1]
    picks = farthest_first_distributed(
        data[lo:hi],
        int(lo),
        len(data),
        budget,
        np.asarray(already, dtype=np.int64),
        torch.device("cpu"),
        normalize=normalize,
    )
    np.save(f"{out_dir}/rank{rank}.npy", picks)
    distributed.shutdown()  # a barrier, then destroy: no rank tears gloo down while another still talks


@pytest.mark.parametrize("normalize", [False, True])  # Euclidean (the paper's) and cosine (the default)
@pytest.mark.parametrize("already", [[], [5, 77, 140]])
def test_sharded_kcenter_over_torch_distributed_equals_one_process(tmp_path, already, normalize):
    import socket

    import torch.multiprocessing as mp

    from diverse_axolotl.selection.kcenter import farthest_first

    data = np.random.default_rng(3).standard_normal((301, 16)).astype(np.float32)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_distributed_worker, args=(3, port, data, 25, already, str(tmp_path), normalize), nprocs=3, join=True)
    expected = farthest_first(data, 25, np.asarray(already, dtype=np.int64), torch.device("cpu"), normalize=normalize)
    for rank in range(3):
        assert np.load(tmp_path / f"rank{rank}.npy").tolist() == expected.tolist()
