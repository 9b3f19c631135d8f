"""`write_report`: every section of report.md / report.html in order, each with its plot and the table behind it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from .plots import plot_embedding_map, plot_timings, plot_vs_rows
from .render import fmt, safe_name, to_html, to_markdown, value_table, write_page
from .runs import LABEL_KINDS, STAGES, Run, label_coverage, label_runs, load_run, pool_labels

DIVERSITY = {
    "vendi": "Vendi score (cosine kernel)",
    "nn_distance": "mean nearest-neighbour distance",
    "coverage": "coverage radius (max distance of a pool row to the subset)",
}


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
        blocks += [
            ("h", 3, f"{kind}s"),
            ("img", png.name, f"coverage of {kind}s"),
            ("table", *value_table(runs, covered)),
        ]
        if kind == "source":  # a few sources: show each one's share in the last round
            names = sorted({label for t in last_tables.values() for label in t})
            rows = [
                [run] + [f"{t.get(n, (0, 0))[0]} / {t.get(n, (0, 0))[1]}" for n in names]
                for run, t in last_tables.items()
            ]
            blocks += [("p", "Selected rows per source in each run's last round (selected / in the pool)."),
                       ("table", ["run", *names], rows)]
    return blocks


def write_report(run_dirs: list[Path], out_dir: Path) -> dict[str, Any]:
    """Write report.md, report.html and the PNGs for `run_dirs` into `out_dir`; returns what was written."""
    if not run_dirs:
        raise UserError("name at least one run folder")
    runs = [load_run(Path(p)) for p in run_dirs]
    label_runs(runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs: list[Path] = []
    blocks: list[tuple] = [("h", 1, "Data selection report")]

    blocks.append(("h", 2, "Runs"))
    blocks.append(
        (
            "table",
            ["run", "folder", "selector", "seed", "rounds", "rows (last round)", "status"],
            [
                [
                    r.label,
                    str(r.path),
                    r.selector,
                    fmt(r.seed),
                    str(len(r.rounds)),
                    fmt(r.rows[r.rounds[-1]] if r.rounds else None),
                    r.unfinished or "finished",
                ]
                for r in runs
            ],
        )
    )
    for r in runs:
        if r.unfinished:
            blocks.append(("p", f"{r.label} ({r.path}) is {r.unfinished}: this report shows only its trained rounds."))

    metric_names = sorted(
        {m for r in runs for ms in r.metrics.values() for m in ms}, key=lambda m: (m != "train_loss", m)
    )
    blocks.append(("h", 2, "Metrics by training rows"))
    if not metric_names:
        blocks.append(("p", "No metrics yet (no summary train loss and no round_K/eval.json)."))
    for metric in metric_names:
        values = {r.label: {k: ms[metric] for k, ms in r.metrics.items() if metric in ms} for r in runs}
        png = out_dir / f"metric_{safe_name(metric)}.png"
        direction = " (lower is better)" if "loss" in metric else ""
        plot_vs_rows(runs, values, f"{metric}{direction}", metric, png)
        pngs.append(png)
        blocks += [("h", 3, metric), ("img", png.name, metric), ("table", *value_table(runs, values))]

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
            blocks += [("h", 3, title), ("img", png.name, title), ("table", *value_table(runs, values))]

    blocks += _coverage_blocks(runs, out_dir, pngs)

    blocks.append(("h", 2, "Embedding maps"))
    for run in runs:
        if run.map_round is None:
            blocks.append(("p", f"{run.label}: no embeddings.npy."))
            continue
        png = out_dir / f"embedding_map_{safe_name(run.label)}.png"
        info = plot_embedding_map(run, png)
        pngs.append(png)
        blocks += [
            ("h", 3, run.label),
            (
                "p",
                f"Pool of {info['pool_rows']} rows embedded after round {info['round']}; "
                f"{info['selected']} selected rows (round {info['manifest_round']}'s manifest) coloured by the round"
                " they entered.",
            ),
            ("img", png.name, f"embedding map {run.label}"),
        ]

    blocks.append(("h", 2, "Time per stage (seconds)"))
    for run in runs:
        if not run.timings:
            continue
        png = out_dir / f"timings_{safe_name(run.label)}.png"
        plot_timings(run, png)
        pngs.append(png)
        stages = [s for s in (*STAGES, "round_s") if any(s in t for t in run.timings.values())]
        rows = [
            [str(k), str(run.rows[k])] + [fmt(run.timings[k].get(s)) for s in stages]
            for k in run.rounds
            if k in run.timings
        ]
        blocks += [
            ("h", 3, run.label),
            ("img", png.name, f"timings {run.label}"),
            ("table", ["round", "rows", *stages], rows),
        ]

    md, page = out_dir / "report.md", out_dir / "report.html"
    write_page(md, to_markdown(blocks))
    write_page(page, to_html(blocks, "Data selection report"))
    return {"markdown": md, "html": page, "pngs": pngs, "runs": [r.label for r in runs],
            "unfinished": {str(r.path): r.unfinished for r in runs if r.unfinished}}
