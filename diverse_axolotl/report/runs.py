"""One run folder read into a `Run`: per round its training rows, metrics, timings, manifest and the diversity of
its subset; a run stopped or still going says so. Paths come from `RunPaths`, the loop's own layout."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..run_paths import RunPaths
from .metrics import diversity

STAGES = ("train_s", "embed_s", "score_s", "select_s", "eval_s")


def run_paths(root: Path) -> RunPaths:
    """The loop's own layout of a run folder."""
    return RunPaths(Path(root))


@dataclass
class Run:
    path: Path
    selector: str
    seed: Any
    label: str = ""
    rounds: list[int] = field(default_factory=list)
    rows: dict[int, int] = field(default_factory=dict)  # round -> training rows
    manifests: dict[int, dict] = field(default_factory=dict)
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)  # round -> metric -> value
    timings: dict[int, dict[str, float]] = field(default_factory=dict)
    diversity: dict[int, dict[str, float]] = field(default_factory=dict)
    diversity_round: int | None = None  # whose embeddings the diversity is measured in
    map_round: int | None = None  # whose embeddings the map shows
    unfinished: str | None = None  # why the run is not finished, None when it is

    @property
    def paths(self) -> RunPaths:
        return run_paths(self.path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: malformed JSON ({exc.msg}, line {exc.lineno})") from None


def _round_dirs(path: Path) -> dict[int, Path]:
    """The round folders a run has so far (found by name: a run still going has no summary to list them)."""
    out = {}
    for child in path.iterdir():
        m = re.fullmatch(r"round_(\d+)", child.name)
        if m and child.is_dir():
            out[int(m.group(1))] = child
    return dict(sorted(out.items()))


def load_run(path: Path) -> Run:
    """Everything the report needs from one run folder (missing optional files are skipped)."""
    from ..evaluation import flat_metrics

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"run folder {path} does not exist")
    paths = run_paths(path)
    rounds = _round_dirs(path)
    summary = _read_json(paths.summary) if paths.summary.is_file() else []
    if not rounds and not summary:
        raise UserError(f"{path} is not a run folder (no summary.json and no round_K folders)")
    info = _read_json(paths.run_info) if paths.run_info.is_file() else {}
    selection = (info.get("recipe") or {}).get("selection") or {}
    run = Run(
        path=path, selector=str((selection.get("selector") or {}).get("name", "unknown")), seed=selection.get("seed")
    )
    by_round = {int(row["round"]): row for row in summary if isinstance(row, dict) and "round" in row}
    for k in rounds:  # a run still going (or stopped) has no summary yet: its rounds' done.json
        if k not in by_round and paths.done(k).is_file():
            by_round[k] = _read_json(paths.done(k))
    for k in sorted(set(rounds) | set(by_round)):
        manifest_path = paths.manifest(k)
        if manifest_path.is_file():
            run.manifests[k] = _read_json(manifest_path)
        row = by_round.get(k)
        if row is None:  # selected but not trained (yet): its rows are no training result
            continue
        n_rows = row.get("rows", len(run.manifests.get(k, {}).get("indices", [])) or None)
        if n_rows is None:
            continue
        run.rounds.append(k)
        run.rows[k] = int(n_rows)
        metrics = {}
        if isinstance(row.get("train_loss"), (int, float)):
            metrics["train_loss"] = float(row["train_loss"])
        eval_path = paths.eval_file(k)
        if eval_path.is_file():
            result = _read_json(eval_path)
            found = result.get("metrics") if isinstance(result.get("metrics"), dict) else flat_metrics(result)
            metrics.update({m: float(v) for m, v in found.items() if isinstance(v, (int, float))})
        run.metrics[k] = metrics
        timing = {s: float(row[s]) for s in (*STAGES, "round_s") if isinstance(row.get(s), (int, float))}
        if timing:
            run.timings[k] = timing
    run.unfinished = _unfinished(path, selection, run.rounds, summary)
    _add_diversity(run)
    return run


def _unfinished(path: Path, selection: dict, trained: list[int], summary: list) -> str | None:
    """Why a run is not finished (rounds trained so far, out of how many), or None: a report over a stopped or
    running run must not read as a finished one."""
    planned = selection.get("rounds")
    total = planned + 1 if isinstance(planned, int) else None
    if summary and (total is None or len(trained) >= total):
        return None
    done = f"rounds {', '.join(map(str, trained))} trained" if trained else "no round trained yet"
    return (
        f"unfinished: {done}" + (f" of {total} (0..{planned})" if total is not None else "") + "; no summary.json yet"
    )


LABEL_KINDS = ("source", "template")


def pool_labels(run_path: Path) -> dict[str, list]:
    """Per file row of the run's pool, its `source` and T0 `template` where known: from the rows' own fields, or
    from a `<pool stem>_meta.json` beside the pool holding {"rows": [{"source": ..., "template": ...}, ...]}
    (what bench/quality writes). Empty when the pool carries no labels."""
    from ..data import read_rows

    run_info = run_paths(run_path).run_info
    info = _read_json(run_info) if run_info.is_file() else {}
    pool = (((info.get("recipe") or {}).get("selection") or {}).get("pool") or {}).get("path")
    if not pool or not Path(pool).is_file():
        return {}
    sidecar = Path(pool).with_name(Path(pool).stem + "_meta.json")
    rows = _read_json(sidecar).get("rows", []) if sidecar.is_file() else read_rows(Path(pool))
    return {kind: [r.get(kind) for r in rows] for kind in LABEL_KINDS if any(r.get(kind) for r in rows)}


def label_coverage(labels: list, file_rows: list[int]) -> tuple[float, dict[str, tuple[int, int]]]:
    """(fraction of labels with at least one selected row, {label: (selected rows, pool rows)})."""
    from collections import Counter

    pool_counts = Counter(x for x in labels if x)
    picked = Counter(labels[i] for i in file_rows if i < len(labels) and labels[i])
    table = {label: (picked.get(label, 0), total) for label, total in sorted(pool_counts.items())}
    return (len(picked) / len(pool_counts) if pool_counts else float("nan")), table


def load_embeddings(run: Run, k: int):
    return np.load(run.paths.embeddings(k), mmap_mode="r")


def _add_diversity(run: Run) -> None:
    with_emb = [k for k in sorted(_round_dirs(run.path)) if run.paths.embeddings(k).is_file()]
    if not with_emb:
        return
    run.diversity_round, run.map_round = with_emb[0], with_emb[-1]
    emb = np.asarray(load_embeddings(run, with_emb[0]), dtype=np.float32)
    for k in run.rounds:
        indices = run.manifests.get(k, {}).get("indices")
        if indices and max(indices) < emb.shape[0]:
            run.diversity[k] = diversity(emb, indices)


def label_runs(runs: list[Run]) -> None:
    labels = [f"{r.selector} seed {r.seed}" if r.seed is not None else r.selector for r in runs]
    for run, label in zip(runs, labels, strict=True):
        run.label = label if labels.count(label) == 1 else f"{label} ({run.path.name})"
