"""One-shot selection: a pool, a selector and a budget in, the subset (in the pool's own format) and a manifest out.

No training happens before the selection: the embeddings come from a model as it is (the base model of a recipe,
embedded as the loop embeds; or any local Hugging Face encoder, sentence-transformers style: mean pooling,
L2-normalised) or from a file the user already has. The same selectors, parameter checks, scorers, embedding
cache and progress bars as the loop are used, so `select` with the recipe's base model picks what `round0: base`
picks. The `select` verb and the Axolotl plugin (`integrations`) both call `select_pool`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import Rows, atomic_path, check_rows, clean_pool, write_json, write_jsonl
from .errors import UserError
from .pools import axolotl_entry, concat, detect_format, pool_sha256, pool_sources, read_source
from .selection.base import nonfinite_rows


@dataclass
class Pool:
    """A pool as the selection sees it: the usable rows, their row numbers among all rows read, and provenance."""

    rows: list[dict]
    file_rows: list[int]
    n_read: int
    fmt: str
    sources: list[Path]
    sha256: str
    stats: dict = field(default_factory=dict)


def read_select_pool(
    paths: Sequence[str | Path], fmt: str | None = None, data_files=None, split: str | None = None
) -> Pool:
    """Every file named (each may be a glob or a folder) read as one pool; format from the first row unless given."""
    return _build_pool([(src, split) for p in paths for src in pool_sources(p, data_files)], fmt)


def pool_from_entries(entries: Sequence[dict]) -> Pool:
    """Axolotl `datasets:` entries (path, type, data_files, split, ...) read as one pool of one format."""
    parsed = [axolotl_entry(e) for e in entries]
    formats = {fmt for *_, fmt in parsed}
    if len(formats) > 1:
        raise UserError(
            f"the datasets have different formats ({', '.join(sorted(formats))}); select from one format at a time"
        )
    return _build_pool(
        [(src, split) for path, files, split, _ in parsed for src in pool_sources(path, files)], formats.pop()
    )


def _build_pool(sources: Sequence[tuple[Path, str | None]], fmt: str | None) -> Pool:
    """Rows with an empty instruction or answer are left out (counted); row numbers refer to all rows read."""
    rows: Rows = concat([(src, read_source(src, split)) for src, split in sources])
    files = [src for src, _ in sources]
    where = str(files[0]) if len(files) == 1 else f"{files[0]} (+{len(files) - 1} more files)"
    fmt = fmt or detect_format(rows, str(files[0]))
    check_rows(rows, fmt, files[0])
    kept, file_rows, stats = clean_pool(rows, fmt, "skip", False, Path(where))
    digest = pool_sha256(files[0]) if len(files) == 1 else _combined_sha256(files)
    return Pool(kept, file_rows, len(rows), fmt, files, digest, stats)


def _combined_sha256(sources: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for src in sources:
        h.update(f"{src.name}:{pool_sha256(src)}\n".encode())
    return h.hexdigest()


def parse_budget(value: str | int | float, n_rows: int) -> int:
    """`5%`, a fraction below 1 (0.05) or a row count (500) -> rows to select; at least 1, at most the pool."""
    text = str(value).strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            rows = max(1, round(n_rows * pct / 100))
        elif isinstance(value, float) or "." in text:
            frac = float(text)
            if not 0 < frac <= 1:
                raise ValueError
            rows = max(1, round(n_rows * frac))
        else:
            rows = int(text)
            if rows <= 0:
                raise ValueError
    except ValueError:
        raise UserError(
            f"budget {value!r}: give a percentage (5%), a fraction (0.05) or a number of rows (500)"
        ) from None
    if rows > n_rows:
        raise UserError(f"budget {value!r} is {rows} rows, but the pool has only {n_rows} usable rows")
    return rows


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """`--param k=v` pairs -> a dict, values read as YAML scalars (10 -> int, 0.5 -> float, true -> bool)."""
    import yaml

    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--param {pair!r}: write it as name=value")
        try:
            params[key.strip()] = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            params[key.strip()] = raw
    return params


# -- embeddings -------------------------------------------------------------------------------------------------
def load_embeddings_file(path: Path, n_rows: int) -> np.ndarray:
    """A user's (rows x dims) array: one row per pool row as read, finite; one-line errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such embeddings file")
    try:
        emb = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path}: not a .npy array ({str(exc).splitlines()[0]})") from None
    if emb.ndim != 2 or not (np.issubdtype(emb.dtype, np.floating) or np.issubdtype(emb.dtype, np.integer)):
        raise UserError(f"{path}: expected a 2-D numeric array (rows x dims), got shape {emb.shape} of {emb.dtype}")
    if emb.shape[0] != n_rows:
        raise UserError(
            f"{path}: {emb.shape[0]} rows of embeddings, but the pool has {n_rows} rows"
            " (one per pool row, in file order)"
        )
    bad = nonfinite_rows(emb)  # in chunks: the file stays a memmap
    if len(bad):
        raise UserError(f"{path}: NaN or inf in {len(bad)} row(s), first: {bad[:5].tolist()} (rows counted from 0)")
    return emb


def array_sha256(emb: np.ndarray) -> str:
    """The embeddings' identity in the manifest: their float32 bytes, whatever file or cache they came from."""
    h = hashlib.sha256()
    for start in range(0, len(emb), 65536):
        h.update(np.ascontiguousarray(emb[start : start + 65536], dtype=np.float32).tobytes())
    return h.hexdigest()


# -- selection --------------------------------------------------------------------------------------------------
def _scorer_for(selector, scorer_name: str | None) -> str | None:
    """The scorer a one-shot selection runs: named, or the selector's default where it reads every row's score
    (`selected`-only scores need rows chosen before, which a one-shot selection has none of)."""
    if selector.scores in ("none", "selected"):
        if scorer_name and selector.scores == "none":
            raise UserError(f"selector '{selector.name}' does not use scores; leave out --scorer")
        return None
    return scorer_name or selector.default_scorer


def select_pool(
    pool: Pool,
    selector_name: str,
    params: dict[str, Any],
    budget: str | int | float,
    seed: int = 0,
    model_dir: Path | None = None,
    embeddings_file: Path | None = None,
    scorer_name: str | None = None,
    spec=None,
    log: Callable[[str], None] = print,
) -> tuple[np.ndarray, dict]:
    """(picks as positions in `pool.rows`, manifest) of one selection. Checks every input before loading a model."""
    from .selection import get_selector

    selector = get_selector(selector_name, **params)
    k = parse_budget(budget, len(pool.rows))
    scorer = _scorer_for(selector, scorer_name)
    if scorer and selector.scores == "required" and model_dir is None:
        raise UserError(
            f"selector '{selector.name}' scores every row with '{scorer}', which needs a model: pass --model"
        )
    if selector.needs_embeddings and model_dir is None and embeddings_file is None:
        raise UserError(f"selector '{selector.name}' needs embeddings: pass --model DIR or --embeddings FILE.npy")
    n_clusters = selector.params.model_dump().get("n_clusters")
    if isinstance(n_clusters, int) and n_clusters >= len(pool.rows):
        raise UserError(
            f"selector '{selector.name}': n_clusters is {n_clusters},"
            f" but the pool has only {len(pool.rows)} usable rows"
        )
    timings: dict[str, float] = {}
    emb, scores, model_info, key = None, None, None, None
    if embeddings_file is not None:
        emb = load_embeddings_file(embeddings_file, pool.n_read)[np.asarray(pool.file_rows)]
    model = tokenizer = None
    if model_dir is not None and ((selector.needs_embeddings and emb is None) or scorer):
        from .models import all_cpu_threads, dtype_name, load_tokenizer
        from .result_cache import model_fingerprint, pool_digest
        from .select_model import embed_pool, embedding_spec, load_any_model, score_pool

        t = time.perf_counter()
        model, causal = load_any_model(model_dir, *(((spec.device, spec.dtype)) if spec else ()))
        tokenizer = load_tokenizer(model_dir, note=log)
        spec = embedding_spec(causal, spec, selector)
        model_info = {
            "path": str(model_dir),
            "fingerprint": model_fingerprint(model_dir),
            "kind": "causal LM (loop embedding)" if causal else "encoder (mean pooling, L2-normalised)",
            "pooling": spec.pooling,
            "layer": spec.layer,
            "text": spec.text,
            "max_length": spec.max_length,
            "dtype": dtype_name(spec.dtype, spec.device),
        }
        with all_cpu_threads():
            pool_key = pool_digest(pool.sha256, pool.fmt, pool.file_rows)
            if selector.needs_embeddings and emb is None:
                emb, key = embed_pool(pool.rows, pool.fmt, pool_key, model, tokenizer, model_dir, causal, spec, log)
            timings["embed_s"] = time.perf_counter() - t
            if scorer:
                if not causal:
                    raise UserError(f"scorer '{scorer}' needs a causal language model; {model_dir} is an encoder")
                t = time.perf_counter()
                scores = score_pool(pool.rows, pool.fmt, pool_key, scorer, model, tokenizer, model_dir, spec, log)
                timings["score_s"] = time.perf_counter() - t
    del model
    t = time.perf_counter()
    picks = selector.select(
        emb if selector.needs_embeddings else None, k, scores=scores, seed=seed, n_rows=len(pool.rows)
    )
    timings["select_s"] = time.perf_counter() - t
    manifest = {
        "selector": {"name": selector.name, "params": selector.params.model_dump(mode="json")},
        "scorer": scorer,
        "seed": seed,
        "budget": {"asked": str(budget), "rows": k},
        "pool": {
            "sources": [str(s) for s in pool.sources],
            "format": pool.fmt,
            "sha256": pool.sha256,
            "rows_read": pool.n_read,
            "rows_usable": len(pool.rows),
            "empty_skipped": pool.stats.get("empty_skipped", 0),
        },
        "model": model_info,
        "embeddings": None
        if emb is None
        else {
            "file": str(embeddings_file) if embeddings_file is not None else None,
            "cache_key": key,
            "shape": list(emb.shape),
            "sha256": array_sha256(emb),
        },
        "selector_info": selector.last_info,
        "timings": {name: round(v, 3) for name, v in timings.items()},
        "indices": [pool.file_rows[i] for i in picks],  # row numbers among all rows read, in pick order
    }
    return picks, manifest


# -- output -----------------------------------------------------------------------------------------------------
def write_rows(path: Path, rows: list[dict]) -> None:
    """Rows in the container the file name says: .json (a list), .parquet, else JSON lines; atomically."""
    path = Path(path)
    if path.suffix == ".json":
        write_json(path, rows)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
    else:
        write_jsonl(path, rows)


def manifest_path(out: Path) -> Path:
    """`subset.jsonl` -> `subset.manifest.json`."""
    out = Path(out)
    return out.with_name(f"{out.name.rsplit('.', 1)[0]}.manifest.json")


def write_selection(pool: Pool, picks: np.ndarray, manifest: dict, out: Path) -> Path:
    """The subset (rows in pick order, unchanged) then its manifest; returns the manifest's path."""
    from . import __version__

    write_rows(out, [pool.rows[i] for i in picks])
    path = manifest_path(out)
    write_json(path, {**manifest, "subset": str(out), "diverse_axolotl": __version__})
    return path
