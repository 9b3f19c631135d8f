"""The rounds: seed set -> train -> embed with the adapted model -> (score) -> select -> next round, resumable.

Run folder layout (every file written atomically; a round counts as finished only when `round_K/done.json` and every
file the round promises exist, see `Loop.missing_artefacts`; `.diverse-axolotl.lock` while a run holds the folder):

    output_dir/run.json                 resolved recipe, its hash, versions, pool and model hashes
    output_dir/round_K/train.jsonl      the subset trained on in round K, in the pool's own format
    output_dir/round_K/manifest.json    pool row ids in pick order, the round each entered, selector, seed, hash
    output_dir/round_K/adapter/         the LoRA adapter Axolotl trained on it
    output_dir/round_K/embeddings.npy   (N, hidden) float32 pool embeddings from base + that adapter
    output_dir/round_K/scores.npy       per-row scores, when the selector uses them
    output_dir/round_K/selector_state.npz  arrays of a selector that carries state between rounds (iterative_kmq's
                                        clusters); its other fields and the file's sha256 sit in the manifest
    output_dir/round_0/base_embeddings.npy  with `round0: base`: the base model's embeddings (no adapter) that
                                        round 0 was selected on (base_scores.npy beside it, when scores are used)
    output_dir/round_K/eval.json        lm-eval's results and ours for the round's adapter (with an `eval:` block)
    output_dir/round_K/done.json        losses and timings of the round
    output_dir/summary.json             one row per round

Interrupted runs resume at the first stage whose output is missing; finished work is never recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from . import progress  # noqa: F401  (binds the progress console to the terminal before Axolotl redirects output)
from .data import atomic_path, clean_pool, file_sha256, save_npy, write_json, write_jsonl
from .pools import load_pool
from .errors import UserError
from .faults import FAILPOINT_ENV, PAUSE_ENV, PAUSE_MARKER_ENV, failpoint, pause_point  # noqa: F401  (re-exported)
from .models import all_cpu_threads
from .recipe import Recipe
from .selection import get_selector


LOCK_NAME = ".diverse-axolotl.lock"


class RunLock:
    """An exclusive lock on a run folder, so that two runs never train into one folder at once.

    flock() on `output_dir/.diverse-axolotl.lock`: the kernel drops it when the process ends, however it ends, so
    a lock file left by a killed run is stale and simply taken over. The file names the holder (pid, host,
    start time, command) for the message the second run prints; where flock is unsupported (some network file
    systems) the pid in the file decides whether the holder is still alive.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self._fd: int | None = None
        self._made_root = False

    def acquire(self) -> None:
        self._made_root = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked = self._flock(fd)
            except BaseException:
                os.close(fd)
                raise
            if not locked:
                holder = self._holder(fd)
                os.close(fd)
                self._refuse(holder)
            try:  # the holder before us may have removed the file meanwhile: lock the file that is there now
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "command": " ".join(sys.argv)}
        os.write(fd, json.dumps(info).encode())
        self._fd = fd

    def _flock(self, fd: int) -> bool:
        """True when this process now holds the lock."""
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError:  # no flock here: trust the pid in the file, if that process still runs on this host
            holder = self._holder(fd)
            return not (holder.get("host") == socket.gethostname() and _pid_alive(holder.get("pid")))

    @staticmethod
    def _holder(fd: int) -> dict:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return json.loads(os.read(fd, 1 << 16).decode() or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, holder: dict) -> None:
        pid = holder.get("pid", "unknown")
        alive = "" if _pid_alive(holder.get("pid")) else ", no longer running: a process it started still holds it"
        raise UserError(
            f"{self.root} is in use by another run (pid {pid} on {holder.get('host', 'unknown host')}{alive},"
            f" started {holder.get('started', '?')}: {holder.get('command', '?')}); wait for it to end or stop it"
        )

    def release(self) -> None:
        """Remove the lock file (while still holding it), then let go; a folder this run made and left empty
        goes too, so a run that failed early leaves nothing behind."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
        if self._made_root:
            try:
                self.root.rmdir()  # only succeeds when empty
            except OSError:
                pass

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


_RUN_FILE = re.compile(r"round_\d+|run\.json|summary\.json|\.(run|summary)\.json\..*\.tmp|" + re.escape(LOCK_NAME))


def is_run_file(name: str) -> bool:
    """Whether a name in a run folder is one the loop writes (all that `--force` may delete)."""
    return _RUN_FILE.fullmatch(name) is not None


def clear_run(root: Path) -> list[str]:
    """Delete what a run wrote in `root` (round folders, run.json, summary.json, their temp files), nothing
    else; the lock file stays with its holder. Returns the names of what is kept."""
    kept = []
    for child in sorted(Path(root).iterdir()):
        if child.name == LOCK_NAME:
            continue
        if not is_run_file(child.name):
            kept.append(child.name)
        elif child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    return kept


@dataclass(frozen=True)
class RunPaths:
    root: Path

    def round_dir(self, k: int) -> Path:
        return self.root / f"round_{k}"

    def train_file(self, k: int) -> Path:
        return self.round_dir(k) / "train.jsonl"

    def manifest(self, k: int) -> Path:
        return self.round_dir(k) / "manifest.json"

    def adapter(self, k: int) -> Path:
        return self.round_dir(k) / "adapter"

    def embeddings(self, k: int) -> Path:
        return self.round_dir(k) / "embeddings.npy"

    def scores(self, k: int) -> Path:
        return self.round_dir(k) / "scores.npy"

    def selector_state(self, k: int) -> Path:
        return self.round_dir(k) / "selector_state.npz"

    def base_embeddings(self) -> Path:
        return self.round_dir(0) / "base_embeddings.npy"

    def base_scores(self) -> Path:
        return self.round_dir(0) / "base_scores.npy"

    def eval_file(self, k: int) -> Path:
        return self.round_dir(k) / "eval.json"

    def done(self, k: int) -> Path:
        return self.round_dir(k) / "done.json"

    @property
    def run_info(self) -> Path:
        return self.root / "run.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"


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
    params = recipe.selection.selector.params
    k = params.get("n_clusters")
    if isinstance(k, int) and not params.get("k_candidates") and k >= n_rows:
        raise UserError(
            f"{recipe.path}: selection.selector.n_clusters is {k}, but the pool has only {n_rows} rows: every row would"
            f" be its own cluster and '{recipe.selection.selector.name}' would pick rows in file order; use fewer"
            " clusters than rows"
        )


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "diverse-axolotl": __version__}
    for pkg in ("torch", "transformers", "peft", "axolotl", "trl", "numpy", "faiss-cpu", "lm_eval"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _model_config_hash(base_model: str) -> str | None:
    cfg = Path(base_model) / "config.json"
    return hashlib.sha256(cfg.read_bytes()).hexdigest()[:16] if cfg.is_file() else None


def write_round_files(paths: RunPaths, k: int, rows: list[dict], picks: np.ndarray, entered: np.ndarray, info: dict) -> None:
    """The round's training file (pool format) then its manifest; the manifest names the picks in order."""
    write_jsonl(paths.train_file(k), (rows[i] for i in picks))
    failpoint(f"between-files:{k}")
    write_json(paths.manifest(k), {"round": k, **info, "indices": picks.tolist(), "entered_round": entered.tolist()})


def read_manifest(paths: RunPaths, k: int) -> tuple[np.ndarray, np.ndarray]:
    m = json.loads(paths.manifest(k).read_text())
    return np.asarray(m["indices"], dtype=np.int64), np.asarray(m["entered_round"], dtype=np.int64)


def save_selector_state(paths: RunPaths, k: int, state: dict) -> dict:
    """Write the arrays of a selector's state to round k's selector_state.npz (before the manifest, which names
    it with its sha256); returns the other fields, for the manifest's `selector_state`."""
    arrays = {key: value for key, value in state.items() if isinstance(value, np.ndarray)}
    fields = {key: value for key, value in state.items() if not isinstance(value, np.ndarray)}
    if arrays:
        path = paths.selector_state(k)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        fields["npz"] = {"file": path.name, "arrays": sorted(arrays), "sha256": file_sha256(path)}
    return fields


def read_selector_state(paths: RunPaths, k: int) -> dict | None:
    """The selector state saved with round k (None when the round has none): exactly what the next round needs."""
    fields = json.loads(paths.manifest(k).read_text()).get("selector_state")
    if fields is None:
        return None
    state = {key: value for key, value in fields.items() if key != "npz"}
    if "npz" in fields:
        path = paths.selector_state(k)
        if not path.is_file() or file_sha256(path) != fields["npz"]["sha256"]:
            raise UserError(
                f"{path} is missing or differs from what round {k}'s manifest recorded: the selector's state between"
                " rounds is lost, so the run cannot continue exactly (--force starts over)"
            )
        with np.load(path) as npz:
            state.update({key: npz[key] for key in npz.files})
    return state


class Loop:
    """One run of a recipe. `run()` executes (or resumes) every round and returns the summary rows."""

    def __init__(self, recipe: Recipe, log=print):
        self.recipe = recipe
        self.sel = recipe.selection
        self.paths = RunPaths(recipe.output_dir)
        self.log = log
        self.selector = get_selector(self.sel.selector.name, **self.sel.selector.params)
        pool = self.sel.pool
        raw = load_pool(pool.path, pool.format, pool.limit, pool.data_files, pool.split)
        self.rows, self.file_rows, self.pool_stats = clean_pool(raw, pool.format, pool.empty_rows, pool.dedup, pool.path)
        self.heldout = self._carve_heldout()
        check_budget(recipe, len(self.rows))
        check_clusters(recipe, len(self.rows))
        self._tokenizer = None

    def _carve_heldout(self):
        """The user's held-out set (eval.heldout.file or .split), or None. A split leaves `self.rows` here, before
        round 0, so no selector ever sees its rows: manifests' `indices` count the rows left, their `file_rows`
        stay the pool file's row numbers, and run.json lists the carved ones."""
        spec = self.recipe.eval.heldout if self.recipe.eval is not None else None
        if spec is None or not spec.own:
            return None
        if spec.split is None:
            return spec.own_set(self.sel.pool.format)
        from .evaluation import carve_split

        pool = self.sel.pool
        keep, held = carve_split(self.rows, self.file_rows, spec.split, spec.group_field, pool.format, pool.path)
        self.rows = [self.rows[i] for i in keep]
        self.file_rows = [self.file_rows[i] for i in keep]
        self.pool_stats = {**self.pool_stats, "heldout_carved": len(held.rows), "rows": len(self.rows)}
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
            if previous.get("recipe_hash") != recipe.hash:
                if not self._adapter_complete(0):
                    self.log(f"{paths.root}: replacing an earlier run that never finished training round 0")
                    clear_run(paths.root)
                elif not force:
                    raise UserError(self._mismatch(previous))
                else:
                    kept = clear_run(paths.root)
                    self.log(f"--force: deleted the earlier run in {paths.root}" + (f" (kept {', '.join(kept)})" if kept else ""))
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
                    "base_model_config_sha256": _model_config_hash(str(recipe.axolotl["base_model"])),
                    "versions": _versions(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
            )

    def _mismatch(self, previous: dict) -> str:
        """Why the folder's run cannot continue with this recipe: a changed pool is named as such."""
        root, recipe = self.paths.root, self.recipe
        started_by = previous.get("recipe_file", "another recipe")
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

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            cfg = axolotl_config(self.recipe.axolotl, tmp / "train.jsonl", self.sel.pool.format, tmp / "adapter", tmp / "prepared", self.sel.seed)
            try:
                validate_axolotl(cfg, tmp / "axolotl.yaml")
            except UserError as exc:
                raise UserError(f"{self.recipe.path}: {exc}") from None

    # -- stages ---------------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from .models import load_tokenizer

            self._tokenizer = load_tokenizer(self.recipe.axolotl["base_model"], self._trust_remote_code, note=self.log)
        return self._tokenizer

    @property
    def _trust_remote_code(self) -> bool:
        return self.recipe.axolotl.get("trust_remote_code") is True

    def seed_round(self) -> None:
        """Round 0's rows: `seed_size` random rows, or with `round0: base` the selector's picks on the base model."""
        if self.paths.manifest(0).is_file():
            return
        if self.sel.round0 == "base":
            self.seed_from_base()
            return
        picks = get_selector("random").select(len(self.rows), self.sel.seed_size, seed=self.sel.seed)
        info = {"selector": {"name": "random", "params": {}}, "seed": self.sel.seed, "recipe_hash": self.recipe.hash,
                "file_rows": [self.file_rows[i] for i in picks]}
        write_round_files(self.paths, 0, self.rows, picks, np.zeros(len(picks), dtype=np.int64), info)

    def seed_from_base(self) -> None:
        """Round 0 chosen by the recipe's selector on the base model's embeddings: no adapter, nothing trained
        before it (DiverseEvol's one-shot arm; for iterative_kmq the kMQ draw that starts D&C's Algorithm 1).
        Scores, for selectors that use them on every row, come from the base model too."""
        sel = self.selector
        wants_scores = self.scorer_name is not None and sel.scores in ("required", "optional")
        need_model = (sel.needs_embeddings and not self.embed_from_cache(0, base=True)) or (
            wants_scores and not self.paths.base_scores().is_file()
        )
        model = self._base_model() if need_model else None
        self.paths.round_dir(0).mkdir(parents=True, exist_ok=True)
        timings = {}
        t = time.perf_counter()
        with all_cpu_threads():
            emb = self.embed(0, model, base=True) if sel.needs_embeddings else len(self.rows)
            timings["embed_s"] = time.perf_counter() - t
            t = time.perf_counter()
            scores = self.score(0, model, np.arange(len(self.rows)), base=True) if wants_scores else None
        timings["score_s"] = time.perf_counter() - t
        del model
        t = time.perf_counter()
        picks, state = self._select(emb, self.sel.seed_size, np.empty(0, dtype=np.int64), scores, self.sel.seed, None)
        timings["select_s"] = time.perf_counter() - t
        info = {
            "selector": {"name": sel.name, "params": sel.params.model_dump(mode="json")},
            "seed": self.sel.seed,
            "recipe_hash": self.recipe.hash,
            "round0": "base",
            "embeddings": "base_embeddings.npy (base model, no adapter)" if sel.needs_embeddings else None,
            "selector_info": sel.last_info,  # e.g. the k-means objective
            "timings": {key: round(v, 3) for key, v in timings.items()},
            "file_rows": [self.file_rows[i] for i in picks],
        }
        if state is not None:
            info["selector_state"] = save_selector_state(self.paths, 0, state)
        write_round_files(self.paths, 0, self.rows, picks, np.zeros(len(picks), dtype=np.int64), info)
        self.log(f"round 0: {len(picks)} rows chosen by {sel.name} on the base model (no adapter, nothing trained)")

    def _select(self, emb, budget: int, selected: np.ndarray, scores, seed: int, state):
        """(picks, new state): a selector that keeps state between rounds (`select_with_state`) gets the previous
        round's and returns its next; any other selector is called plainly and returns no state."""
        with_state = getattr(self.selector, "select_with_state", None)
        if with_state is None:
            return self.selector.select(emb, budget, already_selected=selected, scores=scores, seed=seed), None
        return with_state(emb, budget, already_selected=selected, scores=scores, seed=seed, state=state)

    def train(self, k: int) -> dict[str, Any]:
        from .training import axolotl_config, train_round

        adapter = self.paths.adapter(k)
        done_marker = adapter / "train_result.json"
        if self._adapter_complete(k):
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
        self.log(f"round {k}: training on {rows} rows with Axolotl (log: {self.paths.round_dir(k) / 'axolotl.log'})")
        result = train_round(
            cfg, self.paths.round_dir(k), on_trained=lambda: (failpoint(f"train:{k}"), pause_point(f"train:{k}")), description=f"round {k}: training"
        )
        shutil.rmtree(self.paths.round_dir(k) / "prepared", ignore_errors=True)
        info = {"train_loss": result.train_loss, "steps": result.steps, "seconds": round(result.seconds, 2),
                "truncated_rows": self._rows_over_sequence_len(k)}
        write_json(done_marker, info)
        return info

    def _rows_over_sequence_len(self, k: int) -> int:
        """How many of the round's rows Axolotl had to truncate (prompt + answer longer than sequence_len)."""
        from .embedding import pool_texts

        limit = self.recipe.axolotl.get("sequence_len")
        if not limit:
            return 0
        picks, _ = read_manifest(self.paths, k)
        texts = pool_texts([self.rows[i] for i in picks], self.sel.pool.format, self.tokenizer)
        return sum(len(ids) > int(limit) for ids in self.tokenizer(texts)["input_ids"])

    def _note_dtype(self) -> None:
        """One line, once per run: the dtype embedding and scoring run in (auto is bf16 on a capable CPU)."""
        if getattr(self, "_dtype_noted", False):
            return
        from .models import dtype_name, resolve_device

        self._dtype_noted = True
        spec = self.sel.embedding
        self.log(f"embedding and scoring in {dtype_name(spec.dtype, spec.device)} on {resolve_device(spec.device)}"
                 f" (selection.embedding.dtype: {spec.dtype}; float32 and bfloat16 can be asked for)")

    def _model(self, k: int):
        from .models import load_model

        self._note_dtype()
        spec = self.sel.embedding
        return load_model(self.recipe.axolotl["base_model"], self.paths.adapter(k), spec.device, spec.dtype, self._trust_remote_code)

    def _base_model(self):
        from .models import load_model

        self._note_dtype()
        spec = self.sel.embedding
        return load_model(self.recipe.axolotl["base_model"], None, spec.device, spec.dtype, self._trust_remote_code)

    def _cache_key(self, k: int, base: bool = False) -> str | None:
        from .embedding import embedding_cache_key, pool_digest

        if not self.sel.embedding.cache:
            return None
        pool = pool_digest(self.recipe.pool_sha256, self.sel.pool.format, self.file_rows)
        adapter = None if base else self.paths.adapter(k)
        return embedding_cache_key(pool, Path(self.recipe.axolotl["base_model"]), adapter, self.sel.embedding)

    @property
    def _cache_dir(self) -> Path:
        from .embedding import default_cache_dir

        return self.sel.embedding.cache_dir or default_cache_dir()

    def embed_from_cache(self, k: int, base: bool = False) -> bool:
        """Copy (hard-link) cached embeddings of this exact pool + model + adapter into the round, if any.
        `base`: the base model's, without adapter (round 0 with `round0: base`)."""
        from .embedding import cache_fetch

        path = self.paths.base_embeddings() if base else self.paths.embeddings(k)
        if path.is_file():
            return True
        key = self._cache_key(k, base)
        if key and cache_fetch(self._cache_dir, key, path):
            self.log(f"round {k}: {'base model ' if base else ''}embeddings reused from the cache ({key})")
            return True
        return False

    def embed(self, k: int, model, base: bool = False) -> np.ndarray:
        from .embedding import cache_store, check_finite, embed_rows, pool_texts

        path = self.paths.base_embeddings() if base else self.paths.embeddings(k)
        if self.embed_from_cache(k, base):
            return np.load(path, mmap_mode="r")
        texts = pool_texts(self.rows, self.sel.pool.format, self.tokenizer)
        partial = path.with_name(f".{path.stem}.partial.npy")
        desc = f"round {k}: embedding" + (" with the base model" if base else "")
        emb = embed_rows(model, self.tokenizer, texts, self.sel.embedding, out=partial, desc=desc)
        check_finite(emb, f"round {k}")
        del emb
        failpoint("embed:base" if base else f"embed:{k}")
        partial.replace(path)
        key = self._cache_key(k, base)
        if key:
            cache_store(self._cache_dir, key, path)
        return np.load(path, mmap_mode="r")

    @property
    def scorer_name(self) -> str | None:
        return self.sel.scorer.name if self.sel.scorer else self.selector.default_scorer

    def score(self, k: int, model, selected: np.ndarray, base: bool = False) -> np.ndarray | None:
        name = self.scorer_name
        if name is None:
            return None
        from .scoring import get_scorer

        path = self.paths.base_scores() if base else self.paths.scores(k)
        if path.is_file():
            return np.load(path)
        params = self.sel.scorer.params if self.sel.scorer else {}
        scorer = get_scorer(name, **params)
        which = selected if self.selector.scores == "selected" else np.arange(len(self.rows))
        values = np.zeros(len(self.rows), dtype=np.float64)
        values[which] = scorer.score(model, self.tokenizer, [self.rows[i] for i in which], self.sel.pool.format,
                                     max_length=self.sel.embedding.max_length,
                                     desc=f"round {k}: scoring ({name}{', base model' if base else ''})")
        save_npy(path, values)
        return values

    def select_next(self, k: int) -> dict[str, float]:
        """Embed, score and select after round k; writes round k+1's files. Returns seconds per stage."""
        selected, entered = read_manifest(self.paths, k)
        timings = {}
        need_model = self.selector.needs_embeddings or self.scorer_name is not None
        model = self._model(k) if need_model and not self._stage_outputs_exist(k) else None
        t = time.perf_counter()
        with all_cpu_threads():
            emb = self.embed(k, model) if self.selector.needs_embeddings else len(self.rows)
            timings["embed_s"] = time.perf_counter() - t
            t = time.perf_counter()
            scores = self.score(k, model, selected)
        timings["score_s"] = time.perf_counter() - t
        del model
        t = time.perf_counter()
        state = read_selector_state(self.paths, k)
        new, state = self._select(emb, self.sel.per_round, selected, scores, self.sel.seed + k + 1, state)
        timings["select_s"] = time.perf_counter() - t
        picks = np.concatenate([selected, new])
        entered = np.concatenate([entered, np.full(len(new), k + 1)])
        info = {
            "selector": {"name": self.selector.name, "params": self.selector.params.model_dump(mode="json")},
            "seed": self.sel.seed + k + 1,
            "recipe_hash": self.recipe.hash,
            "selector_info": self.selector.last_info,  # e.g. the k-means objective
            "timings": {key: round(v, 3) for key, v in timings.items()},
            "file_rows": [self.file_rows[i] for i in picks],
        }
        if state is not None:
            info["selector_state"] = save_selector_state(self.paths, k + 1, state)
        write_round_files(self.paths, k + 1, self.rows, picks, entered, info)
        return timings

    def evaluate(self, k: int) -> dict[str, Any]:
        """lm-eval (and our metrics) on the round's adapter, when the recipe has an `eval:` block."""
        spec = self.recipe.eval
        if spec is None or not (spec.every_round or k == self.sel.rounds):
            return {}
        path = self.paths.eval_file(k)
        t = time.perf_counter()
        if not path.is_file():
            from .evaluation import evaluate_spec

            self.log(f"round {k}: evaluating ({', '.join(spec.tasks)}; log: {path.with_name('eval.log')})")
            with all_cpu_threads():
                evaluate_spec(
                    spec, self.recipe.axolotl["base_model"], self.paths.adapter(k), path,
                    device=spec.device, dtype=spec.dtype,
                    trust_remote_code=self._trust_remote_code, own=self.heldout,
                )
        metrics = json.loads(path.read_text()).get("metrics", {})
        return {"eval_s": round(time.perf_counter() - t, 2), "metrics": metrics}

    def _stage_outputs_exist(self, k: int) -> bool:
        has_emb = not self.selector.needs_embeddings or self.embed_from_cache(k)
        return has_emb and (self.paths.scores(k).is_file() or self.scorer_name is None)

    # -- completeness ---------------------------------------------------------------------------------------
    def _adapter_complete(self, k: int) -> bool:
        """Trained: Axolotl's adapter (config and weights) and our record of the training are all there."""
        adapter = self.paths.adapter(k)
        weights = any((adapter / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin"))
        return weights and (adapter / "adapter_config.json").is_file() and (adapter / "train_result.json").is_file()

    def _evaluates(self, k: int) -> bool:
        spec = self.recipe.eval
        return spec is not None and (spec.every_round or k == self.sel.rounds)

    def missing_artefacts(self, k: int) -> list[str]:
        """What round k promises and lacks, as paths relative to the run folder: a round is finished only when
        its training file, manifest, adapter, embeddings and scores (where the selector uses them), the next
        round's picks and its evaluation (where the recipe asks) all exist, not merely its done.json."""
        p = self.paths
        wanted = [p.train_file(k), p.manifest(k)]
        if k < self.sel.rounds:
            wanted += [p.embeddings(k)] if self.selector.needs_embeddings else []
            wanted += [p.scores(k)] if self.scorer_name is not None else []
            wanted.append(p.manifest(k + 1))
        if self._evaluates(k):
            wanted.append(p.eval_file(k))
        missing = [str(path.relative_to(p.root)) for path in wanted if not path.is_file()]
        if not self._adapter_complete(k):
            missing.insert(2, str(p.adapter(k).relative_to(p.root)) + "/")
        return missing

    def _restore_train_file(self, k: int) -> None:
        """A training file lost after its manifest was written is rebuilt from the manifest (same rows)."""
        if self.paths.manifest(k).is_file() and not self.paths.train_file(k).is_file():
            picks, _ = read_manifest(self.paths, k)
            write_jsonl(self.paths.train_file(k), (self.rows[i] for i in picks))

    def _restore_stage_outputs(self, k: int) -> None:
        """Embeddings or scores lost after the next round was selected are recomputed from round k's adapter,
        without selecting again (the next round's picks stay as they are)."""
        if self._stage_outputs_exist(k):
            return
        selected, _ = read_manifest(self.paths, k)
        model = self._model(k)
        with all_cpu_threads():
            if self.selector.needs_embeddings:
                self.embed(k, model)
            self.score(k, model, selected)

    # -- driver ---------------------------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        summary = []
        self.seed_round()
        for k in range(self.sel.rounds + 1):
            earlier = {}
            if self.paths.done(k).is_file():
                missing = self.missing_artefacts(k)
                if not missing:
                    summary.append(json.loads(self.paths.done(k).read_text()))
                    self.log(f"round {k}: finished earlier, reusing it")
                    continue
                self.log(f"round {k}: finished earlier, but lacks {', '.join(missing)} (in {self.paths.root}); redoing that")
                earlier = json.loads(self.paths.done(k).read_text())
            pause_point(f"round:{k}")
            t = time.perf_counter()
            self._restore_train_file(k)
            trained = self.train(k)
            row = {**earlier, "round": k, "rows": len(read_manifest(self.paths, k)[0]), **trained, "train_s": trained["seconds"]}
            row.pop("seconds")
            if k < self.sel.rounds and not self.paths.manifest(k + 1).is_file():
                row.update({key: round(v, 2) for key, v in self.select_next(k).items()})
            elif k < self.sel.rounds:
                self._restore_stage_outputs(k)
            row.update(self.evaluate(k))
            row["round_s"] = round(time.perf_counter() - t, 2) if not earlier else earlier.get("round_s")
            write_json(self.paths.done(k), row)
            summary.append(row)
        write_json(self.paths.summary, summary)
        return summary
