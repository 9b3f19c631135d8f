"""Embedding a pool with the (adapted) model: one vector per row, pooled from a hidden layer.

Rows are tokenised once, sorted by length, and packed into batches holding at most `batch_tokens` padded tokens,
so short rows share big batches and long rows small ones. Only the transformer body runs (no vocab-sized logits).
Results go to a float32 array in the original row order (a memmap on disk when `out` is given). On disk and in one
process, the batches finished are recorded beside the file every CHECKPOINT_S seconds, so an interrupted
embedding of the same rows with the same model continues where it stopped (`resume_tag`).

Under torch.distributed each rank embeds a shard balanced by token count and the rows are assembled in pool order:
written into one shared file, or gathered to rank 0 when the ranks share no filesystem (`embed_rows_distributed`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .faults import failpoint
from .inference import padded_batch, token_budget_batches
from .io import write_json
from .models import decoder_body
from .progress import progress_bar


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Mean over the non-pad tokens, or the last non-pad token (right padding), in float32."""
    hidden = hidden.float()
    if pooling == "mean":
        m = mask.unsqueeze(-1).float()
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    last = mask.sum(1).long().clamp(min=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def tokenize_texts(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    enc = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_length)
    return enc["input_ids"]


CHECKPOINT_S = 30.0  # seconds between records of the batches finished (a flush of the memmap and a small JSON)


def progress_file(out: Path) -> Path:
    """Where an embedding into `out` records its finished batches (beside it; removed with a fresh start)."""
    return Path(out).with_name(Path(out).name.removesuffix(".npy") + ".progress.json")


def new_rows_file(out: Path, shape: tuple[int, int]) -> np.memmap:
    """A fresh float32 .npy of `shape` at `out`; a record of an earlier attempt's batches goes with the old file."""
    progress_file(out).unlink(missing_ok=True)
    return np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=shape)


def _resume_identity(tag: str, token_ids: Sequence[Sequence[int]], batch_tokens: int, pooling: str, layer: int) -> str:
    """The caller's tag (what model embeds which rows how) plus what the rows and batches are: every row's token
    ids, the batch order and the token budget. A record with another identity is never continued."""
    h = hashlib.sha256(json.dumps([tag, batch_tokens, pooling, layer]).encode())
    for ids in token_ids:
        h.update(np.asarray(ids, dtype=np.int64).tobytes() + b"|")
    lengths = [len(t) for t in token_ids]
    h.update(np.concatenate(token_budget_batches(lengths, batch_tokens) or [np.zeros(0, np.int64)]).tobytes())
    return h.hexdigest()


def _batches_done(out: Path, identity: str, shape: tuple[int, int]) -> int:
    """Batches an earlier attempt finished and recorded for this identity and shape; 0 when there is nothing to
    continue (no file, no record, another identity or shape, an unreadable record)."""
    try:
        record = json.loads(progress_file(out).read_text())
        if record.get("identity") != identity or np.load(out, mmap_mode="r").shape != shape:
            return 0
        return int(record["batches_done"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0


@torch.inference_mode()
def embed_token_ids(
    model,
    token_ids: Sequence[Sequence[int]],
    pad_id: int,
    pooling: str = "mean",
    layer: int = -1,
    batch_tokens: int = 16384,
    out: Path | None = None,
    desc: str = "embedding",
    resume_tag: str | None = None,
) -> np.ndarray:
    """(N, hidden) float32 embeddings of pre-tokenised rows, in input order.

    With `out` and `resume_tag` (a string naming the model, the rows and the settings: the loop passes its
    embedding cache key), a file left by an interrupted call with the same tag, token counts and batch_tokens is
    continued after its last recorded batch instead of started over."""
    n = len(token_ids)
    shape = (n, model.config.hidden_size)
    identity = _resume_identity(resume_tag, token_ids, batch_tokens, pooling, layer) if out and resume_tag else None
    skip = _batches_done(Path(out), identity, shape) if out and identity else 0
    if out is None:
        result = np.empty(shape, dtype=np.float32)
    elif skip:
        result = np.lib.format.open_memmap(out, mode="r+")
    else:
        result = new_rows_file(Path(out), shape)

    def write(batch: np.ndarray, values: np.ndarray) -> None:
        result[batch] = values

    def checkpoint(batches_done: int) -> None:
        assert isinstance(result, np.memmap) and out is not None
        result.flush()  # rows on disk before the record that names them
        write_json(progress_file(Path(out)), {"identity": identity, "batches_done": batches_done})

    embed_batches(
        model, token_ids, pad_id, pooling, layer, batch_tokens, write, desc, skip, checkpoint if identity else None
    )
    if isinstance(result, np.memmap):
        result.flush()
    return result


@torch.inference_mode()
def embed_batches(
    model, token_ids, pad_id: int, pooling: str, layer: int, batch_tokens: int, write, desc: str, skip: int = 0,
    checkpoint=None,
) -> None:
    """Embed rows in token-budget batches and hand each batch to `write(positions, float32 values)`: the one
    forward loop behind the in-memory, memmap and data-parallel results. The first `skip` batches are taken as
    done; `checkpoint(batches_done)` is called every CHECKPOINT_S seconds and after the last batch."""
    body = decoder_body(model)
    device = next(body.parameters()).device
    lengths = [len(t) for t in token_ids]
    batches = token_budget_batches(lengths, batch_tokens)
    todo = batches[skip:]
    last = time.monotonic()
    with progress_bar(desc, total=sum(lengths[i] for b in todo for i in b), unit="tok") as advance:
        for j, batch in enumerate(todo, start=skip + 1):
            ids, mask = padded_batch([token_ids[i] for i in batch], pad_id)
            ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
            outputs = body(input_ids=ids, attention_mask=mask, output_hidden_states=layer != -1, use_cache=False)
            hidden = outputs.last_hidden_state if layer == -1 else outputs.hidden_states[layer]
            write(batch, pool_hidden(hidden, mask, pooling).cpu().numpy())
            advance(int(sum(lengths[i] for i in batch)))
            if checkpoint is not None and (j == len(batches) or time.monotonic() - last >= CHECKPOINT_S):
                checkpoint(j)
                last = time.monotonic()


def embed_rows(
    model,
    tokenizer,
    texts: Sequence[str],
    spec,
    out: Path | None = None,
    desc: str = "embedding",
    shared_fs: bool = True,
    resume_tag: str | None = None,
):
    """Tokenise and embed texts as the recipe's `embedding` block says (in one process, an interrupted embedding
    into `out` with the same `resume_tag` is continued: `embed_token_ids`).

    Under torch.distributed (more than one rank) every rank must call this with the same texts: each embeds a
    length-balanced shard (`embed_rows_distributed`). With `shared_fs` and `out`, every rank gets the one file
    (read-only memmap); otherwise rank 0 gets the whole array (written to `out` when given) and the others None."""

    if distributed.world_size() > 1 and distributed.is_initialized():
        return embed_rows_distributed(model, tokenizer, texts, spec, out, desc, shared_fs=shared_fs)
    ids = tokenize_texts(tokenizer, texts, spec.max_length)
    return embed_token_ids(
        model, ids, tokenizer.pad_token_id, spec.pooling, spec.layer, spec.batch_tokens, out, desc, resume_tag
    )


# -- data-parallel embedding ----------------------------------------------------------------------------------------
def shard_tokens(tokenizer, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, list[list[int]]]:
    """This rank's rows of a length-balanced split (pool ids, sorted) and their token ids.

    Each rank tokenises only its contiguous block to measure lengths (`distributed.shards_by_cost`), then the
    rows of its shard it has not tokenised yet: about 2N/W tokenisations per rank instead of N."""

    block: dict[int, list[int]] = {}

    def block_costs(lo: int, hi: int) -> list[int]:
        for i, ids in zip(
            range(lo, hi), tokenize_texts(tokenizer, texts[lo:hi], max_length) if hi > lo else [], strict=True
        ):
            block[i] = ids
        return [len(block[i]) for i in range(lo, hi)]

    shards, _ = distributed.shards_by_cost(len(texts), block_costs)
    mine = shards[distributed.rank()]
    missing = [int(i) for i in mine if int(i) not in block]
    if missing:
        for i, ids in zip(missing, tokenize_texts(tokenizer, [texts[i] for i in missing], max_length), strict=True):
            block[i] = ids
    return mine, [block[int(i)] for i in mine]


class _RowFile:
    """Writes rows of a float32 .npy created by rank 0, by byte offset (pwrite): ranks write disjoint rows of one
    file without sharing pages through mmap, which network filesystems do not keep coherent across machines."""

    def __init__(self, path: Path):
        import os

        header = np.load(path, mmap_mode="r")
        self.offset, self.row_bytes = header.offset, header.shape[1] * 4
        del header
        self.fd = os.open(path, os.O_WRONLY)

    def write(self, rows: np.ndarray, values: np.ndarray) -> None:
        import os

        values = np.ascontiguousarray(values, dtype=np.float32)
        for row, vector in zip(rows.tolist(), values, strict=True):
            os.pwrite(self.fd, vector.tobytes(), self.offset + row * self.row_bytes)

    def close(self) -> None:
        import os

        os.fsync(self.fd)
        os.close(self.fd)


def embed_rows_distributed(
    model,
    tokenizer,
    texts: Sequence[str],
    spec,
    out: Path | None = None,
    desc: str = "embedding",
    shared_fs: bool = True,
    gather_rows: int = 8192,
):
    """Data-parallel `embed_rows`: every rank embeds its length-balanced shard; the rows are put back in pool order.

    shared_fs and out: rank 0 creates `out` (a float32 .npy), every rank writes its rows into it, a barrier, and
    every rank returns it as a read-only memmap. Otherwise the rows travel to rank 0 by gather, `gather_rows` per
    rank at a time (rank 0 holds one round, not every shard twice); rank 0 returns the (N, hidden) array (a memmap
    when `out` is given), the other ranks None. Which rank embeds a row changes only its batch neighbours: the
    values match one process within float tolerance (padding never enters the pooled value)."""

    n, hidden = len(texts), model.config.hidden_size
    mine, ids = shard_tokens(tokenizer, texts, spec.max_length)
    args = (tokenizer.pad_token_id, spec.pooling, spec.layer, spec.batch_tokens)
    if shared_fs and out is not None:
        out = Path(out)
        distributed.on_rank0(lambda: new_rows_file(out, (n, hidden)).flush())
        rows = _RowFile(out)

        def write(batch, values):
            rows.write(mine[batch], values)
            failpoint(f"embedding:rank{distributed.rank()}")  # tests: one rank lost mid-embedding

        try:
            embed_batches(model, ids, *args, write, desc)
        finally:
            rows.close()
        distributed.barrier()  # every row written
        emb = np.load(out, mmap_mode="r")
        distributed.barrier()  # every rank has it open: the caller's rank 0 may now rename or replace the file
        return emb
    local = np.empty((len(mine), hidden), dtype=np.float32)

    def keep(batch, values):
        local[batch] = values

    embed_batches(model, ids, *args, keep, desc)
    result = None
    if distributed.is_rank0():
        result = new_rows_file(Path(out), (n, hidden)) if out is not None else np.empty((n, hidden), np.float32)
    longest = max(distributed.all_gather_object(len(mine)))
    for start in range(0, max(longest, 1), gather_rows):
        part = (mine[start : start + gather_rows], local[start : start + gather_rows])
        received = distributed.gather_object(part, dst=0)
        if result is not None and received is not None:
            for rows_, values in received:
                result[rows_] = values
    if isinstance(result, np.memmap):
        result.flush()
    return result


def contiguous_block(emb, n: int):
    """Rows [b[r], b[r+1]) of the pool on rank r, from a pool-order array that every rank can read (`emb` not
    None on every rank: the shared file) or that only rank 0 holds (then sent to each rank by scatter): the
    shards `selection.kcenter.farthest_first_distributed` takes, so no rank keeps the whole matrix in memory.
    Returns (block, offset)."""

    bounds = distributed.contiguous_bounds(n, distributed.world_size())
    r = distributed.rank()
    everyone_has_it = all(distributed.all_gather_object(emb is not None))
    if everyone_has_it or distributed.world_size() == 1:
        return emb[bounds[r] : bounds[r + 1]], int(bounds[r])
    import torch.distributed as dist

    box = [None]
    parts = (
        [np.asarray(emb[bounds[q] : bounds[q + 1]]) for q in range(distributed.world_size())]
        if distributed.is_rank0()
        else None
    )
    dist.scatter_object_list(box, parts, src=0)
    return box[0], int(bounds[r])


# -- what is embedded ---------------------------------------------------------------------------------------------
def pool_texts(rows: Sequence[dict], fmt: str, tokenizer, text: str = "prompt_response") -> list[str]:
    """What is embedded of each row: prompt and response as the model reads them (its chat template for chats),
    or with `text: prompt` the prompt alone (what the row asks, whatever the length of its answer)."""
    from .data import prompt_and_response

    if text == "prompt":
        return [prompt_and_response(r, fmt, tokenizer)[0] for r in rows]
    return ["".join(prompt_and_response(r, fmt, tokenizer)) for r in rows]


def check_finite(emb, where: str) -> None:
    """A model that produced NaN/inf embeddings is named in one line (the rows, counted from 0)."""
    from .errors import UserError
    from .selection.base import nonfinite_rows

    bad = nonfinite_rows(emb)
    if len(bad):
        raise UserError(f"{where}: the model produced NaN/inf embeddings for rows {bad[:5].tolist()}")
