"""A selector's picks under torch.distributed: the same rows on every rank, computed once.

k-center runs sharded (`kcenter.farthest_first_distributed`: each rank holds a contiguous block of the pool, no
rank the whole matrix); every other selector, and k-center with a projection or an outlier sample (which need the
whole matrix), runs on rank 0 and the picks, the selector's state and its info are broadcast.
"""

from __future__ import annotations

import numpy as np

from .. import distributed
from .base import check_already_selected, check_budget


def _kcenter_shardable(selector) -> bool:
    p = getattr(selector, "params", None)
    return selector.name == "kcenter" and p is not None and not p.project_dim and not getattr(p, "outlier_fraction", 0)


def select_across_ranks(selector, emb, budget: int, already_selected, scores, seed: int, state, n_rows: int):
    """(picks, new state) as `RoundPicker._select` returns them in one process, on every rank.

    `emb` must be readable on every rank for k-center (the round's embeddings file, a memmap), and on rank 0 for
    the others."""
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
                emb, budget, already_selected=already_selected, scores=scores, seed=seed, state=state
            )
        return np.asarray(picks, dtype=np.int64), new_state, selector.last_info

    picks, new_state, info = distributed.agreed(select_here)  # rank 0's picks on every rank
    selector.last_info = info
    return picks, new_state


def _kcenter(selector, emb, budget: int, already_selected, seed: int) -> np.ndarray:
    import torch

    from ..embedding import contiguous_block
    from ..models import resolve_device
    from .kcenter import farthest_first_distributed

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
    dtype = (
        torch.bfloat16 if (p.dtype == "bfloat16" or (p.dtype == "auto" and device.type == "cuda")) else torch.float32
    )
    block, offset = contiguous_block(emb, n)
    kwargs = {"normalize": True} if getattr(p, "normalize", False) else {}
    return farthest_first_distributed(
        block, offset, n, budget, np.asarray(chosen, dtype=np.int64), device, dtype, p.chunk_rows, **kwargs
    )
