"""The rounds of one run: seed set -> train -> embed with the adapted model -> (score) -> select -> next round,
resumable. Interrupted runs resume at the first stage whose output is missing; finished work is never recomputed.

Where things live: the run folder's layout and round files in `run_paths`, the folder's lock in `run_lock`, the
model work of a round (train, embed, score, evaluate) in `stages`, the choice of each round's rows in `picking`;
this module loads the pool, guards the run folder (recipe hash, --force, --resume) and drives the rounds.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from . import progress  # noqa: F401  (binds the progress console to the terminal before Axolotl redirects output)
from .data import clean_pool, write_json
from .distributed import agreed, on_rank0
from .environment import versions
from .errors import UserError
from .faults import FAILPOINT_ENV, PAUSE_ENV, PAUSE_MARKER_ENV, failpoint, pause_point  # noqa: F401  (re-exported)
from .picking import RoundPicker
from .pools import load_pool
from .recipe import Recipe
from .run_lock import RunLock
from .run_paths import (  # noqa: F401  (re-exported: tests and the report import them from here)
    LOCK_NAME,
    RunPaths,
    clear_run,
    is_run_file,
    read_manifest,
    read_selector_state,
    restore_train_file,
    save_selector_state,
    write_round_files,
)
from .stages import RoundStages


def check_budget(recipe: Recipe, n_rows: int) -> None:
    sel = recipe.selection
    if sel.total_rows > n_rows:
        raise UserError(
            f"{recipe.path}: seed_size + rounds * per_round = {sel.seed_size} + {sel.rounds} * {sel.per_round}"
            f" = {sel.total_rows} rows, but the pool has only {n_rows}"
        )


def check_clusters(recipe: Recipe, n_rows: int) -> None:
    """An explicit `n_clusters` of at least the pool's size makes every row its own cluster: the cluster-based
    selectors would then pick rows in file order, not by diversity. (Left at its default, n_clusters is capped
    at the pool size, as each selector documents.)"""
    params = recipe.selection.selector.validated
    written = params.model_fields_set
    k = getattr(params, "n_clusters", None) if "n_clusters" in written else None
    if isinstance(k, int) and not getattr(params, "k_candidates", None) and k >= n_rows:
        raise UserError(
            f"{recipe.path}: selection.selector.n_clusters is {k}, but the pool has only {n_rows} rows: every row would"
            f" be its own cluster and '{recipe.selection.selector.name}' would pick rows in file order; use fewer"
            " clusters than rows"
        )


def _model_config_hash(base_model: str) -> str | None:
    cfg = Path(base_model) / "config.json"
    return hashlib.sha256(cfg.read_bytes()).hexdigest()[:16] if cfg.is_file() else None


class Loop:
    """One run of a recipe. `run()` executes (or resumes) every round and returns the summary rows."""

    def __init__(self, recipe: Recipe, log=print):
        self.recipe = recipe
        self.sel = recipe.selection
        self.paths = RunPaths(recipe.output_dir)
        self.log = log
        self.selector = self.sel.selector.build()
        pool = self.sel.pool
        raw = load_pool(pool.path, pool.format, pool.limit, pool.data_files, pool.split)
        self.rows, self.file_rows, self.pool_stats = clean_pool(
            raw, pool.format, pool.empty_rows, pool.dedup, pool.path
        )
        self.heldout = self._carve_heldout()
        check_budget(recipe, len(self.rows))
        check_clusters(recipe, len(self.rows))
        self.stages = RoundStages(recipe, self.paths, self.rows, self.file_rows, self.selector, self.heldout, log)
        self.picker = RoundPicker(self.stages)

    def _carve_heldout(self):
        """The user's held-out set (eval.heldout.file or .split), or None. Its rows leave `self.rows` here, before
        round 0, so no selector ever sees them: a split is carved from the pool, and pool rows that say what a
        held-out file's row says are left out. Manifests' `indices` count the rows left, their `file_rows` stay
        the pool file's row numbers, and run.json lists the held-out rows and counts the ones removed."""
        spec = self.recipe.eval.heldout if self.recipe.eval is not None else None
        if spec is None or not spec.own:
            return None
        from .evaluation import carve_split, rows_in_heldout

        pool = self.sel.pool
        if spec.split is None:
            held = spec.own_set(pool.format)
            removed = set(rows_in_heldout(self.rows, pool.format, held))
            keep = [i for i in range(len(self.rows)) if i not in removed]
            if removed:
                self.log(
                    f"{pool.path}: {len(removed)} row(s) also in the held-out file {spec.file}; they are left out of"
                    " selection"
                )
            stat = "heldout_overlap_removed"
        else:
            keep, held = carve_split(self.rows, self.file_rows, spec.split, spec.group_field, pool.format, pool.path)
            stat = "heldout_carved"
        left_out = len(self.rows) - len(keep)
        self.rows = [self.rows[i] for i in keep]
        self.file_rows = [self.file_rows[i] for i in keep]
        self.pool_stats = {**self.pool_stats, stat: left_out, "rows": len(self.rows)}
        return held

    def lock(self) -> RunLock:
        """The run folder's lock (a context manager); hold it around prepare() and run()."""
        return RunLock(self.paths.root)

    def prepare(self, resume: bool = False, force: bool = False) -> None:
        """Refuse to mix two recipes' rounds in one folder; --force starts over, same recipe continues.

        --force deletes only what a run wrote (see `clear_run`). A previous run that never finished training
        round 0 holds nothing worth keeping (a failed first attempt, say with a bad pool row): it is replaced
        without --force, so the corrected retry just runs.
        """
        recipe, paths = self.recipe, self.paths
        if paths.run_info.is_file():
            previous = json.loads(paths.run_info.read_text())
            rows_then = (previous.get("pool") or {}).get("rows")
            other_rows = rows_then is not None and rows_then != self.pool_stats["rows"]
            if previous.get("recipe_hash") != recipe.hash or other_rows:
                if not self.paths.adapter_complete(0):
                    self.log(f"{paths.root}: replacing an earlier run that never finished training round 0")
                    clear_run(paths.root)
                elif not force:
                    raise UserError(self._mismatch(previous))
                else:
                    kept = clear_run(paths.root)
                    self.log(
                        f"--force: deleted the earlier run in {paths.root}"
                        + (f" (kept {', '.join(kept)})" if kept else "")
                    )
        elif paths.root.is_dir():
            self._check_no_foreign_files(force)
        if resume and not paths.run_info.is_file():
            raise UserError(f"--resume: {paths.root} holds no run to resume")
        if not paths.run_info.is_file():
            write_json(
                paths.run_info,
                {
                    "recipe_hash": recipe.hash,
                    "recipe_file": str(recipe.path),
                    "recipe": recipe.resolved(),
                    "pool_sha256": recipe.pool_sha256,
                    "pool": self.pool_stats,
                    **({"heldout": self.heldout.record()} if self.heldout is not None else {}),
                    "base_model_config_sha256": _model_config_hash(recipe.base_model),
                    "versions": versions(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
            )

    def _mismatch(self, previous: dict) -> str:
        """Why the folder's run cannot continue with this recipe: changed rows left for selection and a changed pool
        are named as such."""
        root, recipe = self.paths.root, self.recipe
        started_by = previous.get("recipe_file", "another recipe")
        rows_then = (previous.get("pool") or {}).get("rows")
        if previous.get("recipe_hash") == recipe.hash and rows_then != self.pool_stats["rows"]:
            return (
                f"{root}: the run selected from {rows_then} pool rows, this recipe leaves {self.pool_stats['rows']}"
                " (the rows left out for the held-out set changed: its file was edited, or this version leaves out"
                " pool rows that repeat it), so its rounds' row numbers would point at other rows; name another"
                " output_dir, or use --force to start over"
            )
        old_pool = previous.get("pool_sha256")
        if old_pool and recipe.pool_sha256 and old_pool != recipe.pool_sha256:
            return (
                f"the content of the pool {recipe.selection.pool.path} changed since the run in {root} (started by"
                f" {started_by}) selected from it (sha256 {old_pool[:12]} then, {recipe.pool_sha256[:12]} now);"
                " restore the pool to continue that run, name another output_dir, or use --force to start over"
            )
        return (
            f"{root} holds a run of a different recipe ({started_by}, hash {previous.get('recipe_hash')} vs"
            f" {recipe.hash}); use another output_dir, or --force to delete that run's files and start over"
        )

    def _check_no_foreign_files(self, force: bool) -> None:
        """A folder without run.json is used only when it holds nothing but run leftovers: anything else is the
        user's, and a run folder that mixes with it would put it at risk."""
        names = sorted(p.name for p in self.paths.root.iterdir())
        foreign = [n for n in names if not is_run_file(n)]
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise UserError(
                f"output_dir {self.paths.root} is not empty and holds no run (it has {shown}); name an empty or new"
                " folder"
            )
        leftovers = [n for n in names if n != LOCK_NAME]
        if leftovers:
            if not force:
                raise UserError(
                    f"{self.paths.root} holds round folders but no run.json ({', '.join(leftovers[:5])}); use --force"
                    " to delete them and start over, or name another output_dir"
                )
            clear_run(self.paths.root)

    def preflight(self) -> None:
        """Axolotl's validation of the round config, before anything is trained or written."""
        import tempfile

        from .training import axolotl_config, validate_axolotl

        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            cfg = axolotl_config(
                self.recipe.axolotl,
                tmp / "train.jsonl",
                self.sel.pool.format,
                tmp / "adapter",
                tmp / "prepared",
                self.sel.seed,
            )
            try:
                validate_axolotl(cfg, tmp / "axolotl.yaml")
            except UserError as exc:
                raise UserError("\n".join(f"{self.recipe.path}: {line}" for line in str(exc).splitlines())) from None

    # -- driver ---------------------------------------------------------------------------------------------
    def missing_artefacts(self, k: int) -> list[str]:
        """What round k promises and lacks (see `RunPaths.missing_artefacts`)."""
        return self.paths.missing_artefacts(
            k,
            self.sel.rounds,
            embeds=self.stages.embeds(k),
            scores=self.stages.scorer_name is not None,
            evaluates=self.stages.evaluates(k),
        )

    def run(self) -> list[dict[str, Any]]:
        summary = []
        stages, picker = self.stages, self.picker
        picker.seed_round()
        for k in range(self.sel.rounds + 1):
            earlier = {}
            if agreed(self.paths.done(k).is_file):  # rank 0's view of the folder decides for every rank
                missing = agreed(self.missing_artefacts, k)
                if not missing:
                    summary.append(json.loads(self.paths.done(k).read_text()))
                    self.log(f"round {k}: finished earlier, reusing it")
                    continue
                self.log(
                    f"round {k}: finished earlier, but lacks {', '.join(missing)} (in {self.paths.root}); redoing that"
                )
                earlier = json.loads(self.paths.done(k).read_text())
            pause_point(f"round:{k}")
            t = time.perf_counter()
            on_rank0(restore_train_file, self.paths, k, self.rows)  # under torchrun rank 0 writes, all wait
            trained = stages.train(k)
            row = {
                **earlier,
                "round": k,
                "rows": len(read_manifest(self.paths, k)[0]),
                **trained,
                "train_s": trained["seconds"],
            }
            row.pop("seconds")
            # Evaluate before choosing the next round's rows: the round's numbers are on disk (eval.json) as soon as
            # its adapter is, not after a pool embedding that can take longer than the training itself.
            row.update(stages.evaluate(k))
            if k < self.sel.rounds and not agreed(self.paths.manifest(k + 1).is_file):
                row.update({key: round(v, 2) for key, v in picker.select_next(k).items()})
            elif k < self.sel.rounds:
                stages.restore_stage_outputs(k)
            row["round_s"] = round(time.perf_counter() - t, 2) if not earlier else earlier.get("round_s")
            on_rank0(write_json, self.paths.done(k), row)
            summary.append(row)
        on_rank0(write_json, self.paths.summary, summary)
        return summary
