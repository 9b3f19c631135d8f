"""The report's PNGs (matplotlib's Agg canvas, no display): metrics against training rows, embedding maps, stage
timings. `figure` and `save_png` are also what bench/quality draws its plots with."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_path
from .metrics import pca_2d
from .runs import STAGES, Run, load_embeddings

FIG_SIZE = (8.0, 4.8)  # inches
DPI = 100  # -> every PNG is 800 x 480 pixels


def figure():
    """A fixed-size figure on the Agg canvas (no display, no pyplot state shared between plots)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIG_SIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: Path) -> None:
    """The figure as a PNG, atomically and readable by others (a report is meant to be read)."""
    with atomic_path(path, mode=0o644) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")


def by_selector(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.selector, []).append(run)
    return groups


def group_series(
    runs: list[Run], values: dict[str, dict[int, float]]
) -> tuple[list[int], list[float], list[float], list[float]]:
    """x (training rows) and mean, min, max over the runs that have a value there; `values`: run label -> round -> v."""
    at: dict[int, list[float]] = {}
    for run in runs:
        for k, v in values.get(run.label, {}).items():
            if v is not None and math.isfinite(v):
                at.setdefault(run.rows[k], []).append(v)
    xs = sorted(at)
    return xs, [float(np.mean(at[x])) for x in xs], [min(at[x]) for x in xs], [max(at[x]) for x in xs]


def plot_vs_rows(runs: list[Run], values: dict[str, dict[int, float]], title: str, ylabel: str, path: Path) -> None:
    fig = figure()
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, members) in enumerate(by_selector(runs).items()):
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
    save_png(fig, path)


def plot_embedding_map(run: Run, path: Path) -> dict[str, Any]:
    assert run.map_round is not None, "the report draws maps only for runs with embeddings"
    emb = np.asarray(load_embeddings(run, run.map_round), dtype=np.float64)
    xy = pca_2d(emb)
    last = max(k for k in run.rounds if k in run.manifests) if run.manifests else None
    fig = figure()
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
    save_png(fig, path)
    return {"round": run.map_round, "pool_rows": len(xy), "selected": selected, "manifest_round": last}


def plot_timings(run: Run, path: Path) -> None:
    fig = figure()
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
    save_png(fig, path)


def _stage_value(timing: dict[str, float], stage: str) -> float:
    if stage == "other_s":
        rest = timing.get("round_s", 0.0) - sum(timing.get(s, 0.0) for s in STAGES)
        return rest if rest > 0.01 else 0.0
    return timing.get(stage, 0.0)
