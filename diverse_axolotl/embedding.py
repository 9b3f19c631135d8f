"""Embedding a pool with the (adapted) model: one vector per row, pooled from a hidden layer.

Rows are tokenised once, sorted by length, and packed into batches holding at most `batch_tokens` padded tokens,
so short rows share big batches and long rows small ones. Only the transformer body runs (no vocab-sized logits).
Results go to a float32 array in the original row order (a memmap on disk when `out` is given).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .inference import padded_batch, token_budget_batches
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
) -> np.ndarray:
    """(N, hidden) float32 embeddings of pre-tokenised rows, in input order."""
    body = decoder_body(model)
    device = next(body.parameters()).device
    hidden_size = model.config.hidden_size
    n = len(token_ids)
    result = (
        np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, hidden_size))
        if out is not None
        else np.empty((n, hidden_size), dtype=np.float32)
    )
    lengths = [len(t) for t in token_ids]
    with progress_bar(desc, total=sum(lengths), unit="tok") as advance:
        for batch in token_budget_batches(lengths, batch_tokens):
            ids, mask = padded_batch([token_ids[i] for i in batch], pad_id)
            ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
            outputs = body(input_ids=ids, attention_mask=mask, output_hidden_states=layer != -1, use_cache=False)
            hidden = outputs.last_hidden_state if layer == -1 else outputs.hidden_states[layer]
            result[batch] = pool_hidden(hidden, mask, pooling).cpu().numpy()
            advance(int(sum(lengths[i] for i in batch)))
    if isinstance(result, np.memmap):
        result.flush()
    return result


def embed_rows(model, tokenizer, texts: Sequence[str], spec, out: Path | None = None, desc: str = "embedding"):
    """Tokenise and embed texts as the recipe's `embedding` block says."""
    ids = tokenize_texts(tokenizer, texts, spec.max_length)
    return embed_token_ids(model, ids, tokenizer.pad_token_id, spec.pooling, spec.layer, spec.batch_tokens, out, desc)


# -- cache ------------------------------------------------------------------------------------------------------
def model_fingerprint(model_dir: Path) -> str:
    """Identity of a model folder without reading its weights: config.json's content and the weight files'
    names, sizes and modification times (hashing gigabytes of weights on every round would defeat the cache)."""
    import hashlib

    model_dir = Path(model_dir)
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for f in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def pool_texts(rows: Sequence[dict], fmt: str, tokenizer) -> list[str]:
    """What is embedded of each row: prompt and response as the model reads them (its chat template for chats)."""
    from .data import prompt_and_response

    return ["".join(prompt_and_response(r, fmt, tokenizer)) for r in rows]


def pool_digest(pool_sha256: str | None, fmt: str, file_rows: Sequence[int]) -> str:
    """The pool part of an embedding cache key: its content, its format, and which of its rows are embedded."""
    import hashlib

    rows_digest = hashlib.sha256(np.asarray(file_rows, dtype=np.int64).tobytes()).hexdigest()
    return f"{pool_sha256}:{fmt}:{rows_digest}"


def check_finite(emb, where: str) -> None:
    """A model that produced NaN/inf embeddings is named in one line (the rows, counted from 0)."""
    from .errors import UserError
    from .selection.base import nonfinite_rows

    bad = nonfinite_rows(emb)
    if len(bad):
        raise UserError(f"{where}: the model produced NaN/inf embeddings for rows {bad[:5].tolist()}")


def embedding_cache_key(pool_digest: str, base_model: Path, adapter: Path | None, spec) -> str:
    """(pool, base model, adapter weights, pooling, layer, max_length, dtype) -> a hex key."""
    import hashlib
    import json

    from .data import file_sha256
    from .models import dtype_name

    adapter_digest = file_sha256(Path(adapter) / "adapter_model.safetensors") if adapter is not None else None
    payload = {
        "pool": pool_digest, "model": model_fingerprint(base_model), "adapter": adapter_digest,
        "pooling": spec.pooling, "layer": spec.layer, "max_length": spec.max_length,
        "dtype": dtype_name(spec.dtype, spec.device),  # what `auto` stands for on this machine
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def default_cache_dir() -> Path:
    from .cache import cache_root

    return cache_root() / "embeddings"


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link when possible (no second copy on disk), else copy; `dst` appears atomically."""
    import os
    import shutil

    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def cache_file(cache_dir: Path, key: str) -> Path:
    """Where the cache keeps the embeddings of `key`."""
    return Path(cache_dir) / f"{key}.npy"


def cache_fetch(cache_dir: Path, key: str, dst: Path) -> bool:
    src = cache_file(cache_dir, key)
    if not src.is_file():
        return False
    _link_or_copy(src, dst)
    return True


def cache_store(cache_dir: Path, key: str, src: Path) -> None:
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    _link_or_copy(src, cache_file(cache_dir, key))
