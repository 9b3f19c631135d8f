"""The mixed pool: rows of several real sources, the evaluation's held-out rows removed, shuffled, written once.

The source list, the file of each source and how a row becomes Alpaca format are the evaluation module's
(`diverse_axolotl.evaluation.SOURCES`); the rows our metrics evaluate are `HeldoutSpec.excluded_ids()`. So the
pool can never contain a row that `heldout_loss` or `t0_exact` scores.

Written to the output folder:
  pool.json       JSON list of {instruction, input, output} (the recipes' `selection.pool`, format alpaca)
  pool_meta.json  {"rows": [{"source", "index", "template"}...] aligned with pool.json, "sources": per-source counts}
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from diverse_axolotl.data import atomic_path, read_rows
from diverse_axolotl.errors import UserError

from .config import QualityConfig


def heldout_spec(cfg: QualityConfig, data_root: Path):
    """The HeldoutSpec every arm's eval uses: the config's keys, the pool's sources, the benchmark's data root."""
    from diverse_axolotl.evaluation import HeldoutSpec

    keys = dict(cfg.heldout)
    keys.setdefault("sources", list(cfg.pool.sources))
    return HeldoutSpec(**keys, data_root=data_root)


def _template_choice(cfg: QualityConfig, spec, templates: list[str]) -> set[str] | None:
    choice = cfg.pool.t0_templates
    if choice == "all":
        return None
    if choice == "heldout":
        return {r.group for r in spec.rows("t0")}
    rng = np.random.default_rng([cfg.pool.seed, 7])
    return set(sorted(templates)[i] for i in rng.permutation(len(templates))[:choice])


def candidate_ids(src, raws: list[dict], taken: set[int]) -> tuple[list[int], int]:
    """(ids of the rows of one source file a pool or validation split may draw, how many were dropped as empty):
    eligible for the source, not in `taken` (held-out or already used), with a non-empty instruction and answer."""
    candidates, empty = [], 0
    for i, raw in enumerate(raws):
        if i in taken or not src.eligible(raw):
            continue
        row = src.to_alpaca(raw)
        if row["instruction"].strip() and row["output"].strip():
            candidates.append(i)
        else:
            empty += 1
    return candidates, empty


def build_pool(cfg: QualityConfig, data_root: Path, out_dir: Path, log=print) -> dict[str, Any]:
    """Write pool.json and pool_meta.json (unchanged files are left alone); return the meta dict."""
    from diverse_axolotl.evaluation import SOURCES

    spec = heldout_spec(cfg, data_root)
    excluded = spec.excluded_ids(list(cfg.pool.sources))
    rows: list[dict] = []
    meta: list[dict] = []
    counts: dict[str, dict] = {}
    for name, wanted in cfg.pool.sources.items():
        src = SOURCES[name]
        raws = read_rows(Path(data_root) / src.path)
        held = set(excluded.get(name, []))
        ineligible = [i for i, r in enumerate(raws) if not src.eligible(r)]
        candidates, empty = candidate_ids(src, raws, held)
        keep_templates = None
        if src.group_by:
            keep_templates = _template_choice(cfg, spec, sorted({str(r[src.group_by]) for r in raws}))
            if keep_templates is not None:
                candidates = [i for i in candidates if str(raws[i][src.group_by]) in keep_templates]
        if wanted is not None:
            if wanted > len(candidates):
                raise UserError(f"pool source {name}: {wanted} rows asked, only {len(candidates)} available after "
                                "removing held-out rows")
            rng = np.random.default_rng([cfg.pool.seed, zlib.crc32(name.encode())])
            candidates = sorted(int(candidates[j]) for j in rng.permutation(len(candidates))[:wanted])
        for i in candidates:
            rows.append(src.to_alpaca(raws[i]))
            meta.append({"source": name, "index": i, "template": str(raws[i][src.group_by]) if src.group_by else None})
        counts[name] = {
            "file": src.path, "file_rows": len(raws), "heldout_excluded": len(held), "ineligible": len(ineligible),
            "empty": empty, "rows": len(candidates),
            "templates": len({m["template"] for m in meta if m["source"] == name}) if src.group_by else None,
        }
    order = np.random.default_rng([cfg.pool.seed, 11]).permutation(len(rows))
    rows = [rows[i] for i in order]
    meta = [meta[i] for i in order]
    info = {"rows": meta, "sources": counts, "total": len(rows), "heldout": spec.model_dump(mode="json"),
            "excluded_ids": excluded}
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_if_changed(out_dir / "pool.json", json.dumps(rows, ensure_ascii=False))
    _write_if_changed(out_dir / "pool_meta.json", json.dumps(info, ensure_ascii=False, default=str))
    mix = ", ".join(f"{k} {v['rows']}" for k, v in counts.items())
    log(f"pool: {len(rows)} rows ({mix}) -> {out_dir / 'pool.json'}")
    return info


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def load_meta(out_dir: Path) -> dict[str, Any]:
    return json.loads((out_dir / "pool_meta.json").read_text(encoding="utf-8"))


def composition(meta_rows: list[dict], indices) -> dict[str, Any]:
    """Source shares and T0 template coverage of a subset (row ids into the pool)."""
    picked = [meta_rows[i] for i in indices]
    by_source = Counter(m["source"] for m in picked)
    templates_pool = {m["template"] for m in meta_rows if m["template"] is not None}
    templates_sub = {m["template"] for m in picked if m["template"] is not None}
    sources_pool = {m["source"] for m in meta_rows}
    return {
        "rows": len(picked),
        "source_share": {s: by_source.get(s, 0) / max(len(picked), 1) for s in sorted(sources_pool)},
        "sources_covered": len(by_source),
        "sources_in_pool": len(sources_pool),
        "templates_covered": len(templates_sub),
        "templates_in_pool": len(templates_pool),
    }
