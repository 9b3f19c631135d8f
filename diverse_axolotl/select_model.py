"""What a one-shot selection computes with a model (`oneshot.select_pool`): the model loaded (a causal LM as the
loop loads it, or an encoder), then the pool's embeddings and scores, reused from the loop's cache
(`result_cache`) or computed and stored there. An embedding stopped mid-way continues when `select` runs again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import UserError


def is_causal_lm(model_dir: Path) -> bool:
    """A decoder (…ForCausalLM in config.json's architectures) is embedded as the loop embeds it; anything else
    is an encoder, embedded sentence-transformers style."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{model_dir}: cannot read config.json ({exc})") from None
    return any(str(a).endswith("ForCausalLM") for a in cfg.get("architectures") or [])


def load_any_model(model_dir: Path, device: str = "auto", dtype: str = "auto"):
    """(model, causal): a causal LM through `models.load_model`, else the encoder through AutoModel."""
    from .models import check_model_dir, load_model

    check_model_dir(model_dir)
    if is_causal_lm(model_dir):
        return load_model(model_dir, None, device, dtype), True
    from transformers import AutoModel

    from .models import resolve_device, resolve_dtype

    dev = resolve_device(device)
    try:
        model = AutoModel.from_pretrained(str(model_dir), dtype=resolve_dtype(dtype, dev))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a model from {model_dir}: {str(exc).splitlines()[0]}") from None
    return model.to(dev).eval(), False


def embedding_spec(causal: bool, spec=None, selector=None):
    """The loop's embedding settings for a causal LM (the recipe's, if given; the text `selector` embeds unless the
    settings name one, as a recipe resolves it); mean pooling for an encoder."""
    from .recipe import EmbeddingSpec

    spec = spec or EmbeddingSpec()
    if selector is not None:
        spec = spec.with_text_of(selector)
    return spec if causal else spec.model_copy(update={"pooling": "mean", "layer": -1})


def l2_normalise(emb: np.ndarray) -> None:
    """Rows scaled to unit length in place (sentence-transformers' Normalize)."""
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    emb /= np.maximum(norms, 1e-12)


def embed_pool(
    rows: list[dict], fmt: str, pool_key: str, model, tokenizer, model_dir: Path, causal: bool, spec, log: Callable
) -> tuple[np.ndarray, str | None]:
    """(embeddings of `rows`, cache key): from the cache when this pool (`pool_key`: `result_cache.pool_digest`),
    model and settings were embedded before, else computed (with a progress bar) and stored there.

    With the cache on, the rows are written into `.<key>.partial.npy` in the cache folder under a lock on that key,
    so a `select` stopped mid-way (Ctrl-C, a killed job) continues from its last recorded batch when run again
    (`embedding.embed_token_ids`). A second process embedding the same key meanwhile writes its own pid-named file."""
    from .embedding import check_finite, embed_rows, pool_texts, progress_file
    from .result_cache import cache_dir, cache_file, embedding_cache_key, try_lock

    kind = "causal" if causal else "encoder-l2"  # an encoder's rows are L2-normalised: never the same entry
    key = embedding_cache_key(f"{pool_key}:{kind}", Path(model_dir), None, spec) if spec.cache else None
    folder = cache_dir(spec)
    cached = cache_file(folder, key) if key else None
    if cached is not None and cached.is_file():
        log(f"embeddings reused from the cache ({key})")
        return np.load(cached, mmap_mode="r"), key
    out, lock = None, None
    lock_file = folder / f".{key}.lock"
    if cached is not None:
        folder.mkdir(parents=True, exist_ok=True)
        lock = try_lock(lock_file)
        if lock is not None and cached.is_file():  # its holder finished while we looked
            os.close(lock)
            log(f"embeddings reused from the cache ({key})")
            return np.load(cached, mmap_mode="r"), key
        out = folder / (f".{key}.partial.npy" if lock is not None else f".{key}.{os.getpid()}.partial.npy")
    try:
        emb = embed_rows(
            model,
            tokenizer,
            pool_texts(rows, fmt, tokenizer, spec.text),
            spec,
            out=out,
            desc="embedding the pool",
            resume_tag=key if lock is not None else None,
        )
        try:
            check_finite(emb, str(model_dir))
        except UserError:
            if out is not None:  # a re-run embeds again rather than trust these rows
                progress_file(out).unlink(missing_ok=True)
                out.unlink(missing_ok=True)
            raise
        if not causal:
            l2_normalise(emb)
        if out is None or cached is None:
            return emb, None
        emb.flush()
        del emb
        out.replace(cached)
        progress_file(out).unlink(missing_ok=True)
        if lock is not None:
            lock_file.unlink(missing_ok=True)  # while held: a process that opened it retries (`try_lock`)
    finally:
        if lock is None and out is not None and out.exists():
            out.unlink()  # a pid-named file is nobody's to continue
        if lock is not None:
            os.close(lock)  # releases the flock
    return np.load(cached, mmap_mode="r"), key


def score_pool(
    rows: list[dict], fmt: str, pool_key: str, scorer_name: str, model, tokenizer, model_dir: Path, spec, log: Callable
) -> np.ndarray:
    """Every row's score by the named scorer (default parameters): from the cache when this pool, model, tokenizer
    and scorer were scored before (the loop's entry when the rows and settings are the same), else computed and
    stored there (only finite scores are kept)."""
    from .result_cache import cache_dir, cache_file, score_cache_key
    from .scoring import get_scorer

    scorer = get_scorer(scorer_name)
    which = np.arange(len(rows))
    key = score_cache_key(pool_key, Path(model_dir), None, spec, scorer.identity(), which)
    cached = cache_file(cache_dir(spec), key) if spec.cache else None
    if cached is not None and cached.is_file():
        log(f"scores ({scorer_name}) reused from the cache ({key})")
        return np.load(cached)
    desc = f"scoring ({scorer_name})"
    values = np.asarray(
        scorer.score(model, tokenizer, rows, fmt, max_length=spec.max_length, desc=desc), dtype=np.float64
    )
    if cached is not None and np.isfinite(values).all():
        from .io import save_npy

        save_npy(cached, values)
    return values
