"""A selector's picks under torch.distributed: the same rows on every rank, computed once.

k-center runs sharded (`kcenter.farthest_first_distributed`: each rank holds a contiguous block of the pool, no
rank the whole matrix; with outliers on, each rank scores the isolation of whole blocks of rows and one all-gather
shares the scores). Every other selector, and k-center with a projection (which needs the whole matrix), runs on
rank 0 and the picks, the selector's state and its info are broadcast. While rank 0 runs
it, the other ranks serve k-means assignments (`ShardedAssigner`): the k-means selectors train on rank 0, on
their sample of rows, and every rank assigns its own chunks of rows to the broadcast centroids; rank 0 gathers the
assignment (int32 per row) and goes on with quotas and sampling. This needs the embeddings readable on every rank
(the round's file); otherwise rank 0 assigns alone.
"""

from __future__ import annotations

import numpy as np

from .. import distributed
from .base import check_already_selected, check_budget
from .kmeans import ASSIGNER, assign_chunks, n_chunks


def _kcenter_shardable(selector) -> bool:
    p = getattr(selector, "params", None)
    return selector.name == "kcenter" and p is not None and not p.project_dim


def select_across_ranks(selector, emb, budget: int, already_selected, scores, seed: int, state, n_rows: int):
    """(picks, new state) as `RoundPicker._select` returns them in one process, on every rank.

    `emb` must be readable on every rank for k-center and for sharded k-means assignment (the round's embeddings
    file, a memmap), and on rank 0 for the others."""
    if distributed.world_size() == 1 or not distributed.is_initialized():
        raise RuntimeError("select_across_ranks needs a process group of more than one rank")
    if _kcenter_shardable(selector) and emb is not None:
        return _kcenter(selector, emb, budget, already_selected, seed), None

    def select_here():
        with_state = getattr(selector, "select_with_state", None)
        if with_state is None:
            picks = selector.select(
                emb,
                budget,
                already_selected=already_selected,
                scores=scores,
                seed=seed,
                n_rows=n_rows if emb is None else None,
            )
            new_state = None
        else:
            picks, new_state = with_state(
                emb,
                budget,
                already_selected=already_selected,
                scores=scores,
                seed=seed,
                state=state,
                n_rows=n_rows if emb is None else None,
            )
        return np.asarray(picks, dtype=np.int64), new_state, selector.last_info

    everyone_has_it = all(distributed.all_gather_object(emb is not None))
    assigner = ShardedAssigner(emb) if everyone_has_it else None
    if assigner is not None and not distributed.is_rank0():
        assigner.serve()  # until rank 0 is done with the selector

    def select_on_rank0():
        if assigner is None:
            return select_here()
        token = ASSIGNER.set(assigner)
        try:
            return select_here()
        finally:
            ASSIGNER.reset(token)
            distributed.broadcast_object(("done",))  # the serving ranks return to the broadcast of the outcome

    picks, new_state, info = distributed.agreed(select_on_rank0)  # rank 0's picks on every rank
    selector.last_info = info
    return picks, new_state


def _kcenter(selector, emb, budget: int, already_selected, seed: int) -> np.ndarray:
    import torch

    from ..embedding import contiguous_block
    from ..models import resolve_device
    from .kcenter import (
        farthest_first_distributed,
        isolation,
        isolation_block_rows,
        outliers_to_skip,
        storage_dtype,
    )

    p = selector.params
    n = len(emb)
    chosen = check_already_selected(already_selected, n)
    budget = check_budget(budget, n - len(chosen), selector.name)
    selector.last_info = {"ranks": distributed.world_size()}
    if budget == 0:
        return np.empty(0, dtype=np.int64)
    device = resolve_device(p.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = storage_dtype(p.dtype, device)
    never = None
    if p.outlier_fraction > 0:  # each rank scores whole blocks of isolation's grid: the one-process bits
        step = isolation_block_rows(n)
        bounds = distributed.contiguous_bounds(-(-n // step), distributed.world_size()) * step
        lo, hi = (min(int(b), n) for b in bounds[distributed.rank() : distributed.rank() + 2])
        mine = isolation(emb, p.outlier_neighbours, seed, p.normalize, rows=(lo, hi))
        score = np.concatenate(distributed.all_gather_object(mine))
        never = outliers_to_skip(score, p.outlier_fraction, chosen, budget)
        selector.last_info["outliers_skipped"] = int(len(never))
    block, offset = contiguous_block(emb, n)
    return farthest_first_distributed(
        block,
        offset,
        n,
        budget,
        np.asarray(chosen, dtype=np.int64),
        device,
        dtype,
        p.chunk_rows,
        normalize=p.normalize,
        never_pick=never,
    )


class ShardedAssigner:
    """k-means assignment over the ranks (`kmeans.assign`'s hook on rank 0; `serve` on the others).

    The rows to assign (all of `emb`, or its rows `rows`) are cut into `kmeans.ASSIGN_CHUNK`-row chunks, and rank
    r takes a contiguous run of whole chunks: each chunk is searched exactly as in one process, so the assignment
    and the per-chunk squared errors are the same bits whatever the number of ranks. Per call rank 0 broadcasts
    (rows, centroids) and gathers each rank's assignment (int32) and chunk sums: O(N) ints, never a row."""

    def __init__(self, emb):
        self.emb = emb

    def covers(self, x) -> bool:
        """True when `x` is this rank's embeddings array itself (the same buffer, shape and layout), not a copy or
        a transform of it: only then do the other ranks' files hold the rows `x` holds."""
        e = self.emb
        return (
            isinstance(x, np.ndarray)
            and x.dtype == np.float32 == e.dtype
            and x.shape == e.shape
            and x.strides == e.strides
            and x.__array_interface__["data"][0] == e.__array_interface__["data"][0]
        )

    def _mine(self, rows, centroids):
        n = len(self.emb) if rows is None else len(rows)
        bounds = distributed.contiguous_bounds(n_chunks(n), distributed.world_size())
        r = distributed.rank()
        gpu = distributed.local_rank()
        return assign_chunks(self.emb, rows, centroids, int(bounds[r]), int(bounds[r + 1]), gpu)

    def __call__(self, rows, centroids) -> tuple[np.ndarray, float]:
        distributed.broadcast_object(("assign", rows, centroids))
        parts = distributed.gather_object(self._mine(rows, centroids), dst=0)
        assert parts is not None  # rank 0
        assignment = np.concatenate([a for a, _ in parts]).astype(np.int64)
        return assignment, float(sum(s for _, sums in parts for s in sums))

    def serve(self) -> None:
        while True:
            command = distributed.broadcast_object(None)
            if command[0] == "done":
                return
            _, rows, centroids = command
            distributed.gather_object(self._mine(rows, centroids), dst=0)
