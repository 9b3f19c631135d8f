"""Choosing each round's rows: round 0's seed set, then after each round k the selector's picks on round k's
embeddings and scores. Each choice is written as round k+1's training file and manifest (`run_paths`), which
also carry the selector's state between rounds.
"""

from __future__ import annotations

import time

import numpy as np

from .distributed import agreed, on_rank0, world_size
from .models import all_cpu_threads
from .run_paths import read_manifest, read_selector_state, save_selector_state, write_round_files
from .selection import get_selector
from .stages import RoundStages


class RoundPicker:
    """Writes round 0's picks and every later round's, from the stages' embeddings and scores."""

    def __init__(self, stages: RoundStages):
        self.stages = stages
        self.recipe = stages.recipe
        self.sel = stages.sel
        self.paths = stages.paths
        self.selector = stages.selector
        self.log = stages.log

    def _info(self, seed: int) -> dict:
        """What every selected round's manifest records about how its rows were chosen."""
        return {
            "selector": {"name": self.selector.name, "params": self.selector.params.model_dump(mode="json")},
            "seed": seed,
            "recipe_hash": self.recipe.hash,
        }

    def seed_round(self) -> None:
        """Round 0's rows: `seed_size` random rows, or with `round0: base` the selector's picks on the base model."""
        if agreed(self.paths.manifest(0).is_file):
            return
        if self.sel.round0 == "base":
            self.seed_from_base()
            return
        rows, file_rows = self.stages.rows, self.stages.file_rows
        picks = get_selector("random").select(None, self.sel.seed_size, seed=self.sel.seed, n_rows=len(rows))
        info = {
            "selector": {"name": "random", "params": {}},
            "seed": self.sel.seed,
            "recipe_hash": self.recipe.hash,
            "file_rows": [file_rows[i] for i in picks],
        }
        on_rank0(write_round_files, self.paths, 0, rows, picks, np.zeros(len(picks), dtype=np.int64), info)

    def seed_from_base(self) -> None:
        """Round 0 chosen by the recipe's selector on the base model's embeddings: no adapter, nothing trained
        before it (DiverseEvol's one-shot arm; for iterative_kmq the kMQ draw that starts D&C's Algorithm 1).
        Scores, for selectors that use them on every row, come from the base model too."""
        st, sel = self.stages, self.selector
        n = len(st.rows)
        wants_scores = st.scorer_name is not None and sel.scores in ("required", "optional")
        need_model = (sel.needs_embeddings and not st.embed_from_cache(0, base=True)) or (
            wants_scores and not st.scores_ready(0, np.arange(n), base=True)
        )
        model = st.model(None) if need_model else None
        self.paths.round_dir(0).mkdir(parents=True, exist_ok=True)
        timings = {}
        t = time.perf_counter()
        with all_cpu_threads():
            emb = st.embed(0, model, base=True) if sel.needs_embeddings else None
            timings["embed_s"] = time.perf_counter() - t
            t = time.perf_counter()
            scores = st.score(0, model, np.arange(n), base=True) if wants_scores else None
        timings["score_s"] = time.perf_counter() - t
        del model
        t = time.perf_counter()
        picks, state = self._select(emb, self.sel.seed_size, np.empty(0, dtype=np.int64), scores, self.sel.seed, None)
        timings["select_s"] = time.perf_counter() - t
        info = {
            **self._info(self.sel.seed),
            "round0": "base",
            "embeddings": "base_embeddings.npy (base model, no adapter)" if sel.needs_embeddings else None,
            "selector_info": sel.last_info,  # e.g. the k-means objective
            "timings": {key: round(v, 3) for key, v in timings.items()},
            "file_rows": [st.file_rows[i] for i in picks],
        }
        on_rank0(self._write_round, 0, picks, np.zeros(len(picks), dtype=np.int64), info, state)
        self.log(f"round 0: {len(picks)} rows chosen by {sel.name} on the base model (no adapter, nothing trained)")

    def _write_round(self, k: int, picks, entered, info: dict, state) -> None:
        """Round k's files (training rows, manifest, the selector's state): one rank writes them (`on_rank0`)."""
        if state is not None:
            info["selector_state"] = save_selector_state(self.paths, k, state)
        write_round_files(self.paths, k, self.stages.rows, picks, entered, info)

    def _select(self, emb, budget: int, selected: np.ndarray, scores, seed: int, state):
        """(picks, new state): a selector that keeps state between rounds (`select_with_state`) gets the previous
        round's and returns its next; any other selector is called plainly and returns no state. `emb` is None
        for a selector that needs no embeddings: it gets the pool size instead. Under torchrun the same picks
        reach every rank (`selection.sharded`: k-center sharded, other selectors on rank 0)."""
        if world_size() > 1:
            from .selection.sharded import select_across_ranks

            return select_across_ranks(self.selector, emb, budget, selected, scores, seed, state, len(self.stages.rows))
        with_state = getattr(self.selector, "select_with_state", None)
        n_rows = len(self.stages.rows) if emb is None else None
        if with_state is None:
            return self.selector.select(
                emb, budget, already_selected=selected, scores=scores, seed=seed, n_rows=n_rows
            ), None
        return with_state(emb, budget, already_selected=selected, scores=scores, seed=seed, state=state, n_rows=n_rows)

    def select_next(self, k: int) -> dict[str, float]:
        """Embed, score and select after round k; writes round k+1's files. Returns seconds per stage."""
        st = self.stages
        selected, entered = read_manifest(self.paths, k)
        timings = {}
        embeds = st.embeds(k)
        need_model = embeds or st.scorer_name is not None
        model = st.model(k) if need_model and not st.stage_outputs_exist(k, selected) else None
        t = time.perf_counter()
        with all_cpu_threads():
            emb = st.embed(k, model) if embeds else None
            timings["embed_s"] = time.perf_counter() - t
            t = time.perf_counter()
            scores = st.score(k, model, selected)
        timings["score_s"] = time.perf_counter() - t
        del model
        t = time.perf_counter()
        state = read_selector_state(self.paths, k)
        new, state = self._select(emb, self.sel.per_round, selected, scores, self.sel.seed + k + 1, state)
        timings["select_s"] = time.perf_counter() - t
        picks = np.concatenate([selected, new])
        entered = np.concatenate([entered, np.full(len(new), k + 1)])
        info = {
            **self._info(self.sel.seed + k + 1),
            "selector_info": self.selector.last_info,  # e.g. the k-means objective
            "timings": {key: round(v, 3) for key, v in timings.items()},
            "file_rows": [st.file_rows[i] for i in picks],
        }
        on_rank0(self._write_round, k + 1, picks, entered, info, state)
        return timings
