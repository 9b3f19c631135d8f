"""Data-parallel embedding, scoring and k-center over torch.distributed (gloo, CPU): 2 and 3 ranks give the
embeddings (allclose), scores (allclose) and k-center picks (identical) of one process."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import alpaca_rows

from diverse_axolotl import distributed
from diverse_axolotl.distributed import balanced_shards

ROWS = 48
BUDGET = 12
SPECS = {  # small token budgets: many batches, and a different batch for a row on every world size
    "mean": SimpleNamespace(max_length=64, pooling="mean", layer=-1, batch_tokens=256),
    "last": SimpleNamespace(max_length=64, pooling="last", layer=1, batch_tokens=200),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _load(model_dir: str):
    from diverse_axolotl.embedding import pool_texts
    from diverse_axolotl.models import load_model, load_tokenizer

    torch.set_num_threads(1)
    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, device="cpu", dtype="float32")
    rows = alpaca_rows()[:ROWS]
    return model, tok, rows, pool_texts(rows, "alpaca", tok)


def _worker(rank: int, world: int, port: int, model_dir: str, out_dir: str) -> None:
    import torch.distributed as dist

    from diverse_axolotl.embedding import contiguous_block, embed_rows
    from diverse_axolotl.scoring import get_scorer
    from diverse_axolotl.scoring.sharded import score_rows
    from diverse_axolotl.selection.kcenter import farthest_first_distributed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    out = Path(out_dir)
    model, tok, rows, texts = _load(model_dir)
    for name, spec in SPECS.items():
        shared = embed_rows(model, tok, texts, spec, out=out / f"{name}.npy", shared_fs=True)
        np.save(out / f"{name}.shared.rank{rank}.npy", np.asarray(shared))  # every rank reads the one file
        gathered = embed_rows(
            model,
            tok,
            texts,
            spec,
            out=None,
            shared_fs=False,
        )
        if rank == 0:
            np.save(out / f"{name}.gathered.npy", gathered)
        else:
            assert gathered is None
        # k-center over contiguous blocks, from the shared file and from rank 0's gathered array
        for source, emb in (("shared", shared), ("gathered", gathered)):
            block, offset = contiguous_block(emb, len(texts))
            assert len(block) < len(texts)  # no rank holds the whole matrix
            picks = farthest_first_distributed(
                np.asarray(block), offset, len(texts), BUDGET, np.asarray([3, 17], dtype=np.int64), torch.device("cpu")
            )
            np.save(out / f"{name}.picks.{source}.rank{rank}.npy", picks)
    scores = score_rows(get_scorer("perplexity", batch_tokens=256), model, tok, rows, "alpaca", max_length=64)
    np.save(out / f"scores.rank{rank}.npy", scores)
    # a failure on rank 0 reaches every rank instead of leaving the others at a barrier
    with pytest.raises((RuntimeError, ValueError)):
        distributed.on_rank0(lambda: (_ for _ in ()).throw(ValueError("disk full")))
    assert distributed.broadcast_array(np.arange(4) * (rank == 0)).tolist() == [0, 1, 2, 3]
    distributed.shutdown()  # a barrier, then destroy: no rank tears gloo down while another still talks


@pytest.fixture(scope="module")
def one_process(tiny_model):
    """What one process computes: the reference for every world size."""
    from diverse_axolotl.embedding import embed_rows
    from diverse_axolotl.scoring import get_scorer
    from diverse_axolotl.selection.kcenter import farthest_first

    model, tok, rows, texts = _load(str(tiny_model))
    ref = {}
    for name, spec in SPECS.items():
        emb = embed_rows(model, tok, texts, spec)
        ref[name] = emb
        ref[f"{name}.picks"] = farthest_first(emb, BUDGET, np.asarray([3, 17], dtype=np.int64), torch.device("cpu"))
    ref["scores"] = get_scorer("perplexity", batch_tokens=256).score(model, tok, rows, "alpaca", max_length=64)
    return ref


@pytest.mark.parametrize("world", [2, 3])
def test_data_parallel_embedding_scores_and_picks_equal_one_process(tmp_path, tiny_model, one_process, world):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(world, _free_port(), str(tiny_model), str(tmp_path)), nprocs=world, join=True)
    for name in SPECS:
        ref = one_process[name]
        file = np.load(tmp_path / f"{name}.npy")
        assert file.dtype == np.float32 and file.shape == ref.shape
        np.testing.assert_allclose(file, ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.gathered.npy"), ref, rtol=1e-4, atol=1e-5)
        for rank in range(world):
            np.testing.assert_array_equal(np.load(tmp_path / f"{name}.shared.rank{rank}.npy"), file)
            for source in ("shared", "gathered"):
                picks = np.load(tmp_path / f"{name}.picks.{source}.rank{rank}.npy")
                assert picks.tolist() == one_process[f"{name}.picks"].tolist()
    for rank in range(world):
        np.testing.assert_allclose(np.load(tmp_path / f"scores.rank{rank}.npy"), one_process["scores"], rtol=1e-4)


def test_balanced_shards_are_deterministic_disjoint_and_even():
    costs = np.random.default_rng(0).integers(1, 500, size=1000)
    shards = balanced_shards(costs, 3)
    assert [s.tolist() for s in shards] == [s.tolist() for s in balanced_shards(costs, 3)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(1000))
    assert all((np.diff(s) > 0).all() for s in shards)  # pool order inside a shard
    loads = [int(costs[s].sum()) for s in shards]
    assert max(loads) - min(loads) <= costs.max()  # longest-first greedy: within one row of each other
    assert [len(s) for s in balanced_shards([5, 5, 5, 5], 2)] == [2, 2]
    assert [s.tolist() for s in balanced_shards([], 2)] == [[], []]


def test_helpers_without_a_process_group_are_one_process():
    assert not distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.is_rank0()) == (0, 1, True)
    assert distributed.on_rank0(lambda: 7) == 7
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.broadcast_array(np.arange(3)).tolist() == [0, 1, 2]
    assert distributed.all_gather_object(5) == [5]
    assert distributed.init_from_env() is False  # not launched by torchrun: nothing to join
    with distributed.rank0_first():
        distributed.barrier()
    with pytest.raises(ValueError):
        distributed.on_rank0(lambda: (_ for _ in ()).throw(ValueError("x")))
