"""Small helpers on torch.distributed, so that the loop reads the same in one process and under torchrun.

Every helper works without a process group (one process: rank 0 of 1, barriers are no-ops, broadcasts return
their input), so callers never branch on "are we distributed". Under `torchrun` (or `accelerate launch`, which sets
the same variables) `init_from_env` starts the group: gloo on CPU, nccl when CUDA is available.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar, cast

import numpy as np

T = TypeVar("T")

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _dist():
    import torch.distributed as dist

    return dist


def is_initialized() -> bool:
    try:
        dist = _dist()
    except ImportError:  # pragma: no cover - torch always has it on the platforms we support
        return False
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return _dist().get_rank() if is_initialized() else int(os.environ.get("RANK", 0) if launched() else 0)


def world_size() -> int:
    return _dist().get_world_size() if is_initialized() else int(os.environ.get("WORLD_SIZE", 1) if launched() else 1)


def local_rank() -> int:
    """The process's index on its machine (which GPU it drives)."""
    return int(os.environ.get("LOCAL_RANK", 0)) if launched() else 0


def is_rank0() -> bool:
    return rank() == 0


def launched() -> bool:
    """Started by torchrun / accelerate launch (the rendezvous variables are set)."""
    return all(v in os.environ for v in TORCHRUN_VARS)


def backend_for_device() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Join the process group described by torchrun's environment; True when one is (now) initialised.

    A no-op in a plain process and when a group already exists (Axolotl or accelerate may have started it). On
    CUDA each process takes the GPU of its LOCAL_RANK before nccl starts."""
    if is_initialized():
        return True
    if not launched() or int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    import torch

    backend = backend or backend_for_device()
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    _dist().init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    if not torch.cuda.is_available():
        _accelerate_multi_cpu()
    return True


def _accelerate_multi_cpu() -> None:
    """Make accelerate's process-wide state MULTI_CPU on our group before Axolotl creates it.

    Axolotl's first `PartialState()` passes cpu=False, and accelerate then falls back to no distribution on a
    machine without CUDA: every rank would train alone on all the rows (the Trainer's later cpu=True comes too
    late, the state is a singleton). Created here with cpu=True, it adopts the initialised gloo group (DDP)."""
    # Axolotl's Trainer resets that state before it builds its Accelerator, which then reads this variable
    os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    try:
        from accelerate import PartialState
    except ImportError:  # accelerate comes with transformers' Trainer; without it there is no training to share
        return
    PartialState(cpu=True)


def destroy() -> None:
    if is_initialized():
        _dist().destroy_process_group()


def shutdown() -> None:
    """End a finished run's process group on every rank: a barrier (no rank leaves while another still talks),
    then the group destroyed. Left to interpreter exit, gloo's threads could outlive it and a rank that had
    finished its work died with SIGABRT ("terminate called without an active exception"), failing the launch."""
    if is_initialized():
        barrier()
        destroy()


def barrier() -> None:
    if is_initialized() and world_size() > 1:
        dist = _dist()
        if dist.get_backend() == "nccl":
            import torch

            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


@contextmanager
def rank0_first():
    """Rank 0 runs the block first (e.g. fills a cache or downloads), then the others run it."""
    if not is_rank0():
        barrier()
    try:
        yield
    finally:
        if is_rank0():
            barrier()


def on_rank0(fn: Callable[..., T], *args, broadcast: bool = False, **kwargs) -> T | None:
    """Call `fn` on rank 0 only (a file write, a rename), then wait for it on every rank.

    An exception on rank 0 is re-raised there after the barrier would deadlock the others, so rank 0 shares
    its outcome: every rank raises when rank 0 failed. With `broadcast`, every rank returns rank 0's result."""
    result, error = None, None
    if is_rank0():
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised below on every rank
            error = exc
    if world_size() > 1 and is_initialized():
        outcome = broadcast_object((result if broadcast else None, None if error is None else repr(error)))
        if error is None and outcome[1] is not None:
            raise RuntimeError(f"rank 0 failed: {outcome[1]}")
        if broadcast:
            result = outcome[0]
    if error is not None:
        raise error
    return result


def agreed(fn: Callable[..., T], *args, **kwargs) -> T:
    """Rank 0's answer to a question about the run folder (is this file there?), on every rank.

    Every branch that decides whether the ranks meet in a collective must be taken alike on all of them. Each
    rank looking at the folder itself is a race: rank 0 may write the file (alone, before the barrier that ends
    its write) while a slower rank has not looked yet, and the two then take different branches and deadlock.
    `fn` must not itself use collectives."""
    return cast(T, on_rank0(fn, *args, broadcast=True, **kwargs))


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s python object on every rank (pickled)."""
    if not is_initialized() or world_size() == 1:
        return obj
    box = [obj if rank() == src else None]
    _dist().broadcast_object_list(box, src=src, device=_object_device())
    return box[0]


def broadcast_array(arr: np.ndarray | None, src: int = 0) -> np.ndarray:
    """Rank `src`'s numpy array (e.g. the picks) on every rank."""
    return np.asarray(broadcast_object(None if arr is None or rank() != src else np.asarray(arr), src))


def all_gather_object(obj: Any) -> list:
    """Every rank's object, in rank order, on every rank."""
    if not is_initialized() or world_size() == 1:
        return [obj]
    out = [None] * world_size()
    _dist().all_gather_object(out, obj)
    return out


def gather_object(obj: Any, dst: int = 0) -> list | None:
    """Every rank's object, in rank order, on rank `dst` (None elsewhere)."""
    if not is_initialized() or world_size() == 1:
        return [obj]
    out = [None] * world_size() if rank() == dst else None
    _dist().gather_object(obj, out, dst=dst)
    return out


def _object_device():
    """The device object collectives stage through: the current GPU under nccl, else the CPU."""
    import torch

    if _dist().get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# -- sharding ------------------------------------------------------------------------------------------------------
def balanced_shards(costs: Sequence[int] | np.ndarray, world: int) -> list[np.ndarray]:
    """Row ids split into `world` shards of about equal total cost (tokens), so that ranks finish together.

    Greedy longest-first onto the currently lightest shard (ties: the lowest rank): deterministic, so every rank
    computes the same split without talking. Each shard's ids come back sorted (pool order)."""
    cost = np.asarray(costs, dtype=np.int64)
    order = np.argsort(-cost, kind="stable")
    loads = np.zeros(world, dtype=np.int64)
    owner = np.empty(len(cost), dtype=np.int64)
    import heapq

    heap = [(0, r) for r in range(world)]  # (load, rank): the lightest shard, lowest rank among equals
    for idx in order:
        load, r = heapq.heappop(heap)
        owner[idx] = r
        load += max(int(cost[idx]), 1)
        loads[r] = load
        heapq.heappush(heap, (load, r))
    return [np.flatnonzero(owner == r) for r in range(world)]


def contiguous_bounds(n: int, world: int) -> np.ndarray:
    """Boundaries of `world` contiguous blocks of n rows (block r is [b[r], b[r+1]))."""
    return np.linspace(0, n, world + 1).astype(np.int64)


def shards_by_cost(n: int, block_costs: Callable[[int, int], Sequence[int]]) -> tuple[list[np.ndarray], np.ndarray]:
    """Length-balanced shards of n rows without any rank measuring the whole pool.

    Each rank measures the rows of its contiguous block (`block_costs(lo, hi)`, e.g. token counts), the costs are
    all-gathered (n integers), and every rank derives the same `balanced_shards`. Returns (shards, costs)."""
    bounds = contiguous_bounds(n, world_size())
    r = rank()
    mine = np.asarray(block_costs(int(bounds[r]), int(bounds[r + 1])), dtype=np.int64)
    costs = np.concatenate([np.asarray(c, dtype=np.int64) for c in all_gather_object(mine)]) if n else mine
    return balanced_shards(costs, world_size()), costs
