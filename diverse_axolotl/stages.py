"""The model work of one round, stage by stage: train the round's adapter (Axolotl), embed and score the pool with
it, evaluate it. Each stage first looks for its output in the run folder and reuses it, so a resumed run never
recomputes finished work; selecting the next round's rows from these outputs is `picking.py`'s job.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .data import save_npy, write_json
from .distributed import agreed, on_rank0
from .faults import failpoint, pause_point
from .models import all_cpu_threads
from .recipe import Recipe
from .run_paths import RunPaths, read_manifest, read_selector_state


class RoundStages:
    """Train, embed, score and evaluate for any round k of one run (the pool rows are fixed for the run)."""

    def __init__(
        self,
        recipe: Recipe,
        paths: RunPaths,
        rows: list[dict],
        file_rows: list[int],
        selector,
        heldout,
        log: Callable[[str], Any] = print,
    ):
        self.recipe = recipe
        self.sel = recipe.selection
        self.paths = paths
        self.rows = rows
        self.file_rows = file_rows
        self.selector = selector
        self.heldout = heldout
        self.log = log
        self._tokenizer = None
        self._dtype_noted = False

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from .models import load_tokenizer

            self._tokenizer = load_tokenizer(self.recipe.base_model, self.trust_remote_code, note=self.log)
        return self._tokenizer

    @property
    def trust_remote_code(self) -> bool:
        return self.recipe.trust_remote_code

    @property
    def scorer_name(self) -> str | None:
        return self.sel.scorer.name if self.sel.scorer else self.selector.default_scorer

    # -- training -------------------------------------------------------------------------------------------
    def train(self, k: int) -> dict[str, Any]:
        from .training import axolotl_config, train_round

        adapter = self.paths.adapter(k)
        done_marker = adapter / "train_result.json"
        if agreed(self.paths.adapter_complete, k):
            return json.loads(done_marker.read_text())
        previous = None if (self.sel.retrain_from_base or k == 0) else self.paths.adapter(k - 1)
        cfg = axolotl_config(
            self.recipe.axolotl,
            self.paths.train_file(k),
            self.sel.pool.format,
            adapter,
            self.paths.round_dir(k) / "prepared",
            self.sel.seed,
            previous,
        )
        rows = sum(1 for _ in open(self.paths.train_file(k)))
        self.log(f"round {k}: training on {rows} rows with Axolotl (log: {self.paths.train_log(k)})")
        result = train_round(
            cfg,
            self.paths.round_dir(k),
            on_trained=lambda: _fault_points(f"train:{k}"),
            description=f"round {k}: training",
        )
        info = {
            "train_loss": result.train_loss,
            "steps": result.steps,
            "seconds": round(result.seconds, 2),
            "truncated_rows": self._rows_over_sequence_len(k, result.sequence_len),
        }

        def record() -> None:  # one rank writes the round's files (all of them wait: on_rank0 ends in a barrier)
            shutil.rmtree(self.paths.round_dir(k) / "prepared", ignore_errors=True)
            write_json(done_marker, info)

        on_rank0(record)
        return info

    def _rows_over_sequence_len(self, k: int, limit: int | None) -> int:
        """How many of the round's rows Axolotl had to truncate (prompt + answer longer than `limit`, the
        sequence_len of Axolotl's normalised config for the round)."""
        from .embedding import pool_texts

        if not limit:
            return 0
        picks, _ = read_manifest(self.paths, k)
        texts = pool_texts([self.rows[i] for i in picks], self.sel.pool.format, self.tokenizer)
        return sum(len(ids) > int(limit) for ids in self.tokenizer(texts)["input_ids"])

    # -- the round's model ----------------------------------------------------------------------------------
    def _note_dtype(self) -> None:
        """One line, once per run: the dtype embedding and scoring run in (auto is bf16 on a capable CPU)."""
        if self._dtype_noted:
            return
        from .models import dtype_name, resolve_device

        self._dtype_noted = True
        spec = self.sel.embedding
        self.log(
            f"embedding and scoring in {dtype_name(spec.dtype, spec.device)} on {resolve_device(spec.device)}"
            f" (selection.embedding.dtype: {spec.dtype}; float32 and bfloat16 can be asked for)"
        )

    def model(self, k: int | None):
        """Base model + round k's adapter (k None: the base model alone), for embedding and scoring."""
        from .models import load_model

        self._note_dtype()
        spec = self.sel.embedding
        adapter = None if k is None else self.paths.adapter(k)
        return load_model(self.recipe.base_model, adapter, spec.device, spec.dtype, self.trust_remote_code)

    # -- embedding ------------------------------------------------------------------------------------------
    def _identity(self, k: int, base: bool = False) -> str:
        """What round k's embeddings are of (pool rows, base model, adapter weights, settings, dtype): the cache
        key, and the tag an interrupted embedding is continued under."""
        from .result_cache import embedding_cache_key, pool_digest

        pool = pool_digest(self.recipe.pool_sha256, self.sel.pool.format, self.file_rows)
        adapter = None if base else self.paths.adapter(k)
        return embedding_cache_key(pool, Path(self.recipe.base_model), adapter, self.sel.embedding)

    def _cache_key(self, k: int, base: bool = False) -> str | None:
        return self._identity(k, base) if self.sel.embedding.cache else None

    @property
    def _cache_dir(self) -> Path:
        from .result_cache import cache_dir

        return cache_dir(self.sel.embedding)

    def embed_from_cache(self, k: int, base: bool = False) -> bool:
        """Copy (hard-link) cached embeddings of this exact pool + model + adapter into the round, if any.
        `base`: the base model's, without adapter (round 0 with `round0: base`). Under torchrun rank 0 looks
        and links; every rank gets its answer."""
        return agreed(self._embed_from_cache, k, base)

    def _embed_from_cache(self, k: int, base: bool) -> bool:
        from .result_cache import cache_fetch

        path = self._embeddings_path(k, base)
        if path.is_file():
            return True
        key = self._cache_key(k, base)
        if key and cache_fetch(self._cache_dir, key, path):
            self.log(f"round {k}: {'base model ' if base else ''}embeddings reused from the cache ({key})")
            return True
        return False

    def embed(self, k: int, model, base: bool = False) -> np.ndarray:
        from .embedding import check_finite, embed_rows, pool_texts, progress_file
        from .result_cache import cache_store

        path = self._embeddings_path(k, base)
        if self.embed_from_cache(k, base):
            return np.load(path, mmap_mode="r")
        texts = pool_texts(self.rows, self.sel.pool.format, self.tokenizer, self.sel.embedding.text)
        partial = path.with_name(f".{path.stem}.partial.npy")
        desc = f"round {k}: embedding" + (" with the base model" if base else "")
        # under torchrun every rank embeds its shard into the one partial file, or (shared_fs: false) sends it to
        # rank 0, which writes it (embedding.embed_rows_distributed)
        spec = self.sel.embedding
        identity = self._identity(k, base)  # an interrupted embedding of the same is continued, not redone
        emb = embed_rows(
            model, self.tokenizer, texts, spec, out=partial, desc=desc, shared_fs=spec.shared_fs, resume_tag=identity
        )
        del emb
        key = identity if spec.cache else None

        def publish() -> None:
            try:
                check_finite(np.load(partial, mmap_mode="r"), f"round {k}")
            except Exception:
                progress_file(partial).unlink(missing_ok=True)  # a re-run embeds again rather than trust these rows
                raise
            failpoint("embed:base" if base else f"embed:{k}")
            partial.replace(path)
            progress_file(partial).unlink(missing_ok=True)
            if key:
                cache_store(self._cache_dir, key, path)

        on_rank0(publish)
        return np.load(path, mmap_mode="r")

    # -- scoring --------------------------------------------------------------------------------------------
    def score(self, k: int, model, selected: np.ndarray, base: bool = False) -> np.ndarray | None:
        name = self.scorer_name
        if name is None:
            return None
        from .result_cache import cache_store
        from .scoring.sharded import score_rows  # data-parallel under torchrun, a plain call otherwise

        path = self._scores_path(k, base)
        if agreed(path.is_file):
            return np.load(path)
        scorer, which, key = self._score_plan(k, selected, base)
        if self._scores_from_cache(k, base, key, path):
            return np.load(path)
        values = np.zeros(len(self.rows), dtype=np.float64)
        values[which] = score_rows(
            scorer,
            model,
            self.tokenizer,
            [self.rows[i] for i in which],
            self.sel.pool.format,
            max_length=self.sel.embedding.max_length,
            desc=f"round {k}: scoring ({name}{', base model' if base else ''})",
        )
        on_rank0(save_npy, path, values)
        if key and np.isfinite(values).all():  # a NaN is worth computing again, not keeping
            on_rank0(cache_store, self._cache_dir, key, path)
        return values

    def scores_ready(self, k: int, selected: np.ndarray, base: bool = False) -> bool:
        """Round k's scores are in the round folder, or now hard-linked there from the cache: no model is needed
        for them (and none is loaded when the embeddings are ready too). True when the recipe has no scorer."""
        if self.scorer_name is None:
            return True
        path = self._scores_path(k, base)
        if agreed(path.is_file):
            return True
        return self._scores_from_cache(k, base, self._score_plan(k, selected, base)[2], path)

    def _scores_path(self, k: int, base: bool) -> Path:
        return self.paths.base_scores() if base else self.paths.scores(k)

    def _embeddings_path(self, k: int, base: bool) -> Path:
        return self.paths.base_embeddings() if base else self.paths.embeddings(k)

    def _score_plan(self, k: int, selected: np.ndarray, base: bool) -> tuple[Any, np.ndarray, str | None]:
        """The scorer, the rows it scores and their cache key (needs round k's adapter unless `base`)."""
        scorer, which = self._scorer(), self._scored_rows(selected)
        return scorer, which, self._score_key(k, base, scorer, which)

    def _scores_from_cache(self, k: int, base: bool, key: str | None, path: Path) -> bool:
        """Hard-link cached scores of `key` to `path` (rank 0 looks and links; every rank gets its answer)."""
        from .result_cache import cache_fetch

        if not key or not agreed(cache_fetch, self._cache_dir, key, path):
            return False
        label = "base model " if base else ""
        self.log(f"round {k}: {label}scores ({self.scorer_name}) reused from the cache ({key})")
        return True

    def _scorer(self):
        from .scoring import get_scorer

        return self.sel.scorer.build() if self.sel.scorer else get_scorer(self.scorer_name)

    def _scored_rows(self, selected: np.ndarray) -> np.ndarray:
        """The rows a selector reads scores of: the trained ones, or every pool row."""
        return selected if self.selector.scores == "selected" else np.arange(len(self.rows))

    def _score_key(self, k: int, base: bool, scorer, which: np.ndarray) -> str | None:
        """The score cache key (in the embedding cache's folder; `selection.embedding.cache` turns both off)."""
        from .result_cache import pool_digest, score_cache_key

        if not self.sel.embedding.cache:
            return None
        pool = pool_digest(self.recipe.pool_sha256, self.sel.pool.format, self.file_rows)
        adapter = None if base else self.paths.adapter(k)
        spec = self.sel.embedding
        return score_cache_key(pool, Path(self.recipe.base_model), adapter, spec, scorer.identity(), which)

    def embeds(self, k: int) -> bool:
        """Whether the selection after round k reads the pool's embeddings with round k's adapter: the selector
        decides from the state saved with round k (iterative kMQ clusters once, then reads only its state)."""
        if not self.selector.needs_embeddings:
            return False
        if not self.paths.manifest(k).is_file():
            return True
        return self.selector.needs_embeddings_given(read_selector_state(self.paths, k))

    def stage_outputs_exist(self, k: int, selected: np.ndarray) -> bool:
        """Round k's embeddings and scores (those the selector uses) are in the round folder or the cache."""
        has_emb = not self.embeds(k) or self.embed_from_cache(k)
        return has_emb and self.scores_ready(k, selected)

    def restore_stage_outputs(self, k: int) -> None:
        """Embeddings or scores lost after the next round was selected are recomputed from round k's adapter,
        without selecting again (the next round's picks stay as they are)."""
        selected, _ = read_manifest(self.paths, k)
        if self.stage_outputs_exist(k, selected):
            return
        model = self.model(k)
        with all_cpu_threads():
            if self.embeds(k):
                self.embed(k, model)
            self.score(k, model, selected)

    # -- evaluation -----------------------------------------------------------------------------------------
    def evaluates(self, k: int) -> bool:
        spec = self.recipe.eval
        return spec is not None and (spec.every_round or k == self.sel.rounds)

    def evaluate(self, k: int) -> dict[str, Any]:
        """lm-eval (and our metrics) on the round's adapter, when the recipe has an `eval:` block."""
        if not self.evaluates(k):
            return {}
        path = self.paths.eval_file(k)
        t = time.perf_counter()
        if not agreed(path.is_file):
            on_rank0(self._evaluate, k, path)  # lm-eval runs in one process; the other ranks wait for its file
        metrics = json.loads(path.read_text()).get("metrics", {})
        return {"eval_s": round(time.perf_counter() - t, 2), "metrics": metrics}

    def _evaluate(self, k: int, path: Path) -> None:
        from .evaluation import evaluate_spec
        from .evaluation.cache import evaluate_spec_cached
        from .training import note_log_on_error

        spec = self.recipe.eval
        assert spec is not None  # evaluates(k) said so

        def run() -> None:
            self.log(f"round {k}: evaluating ({', '.join(spec.tasks)}; log: {self.paths.eval_log(k)})")
            with all_cpu_threads(), note_log_on_error(self.paths.eval_log(k), f"round {k}'s evaluation output"):
                evaluate_spec(
                    spec,
                    self.recipe.base_model,
                    self.paths.adapter(k),
                    path,
                    device=spec.device,
                    dtype=spec.dtype,
                    trust_remote_code=self.trust_remote_code,
                    own=self.heldout,
                )

        evaluate_spec_cached(
            spec,
            self.recipe.base_model,
            self.paths.adapter(k),
            path,
            run,
            self.heldout,
            lambda m: self.log(f"round {k}: {m}"),
            self.trust_remote_code,
        )


def _fault_points(name: str) -> None:
    """The test hooks after training: a failpoint (kill) and a pause point (Ctrl-C) of that name."""
    failpoint(name)
    pause_point(name)
