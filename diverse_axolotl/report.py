"""A report over finished (or running) runs: report.md, report.html and PNG plots (matplotlib, no display needed).

Per run folder it reads summary.json, run.json, round_K/manifest.json, round_K/eval.json and round_K/embeddings.npy.
  * each metric (train loss, every eval metric) against the number of training rows; runs with the same selector
    form one line: the mean over their seeds, with a min-max band
  * diversity of each round's subset, in one embedding space per run (the first round that saved embeddings, i.e.
    the base model + the seed round's adapter, shared by selectors that share a seed):
      vendi          Vendi score with a cosine kernel: exp(entropy of the eigenvalues of K/k), 1..k
      nn_distance    mean Euclidean distance from each selected row to its nearest other selected row
      coverage       coverage radius: the largest distance from any pool row to its nearest selected row
    (Euclidean on the raw embeddings, the distance k-center minimises)
  * the pool's embedding map: PCA to 2-D of the last saved embeddings, selected rows coloured by the round they
    entered
  * stage timings per round as stacked bars
The markdown and HTML tables carry the numbers behind every plot.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import atomic_path
from .errors import UserError

FIG_SIZE = (8.0, 4.8)  # inches
DPI = 100  # -> every PNG is 800 x 480 pixels
STAGES = ("train_s", "embed_s", "score_s", "select_s", "eval_s")
DIVERSITY = {
    "vendi": "Vendi score (cosine kernel)",
    "nn_distance": "mean nearest-neighbour distance",
    "coverage": "coverage radius (max distance of a pool row to the subset)",
}


# ------------------------------------------------------------------------------------------ diversity metrics
def _as_float_matrix(emb) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array, not shape {emb.shape}")
    return emb


def vendi_score(emb) -> float:
    """Vendi score of rows under the cosine kernel: exp(-sum l log l), l the eigenvalues of K/k, K_ij = cos(x_i, x_j).

    k identical rows score 1, k orthogonal rows score k. Computed from the d x d matrix X^T X / k, which has the
    same non-zero eigenvalues as K/k (all-zero rows are treated as orthogonal to everything, with K_ii = 1).
    """
    x = _as_float_matrix(emb)
    k = x.shape[0]
    if k == 0:
        return float("nan")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    gram = unit.T @ unit if unit.shape[1] <= k else unit @ unit.T
    eig = np.linalg.eigvalsh(gram / k)
    eig = np.concatenate([eig, np.full(int(zero.sum()), 1.0 / k)])  # each all-zero row: its own eigenvalue 1/k
    eig = eig[eig > 1e-12]
    return float(np.exp(-np.sum(eig * np.log(eig))))


def nearest_distances(a, b, exclude_self: bool = False, chunk: int = 2048) -> np.ndarray:
    """For each row of a, the Euclidean distance to its nearest row of b (with exclude_self, a is b and row i skips
    itself). Chunked: memory O(chunk x len(b))."""
    a, b = _as_float_matrix(a), _as_float_matrix(b)
    b_sq = np.einsum("ij,ij->i", b, b)
    out = np.empty(a.shape[0])
    for start in range(0, a.shape[0], chunk):
        part = a[start : start + chunk]
        d2 = np.einsum("ij,ij->i", part, part)[:, None] + b_sq[None, :] - 2.0 * part @ b.T
        if exclude_self:
            rows = np.arange(part.shape[0])
            d2[rows, start + rows] = np.inf
        out[start : start + chunk] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


def mean_nn_distance(emb) -> float:
    """Mean over rows of the Euclidean distance to the nearest other row (nan for fewer than two rows)."""
    x = _as_float_matrix(emb)
    if x.shape[0] < 2:
        return float("nan")
    return float(nearest_distances(x, x, exclude_self=True).mean())


def coverage_radius(pool, selected) -> float:
    """max over pool rows of the Euclidean distance to the nearest selected row (what k-center minimises)."""
    sel = _as_float_matrix(selected)
    if sel.shape[0] == 0:
        return float("nan")
    return float(nearest_distances(pool, sel).max())


def diversity(pool_emb, indices) -> dict[str, float]:
    subset = np.asarray(pool_emb[np.asarray(indices, dtype=np.int64)], dtype=np.float64)
    return {
        "vendi": vendi_score(subset),
        "nn_distance": mean_nn_distance(subset),
        "coverage": coverage_radius(pool_emb, subset),
    }


def pca_2d(emb) -> np.ndarray:
    """Rows projected on the two leading principal components (from the d x d covariance)."""
    x = _as_float_matrix(emb)
    centred = x - x.mean(axis=0, keepdims=True)
    if x.shape[1] < 2:
        return np.hstack([centred, np.zeros((x.shape[0], 2 - x.shape[1]))])
    _, vecs = np.linalg.eigh(centred.T @ centred)
    return centred @ vecs[:, ::-1][:, :2]


# ------------------------------------------------------------------------------------------------ reading runs
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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: malformed JSON ({exc.msg}, line {exc.lineno})") from None


def _round_dirs(path: Path) -> dict[int, Path]:
    out = {}
    for child in path.iterdir():
        m = re.fullmatch(r"round_(\d+)", child.name)
        if m and child.is_dir():
            out[int(m.group(1))] = child
    return dict(sorted(out.items()))


def load_run(path: Path) -> Run:
    """Everything the report needs from one run folder (missing optional files are skipped)."""
    from .evaluation import flat_metrics

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"run folder {path} does not exist")
    rounds = _round_dirs(path)
    summary = _read_json(path / "summary.json") if (path / "summary.json").is_file() else []
    if not rounds and not summary:
        raise UserError(f"{path} is not a run folder (no summary.json and no round_K folders)")
    info = _read_json(path / "run.json") if (path / "run.json").is_file() else {}
    selection = (info.get("recipe") or {}).get("selection") or {}
    run = Run(path=path, selector=str((selection.get("selector") or {}).get("name", "unknown")), seed=selection.get("seed"))
    by_round = {int(row["round"]): row for row in summary if isinstance(row, dict) and "round" in row}
    for k, folder in rounds.items():  # a run still going (or stopped) has no summary yet: its rounds' done.json
        if k not in by_round and (folder / "done.json").is_file():
            by_round[k] = _read_json(folder / "done.json")
    for k in sorted(set(rounds) | set(by_round)):
        manifest_path = path / f"round_{k}" / "manifest.json"
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
        eval_path = path / f"round_{k}" / "eval.json"
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
    return f"unfinished: {done}" + (f" of {total} (0..{planned})" if total is not None else "") + "; no summary.json yet"


LABEL_KINDS = ("source", "template")


def pool_labels(run_path: Path) -> dict[str, list]:
    """Per file row of the run's pool, its `source` and T0 `template` where known: from the rows' own fields, or
    from a `<pool stem>_meta.json` beside the pool holding {"rows": [{"source": ..., "template": ...}, ...]}
    (what bench/quality writes). Empty when the pool carries no labels."""
    from .data import read_rows

    info = _read_json(run_path / "run.json") if (run_path / "run.json").is_file() else {}
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


def _coverage_blocks(runs: list[Run], out_dir: Path, pngs: list[Path]) -> list[tuple]:
    blocks: list[tuple] = [("h", 2, "Coverage of sources and templates")]
    labelled = {r.label: pool_labels(r.path) for r in runs}
    kinds = [kind for kind in LABEL_KINDS if any(kind in lab for lab in labelled.values())]
    if not kinds:
        return blocks + [("p", "The pools carry no source or template labels.")]
    for kind in kinds:
        covered: dict[str, dict[int, float]] = {}
        last_tables = {}
        for run in runs:
            labels = labelled[run.label].get(kind)
            if not labels:
                continue
            covered[run.label] = {}
            for k in run.rounds:
                m = run.manifests.get(k, {})
                file_rows = m.get("file_rows") or m.get("indices") or []
                covered[run.label][k], last_tables[run.label] = label_coverage(labels, file_rows)
        png = out_dir / f"coverage_{kind}.png"
        plot_vs_rows(runs, covered, f"share of {kind}s with at least one selected row", "share covered", png)
        pngs.append(png)
        blocks += [("h", 3, f"{kind}s"), ("img", png.name, f"coverage of {kind}s"), ("table", *_value_table(runs, covered))]
        if kind == "source":  # a few sources: show each one's share in the last round
            names = sorted({label for t in last_tables.values() for label in t})
            rows = [[run] + [f"{t.get(n, (0, 0))[0]} / {t.get(n, (0, 0))[1]}" for n in names] for run, t in last_tables.items()]
            blocks += [("p", "Selected rows per source in each run's last round (selected / in the pool)."),
                       ("table", ["run", *names], rows)]
    return blocks


def _load_embeddings(run: Run, k: int):
    return np.load(run.path / f"round_{k}" / "embeddings.npy", mmap_mode="r")


def _add_diversity(run: Run) -> None:
    with_emb = [k for k in sorted(_round_dirs(run.path)) if (run.path / f"round_{k}" / "embeddings.npy").is_file()]
    if not with_emb:
        return
    run.diversity_round, run.map_round = with_emb[0], with_emb[-1]
    emb = np.asarray(_load_embeddings(run, with_emb[0]), dtype=np.float32)
    for k in run.rounds:
        indices = run.manifests.get(k, {}).get("indices")
        if indices and max(indices) < emb.shape[0]:
            run.diversity[k] = diversity(emb, indices)


def _label_runs(runs: list[Run]) -> None:
    labels = [f"{r.selector} seed {r.seed}" if r.seed is not None else r.selector for r in runs]
    for run, label in zip(runs, labels):
        run.label = label if labels.count(label) == 1 else f"{label} ({run.path.name})"


# ----------------------------------------------------------------------------------------------------- plots
def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIG_SIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a report is meant to be read


def _groups(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.selector, []).append(run)
    return groups


def group_series(runs: list[Run], values: dict[str, dict[int, float]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """x (training rows) and mean, min, max over the runs that have a value there; `values`: run label -> round -> v."""
    at: dict[int, list[float]] = {}
    for run in runs:
        for k, v in values.get(run.label, {}).items():
            if v is not None and math.isfinite(v):
                at.setdefault(run.rows[k], []).append(v)
    xs = sorted(at)
    return xs, [float(np.mean(at[x])) for x in xs], [min(at[x]) for x in xs], [max(at[x]) for x in xs]


def plot_vs_rows(runs: list[Run], values: dict[str, dict[int, float]], title: str, ylabel: str, path: Path) -> None:
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, members) in enumerate(_groups(runs).items()):
        xs, mean, lo, hi = group_series(members, values)
        if not xs:
            continue
        color = f"C{i % 10}"
        label = name if len(members) == 1 else f"{name} (mean of {len(members)}, min-max band)"
        ax.plot(xs, mean, marker="o", color=color, label=label)
        if len(members) > 1:
            ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("training rows")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_embedding_map(run: Run, path: Path) -> dict[str, Any]:
    emb = np.asarray(_load_embeddings(run, run.map_round), dtype=np.float64)
    xy = pca_2d(emb)
    last = max(k for k in run.rounds if k in run.manifests) if run.manifests else None
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(xy[:, 0], xy[:, 1], s=4, color="0.8", label=f"pool ({len(xy)} rows)", rasterized=True)
    selected = 0
    if last is not None:
        manifest = run.manifests[last]
        indices = np.asarray(manifest.get("indices", []), dtype=np.int64)
        entered = np.asarray(manifest.get("entered_round", np.zeros(len(indices))), dtype=np.int64)
        keep = indices < len(xy)
        indices, entered = indices[keep], entered[keep]
        selected = len(indices)
        for j, r in enumerate(sorted(set(entered.tolist()))):
            rows = indices[entered == r]
            ax.scatter(xy[rows, 0], xy[rows, 1], s=14, color=f"C{j % 10}", label=f"entered round {r} ({len(rows)})")
    ax.set_title(f"{run.label}: pool embeddings (round {run.map_round}), PCA 2-D")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=8, markerscale=1.5)
    fig.tight_layout()
    _save(fig, path)
    return {"round": run.map_round, "pool_rows": len(xy), "selected": selected, "manifest_round": last}


def plot_timings(run: Run, path: Path) -> None:
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ks = [k for k in run.rounds if k in run.timings]
    bottom = np.zeros(len(ks))
    for j, stage in enumerate((*STAGES, "other_s")):
        vals = np.array([_stage_value(run.timings[k], stage) for k in ks])
        if not vals.any():
            continue
        ax.bar([str(k) for k in ks], vals, bottom=bottom, color=f"C{j % 10}", label=stage[:-2])
        bottom += vals
    ax.set_xlabel("round")
    ax.set_ylabel("seconds")
    ax.set_title(f"{run.label}: time per stage")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _stage_value(timing: dict[str, float], stage: str) -> float:
    if stage == "other_s":
        rest = timing.get("round_s", 0.0) - sum(timing.get(s, 0.0) for s in STAGES)
        return rest if rest > 0.01 else 0.0
    return timing.get(stage, 0.0)


# ------------------------------------------------------------------------------------------- markdown / html
def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _value_table(runs: list[Run], values: dict[str, dict[int, float]]) -> tuple[list[str], list[list[str]]]:
    """Rows: training rows; columns: each run, then mean/min/max of selectors with several runs."""
    groups = {g: m for g, m in _groups(runs).items() if len(m) > 1}
    xs = sorted({run.rows[k] for run in runs for k in values.get(run.label, {})})
    headers = ["rows"] + [r.label for r in runs] + [f"{g} mean [min, max]" for g in groups]
    table = []
    for x in xs:
        cells = [str(x)]
        for run in runs:
            ks = [k for k in values.get(run.label, {}) if run.rows[k] == x]
            cells.append(_fmt(values[run.label][ks[0]]) if ks else "-")
        for members in groups.values():
            gx, mean, lo, hi = group_series(members, values)
            cells.append(f"{_fmt(mean[gx.index(x)])} [{_fmt(lo[gx.index(x)])}, {_fmt(hi[gx.index(x)])}]" if x in gx else "-")
        table.append(cells)
    return headers, table


def _to_markdown(blocks: list[tuple]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append("#" * block[1] + " " + block[2])
        elif kind == "p":
            out.append(block[1])
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})")
        elif kind == "table":
            headers, rows = block[1], block[2]
            esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
            out.append("| " + " | ".join(map(esc, headers)) + " |")
            out.append("|" + "|".join("---" for _ in headers) + "|")
            out.extend("| " + " | ".join(map(esc, row)) + " |" for row in rows)
        out.append("")
    return "\n".join(out)


def _to_html(blocks: list[tuple], title: str) -> str:
    body = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            body.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "img":
            body.append(f'<img src="{html.escape(block[1])}" alt="{html.escape(block[2])}">')
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = (
        "body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}img{max-width:100%;display:block;margin:0.5em 0 1.5em}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o644)


# ----------------------------------------------------------------------------------------------------- report
def write_report(run_dirs: list[Path], out_dir: Path) -> dict[str, Any]:
    """Write report.md, report.html and the PNGs for `run_dirs` into `out_dir`; returns what was written."""
    if not run_dirs:
        raise UserError("name at least one run folder")
    runs = [load_run(Path(p)) for p in run_dirs]
    _label_runs(runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs: list[Path] = []
    blocks: list[tuple] = [("h", 1, "Data selection report")]

    blocks.append(("h", 2, "Runs"))
    blocks.append(("table", ["run", "folder", "selector", "seed", "rounds", "rows (last round)", "status"], [
        [r.label, str(r.path), r.selector, _fmt(r.seed), str(len(r.rounds)), _fmt(r.rows[r.rounds[-1]] if r.rounds else None),
         r.unfinished or "finished"]
        for r in runs
    ]))
    for r in runs:
        if r.unfinished:
            blocks.append(("p", f"{r.label} ({r.path}) is {r.unfinished}: this report shows only its trained rounds."))

    metric_names = sorted({m for r in runs for ms in r.metrics.values() for m in ms}, key=lambda m: (m != "train_loss", m))
    blocks.append(("h", 2, "Metrics by training rows"))
    if not metric_names:
        blocks.append(("p", "No metrics yet (no summary train loss and no round_K/eval.json)."))
    for metric in metric_names:
        values = {r.label: {k: ms[metric] for k, ms in r.metrics.items() if metric in ms} for r in runs}
        png = out_dir / f"metric_{_safe_name(metric)}.png"
        direction = " (lower is better)" if "loss" in metric else ""
        plot_vs_rows(runs, values, f"{metric}{direction}", metric, png)
        pngs.append(png)
        blocks += [("h", 3, metric), ("img", png.name, metric), ("table", *_value_table(runs, values))]

    blocks.append(("h", 2, "Diversity of each round's subset"))
    with_div = [r for r in runs if r.diversity]
    if not with_div:
        blocks.append(("p", "No embeddings.npy in the run folders: diversity not measured."))
    else:
        spaces = ", ".join(f"{r.label}: round {r.diversity_round}" for r in with_div)
        blocks.append(("p", f"Measured in each run's first saved embeddings ({spaces}). Vendi uses a cosine kernel; "
                            "distances are Euclidean on the raw embeddings."))
        for key, title in DIVERSITY.items():
            values = {r.label: {k: d[key] for k, d in r.diversity.items()} for r in runs}
            png = out_dir / f"diversity_{key}.png"
            plot_vs_rows(runs, values, title, key, png)
            pngs.append(png)
            blocks += [("h", 3, title), ("img", png.name, title), ("table", *_value_table(runs, values))]

    blocks += _coverage_blocks(runs, out_dir, pngs)

    blocks.append(("h", 2, "Embedding maps"))
    for run in runs:
        if run.map_round is None:
            blocks.append(("p", f"{run.label}: no embeddings.npy."))
            continue
        png = out_dir / f"embedding_map_{_safe_name(run.label)}.png"
        info = plot_embedding_map(run, png)
        pngs.append(png)
        blocks += [("h", 3, run.label), ("p", f"Pool of {info['pool_rows']} rows embedded after round {info['round']}; "
                   f"{info['selected']} selected rows (round {info['manifest_round']}'s manifest) coloured by the round they entered."),
                   ("img", png.name, f"embedding map {run.label}")]

    blocks.append(("h", 2, "Time per stage (seconds)"))
    for run in runs:
        if not run.timings:
            continue
        png = out_dir / f"timings_{_safe_name(run.label)}.png"
        plot_timings(run, png)
        pngs.append(png)
        stages = [s for s in (*STAGES, "round_s") if any(s in t for t in run.timings.values())]
        rows = [[str(k), str(run.rows[k])] + [_fmt(run.timings[k].get(s)) for s in stages] for k in run.rounds if k in run.timings]
        blocks += [("h", 3, run.label), ("img", png.name, f"timings {run.label}"), ("table", ["round", "rows", *stages], rows)]

    md, page = out_dir / "report.md", out_dir / "report.html"
    _write_text(md, _to_markdown(blocks))
    _write_text(page, _to_html(blocks, "Data selection report"))
    return {"markdown": md, "html": page, "pngs": pngs, "runs": [r.label for r in runs],
            "unfinished": {str(r.path): r.unfinished for r in runs if r.unfinished}}
