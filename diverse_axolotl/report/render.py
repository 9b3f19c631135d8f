"""The report as blocks (headings, paragraphs, images, tables) rendered to markdown and to a self-contained HTML
page, and the tables of values behind every plot."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

from ..io import write_text
from .plots import by_selector, group_series
from .runs import Run


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def value_table(runs: list[Run], values: dict[str, dict[int, float]]) -> tuple[list[str], list[list[str]]]:
    """Rows: training rows; columns: each run, then mean/min/max of selectors with several runs."""
    several = {g: m for g, m in by_selector(runs).items() if len(m) > 1}
    xs = sorted({run.rows[k] for run in runs for k in values.get(run.label, {})})
    headers = ["rows"] + [r.label for r in runs] + [f"{g} mean [min, max]" for g in several]
    table = []
    for x in xs:
        cells = [str(x)]
        for run in runs:
            ks = [k for k in values.get(run.label, {}) if run.rows[k] == x]
            cells.append(fmt(values[run.label][ks[0]]) if ks else "-")
        for members in several.values():
            gx, mean, lo, hi = group_series(members, values)
            cells.append(
                f"{fmt(mean[gx.index(x)])} [{fmt(lo[gx.index(x)])}, {fmt(hi[gx.index(x)])}]" if x in gx else "-"
            )
        table.append(cells)
    return headers, table


def to_markdown(blocks: list[tuple]) -> str:
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


def to_html(blocks: list[tuple], title: str) -> str:
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
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in block[2]
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = (
        "body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
        "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}img{max-width:100%;display:block;margin:0.5em 0 1.5em}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_page(path: Path, text: str) -> None:
    write_text(path, text, mode=0o644)  # a report is meant to be read: not mkstemp's 0600
