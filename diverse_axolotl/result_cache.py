"""What a run can recompute and reuses instead: pool embeddings and per-row scores, cached across runs and
recipes under `cache.cache_root()/embeddings` (hard links where possible), each under a key of everything its
numbers depend on. The loop (`stages.RoundStages`) and `select` (`select_model`) read and write the same entries.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .io import link_or_copy


def model_fingerprint(model_dir: Path) -> str:
    """Identity of a model folder without reading its weights: config.json's content and the weight files'
    names, sizes and modification times (hashing gigabytes of weights on every round would defeat the cache)."""
    model_dir = Path(model_dir)
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for f in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


#: Files of a model folder that say how text becomes tokens (tokenizer, special tokens, chat template).
TOKENIZER_FILES = ("tokenizer", "special_tokens", "chat_template", "added_tokens", "vocab", "merges")


def tokenizer_fingerprint(model_dir: Path) -> str:
    """Identity of a model folder's tokenizer and chat template, by the content of their files: what turns a row
    into the tokens a scorer reads. Small files, each hashed once per version (`data.file_sha256`)."""
    from .data import file_sha256

    h = hashlib.sha256()
    for f in sorted(Path(model_dir).iterdir()):
        if f.is_file() and f.name.startswith(TOKENIZER_FILES):
            h.update(f"{f.name}:{file_sha256(f)}\n".encode())
    return h.hexdigest()


def pool_digest(pool_sha256: str | None, fmt: str, file_rows: Sequence[int]) -> str:
    """The pool part of an embedding cache key: its content, its format, and which of its rows are embedded."""
    rows_digest = hashlib.sha256(np.asarray(file_rows, dtype=np.int64).tobytes()).hexdigest()
    return f"{pool_sha256}:{fmt}:{rows_digest}"


def _model_part(pool_digest: str, base_model: Path, adapter: Path | None, spec) -> dict:
    """What every cached per-row result depends on: the pool rows, the base model, the adapter's weights and the
    dtype the model runs in (what `auto` stands for on this machine)."""
    from .data import file_sha256
    from .models import dtype_name

    adapter_digest = None
    if adapter is not None:  # the weights file peft wrote (safetensors, or .bin from older peft)
        weights = Path(adapter) / "adapter_model.safetensors"
        adapter_digest = file_sha256(weights if weights.is_file() else Path(adapter) / "adapter_model.bin")
    return {
        "pool": pool_digest,
        "model": model_fingerprint(base_model),
        "adapter": adapter_digest,
        "dtype": dtype_name(spec.dtype, spec.device),
    }


def _key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def embedding_cache_key(pool_digest: str, base_model: Path, adapter: Path | None, spec) -> str:
    """(pool, base model, adapter weights, the embedding settings that change the numbers, dtype) -> a hex key.

    The settings are those that say what a row's vector is (pooling, layer, max_length, text), not how it is
    computed or delivered (batch_tokens, shared_fs, cache). One added later enters the key only when it differs
    from its default (`hashing.HASH_NEUTRAL`), so embeddings cached before it existed are still found."""
    from .hashing import without_neutral_defaults

    what = {name: getattr(spec, name) for name in ("pooling", "layer", "max_length", "text")}
    return _key({**_model_part(pool_digest, base_model, adapter, spec), **without_neutral_defaults(spec, what)})


def score_cache_key(
    pool_digest: str, base_model: Path, adapter: Path | None, spec, scorer: dict, rows: np.ndarray
) -> str:
    """(pool, base model, adapter weights, dtype, tokenizer and chat template, the scorer with its parameters,
    max_length, which rows) -> a hex key for per-row scores. Two selectors that read the same scorer (deita and
    qdit both read IFD) share the scores: swapping one for the other costs no scoring pass. How the batches are
    cut is left out (`Scorer.how_params`), as for embeddings: for the generating scorers it can, in principle,
    flip a near-tie token (`scoring.sharded`)."""
    rows_digest = hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()
    return _key(
        {
            **_model_part(pool_digest, base_model, adapter, spec),
            "tokenizer": tokenizer_fingerprint(base_model),
            "scores": scorer,
            "max_length": spec.max_length,
            "rows": rows_digest,
        }
    )


def cache_dir(spec) -> Path:
    """The folder of the cached embeddings and scores: the embedding block's `cache_dir`, else
    `cache.cache_root()/embeddings`."""
    from .cache import cache_root

    return Path(spec.cache_dir) if spec.cache_dir else cache_root() / "embeddings"


def cache_file(cache_dir: Path, key: str) -> Path:
    """Where the cache keeps the embeddings or scores of `key`."""
    return Path(cache_dir) / f"{key}.npy"


def cache_fetch(cache_dir: Path, key: str, dst: Path) -> bool:
    src = cache_file(cache_dir, key)
    if not src.is_file():
        return False
    link_or_copy(src, dst)  # creates dst's folder: round 0 of a `round0: base` run has none yet
    return True


def cache_store(cache_dir: Path, key: str, src: Path) -> None:
    link_or_copy(src, cache_file(cache_dir, key))


def try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive flock on `path` (created if missing), or None when another process
    holds it. The descriptor is of the file now at `path` (a holder may unlink it when done: then try again). Where
    the file system has no flock, the lock is taken as held elsewhere (the caller then works on its own files)."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held elsewhere, or no flock on this file system (some network file systems)
            os.close(fd)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # locked a file its holder had just removed: lock the one at `path` now
