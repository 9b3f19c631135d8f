"""The run folder on disk: where each file of a run lies, what counts as a finished round, and the round files
(manifest, training file, selector state) that the loop writes and reads back on resume.

Run folder layout (every file written atomically; a round counts as finished only when `round_K/done.json` and every
file the round promises exist, see `missing_artefacts`; `.diverse-axolotl.lock` while a run holds the folder):

    output_dir/run.json                 resolved recipe, its hash, versions, pool and model hashes
    output_dir/round_K/train.jsonl      the subset trained on in round K, in the pool's own format
    output_dir/round_K/manifest.json    pool row ids in pick order, the round each entered, selector, seed, hash
    output_dir/round_K/adapter/         the LoRA adapter Axolotl trained on it
    output_dir/round_K/axolotl.log      Axolotl's output while training round K
    output_dir/round_K/embeddings.npy   (N, hidden) float32 pool embeddings from base + that adapter
    output_dir/round_K/scores.npy       per-row scores, when the selector uses them
    output_dir/round_K/selector_state.npz  arrays of a selector that carries state between rounds (iterative_kmq's
                                        clusters); its other fields and the file's sha256 sit in the manifest
    output_dir/round_0/base_embeddings.npy  with `round0: base`: the base model's embeddings (no adapter) that
                                        round 0 was selected on (base_scores.npy beside it, when scores are used)
    output_dir/round_K/eval.json        lm-eval's results and ours for the round's adapter (with an `eval:` block)
    output_dir/round_K/done.json        losses and timings of the round
    output_dir/summary.json             one row per round
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import atomic_path, file_sha256, write_json, write_jsonl
from .errors import UserError
from .faults import failpoint

LOCK_NAME = ".diverse-axolotl.lock"


@dataclass(frozen=True)
class RunPaths:
    """Every path of a run folder, so that no module spells `round_{k}` by hand."""

    root: Path

    def round_dir(self, k: int) -> Path:
        return self.root / f"round_{k}"

    def train_file(self, k: int) -> Path:
        return self.round_dir(k) / "train.jsonl"

    def manifest(self, k: int) -> Path:
        return self.round_dir(k) / "manifest.json"

    def adapter(self, k: int) -> Path:
        return self.round_dir(k) / "adapter"

    def train_log(self, k: int) -> Path:
        return self.round_dir(k) / "axolotl.log"

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

    def eval_log(self, k: int) -> Path:
        return self.round_dir(k) / "eval.log"

    def done(self, k: int) -> Path:
        return self.round_dir(k) / "done.json"

    @property
    def run_info(self) -> Path:
        return self.root / "run.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def adapter_complete(self, k: int) -> bool:
        """Trained: Axolotl's adapter (config and weights) and our record of the training are all there."""
        adapter = self.adapter(k)
        weights = any((adapter / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin"))
        return weights and (adapter / "adapter_config.json").is_file() and (adapter / "train_result.json").is_file()

    def missing_artefacts(self, k: int, last_round: int, embeds: bool, scores: bool, evaluates: bool) -> list[str]:
        """What round k promises and lacks, as paths relative to the run folder: a round is finished only when
        its training file, manifest, adapter, embeddings and scores (where the selector uses them), the next
        round's picks and its evaluation (where the recipe asks) all exist, not merely its done.json."""
        wanted = [self.train_file(k), self.manifest(k)]
        if k < last_round:
            wanted += [self.embeddings(k)] if embeds else []
            wanted += [self.scores(k)] if scores else []
            wanted.append(self.manifest(k + 1))
        if evaluates:
            wanted.append(self.eval_file(k))
        missing = [str(path.relative_to(self.root)) for path in wanted if not path.is_file()]
        if not self.adapter_complete(k):
            missing.insert(2, str(self.adapter(k).relative_to(self.root)) + "/")
        return missing


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


def write_round_files(
    paths: RunPaths, k: int, rows: list[dict], picks: np.ndarray, entered: np.ndarray, info: dict
) -> None:
    """The round's training file (pool format) then its manifest; the manifest names the picks in order."""
    write_jsonl(paths.train_file(k), (rows[i] for i in picks))
    failpoint(f"between-files:{k}")
    write_json(paths.manifest(k), {"round": k, **info, "indices": picks.tolist(), "entered_round": entered.tolist()})


def read_manifest(paths: RunPaths, k: int) -> tuple[np.ndarray, np.ndarray]:
    m = json.loads(paths.manifest(k).read_text())
    return np.asarray(m["indices"], dtype=np.int64), np.asarray(m["entered_round"], dtype=np.int64)


def restore_train_file(paths: RunPaths, k: int, rows: list[dict]) -> None:
    """A training file lost after its manifest was written is rebuilt from the manifest (same rows)."""
    if paths.manifest(k).is_file() and not paths.train_file(k).is_file():
        picks, _ = read_manifest(paths, k)
        write_jsonl(paths.train_file(k), (rows[i] for i in picks))


def save_selector_state(paths: RunPaths, k: int, state: dict) -> dict:
    """Write the arrays of a selector's state to round k's selector_state.npz (before the manifest, which names
    it with its sha256); returns the other fields, for the manifest's `selector_state`."""
    arrays = {key: value for key, value in state.items() if isinstance(value, np.ndarray)}
    fields = {key: value for key, value in state.items() if not isinstance(value, np.ndarray)}
    if arrays:
        path = paths.selector_state(k)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
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
        if not path.is_file() or file_sha256(path, reuse=False) != fields["npz"]["sha256"]:
            raise UserError(
                f"{path} is missing or differs from what round {k}'s manifest recorded: the selector's state between"
                " rounds is lost, so the run cannot continue exactly (--force starts over)"
            )
        with np.load(path) as npz:
            state.update({key: npz[key] for key in npz.files})
    return state
