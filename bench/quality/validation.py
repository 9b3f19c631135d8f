"""A validation split for choices (issue 17's ablation): rows that decide which embedding lever becomes a default,
kept apart from the held-out rows that decide the results.

The validation rows are drawn, per pool source, from the rows of that source's file that are neither in the pool
nor held out for the metrics (`HeldoutSpec.excluded_ids`): the pool's own distribution, never trained on, never
reported as a result. (They are not carved out of the pool itself so that adding the split left the pool, and so
every finished run, unchanged.) Each finished run's adapter is scored on them with the toolkit's own answer-token
loss (`evaluation.heldout.loss_by_group`), macro-averaged over sources; results are cached per run and round in
`<work>/validation/`.

The rule: a lever helps when its validation loss is lower than plain k-center's by more than random's spread
(max - min over seeds) on the same split. Only then may it become the default; the held-out tables then say how it
does on the rows that decide results.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from diverse_axolotl.io import write_json

from .config import QualityConfig, budget_label
from .pool import candidate_ids


def validation_rows(cfg: QualityConfig, data_root: Path, meta: dict[str, Any]) -> list:
    """`cfg.validation.n_per_source` rows per pool source, seeded, disjoint from the pool and the held-out rows."""
    from diverse_axolotl.data import read_rows
    from diverse_axolotl.evaluation import SOURCES
    from diverse_axolotl.evaluation.heldout import HeldoutRow

    assert cfg.validation is not None
    in_pool: dict[str, set[int]] = {}
    for m in meta["rows"]:
        in_pool.setdefault(m["source"], set()).add(int(m["index"]))
    excluded = {name: set(ids) for name, ids in meta["excluded_ids"].items()}
    rows = []
    for name in cfg.pool.sources:
        src = SOURCES[name]
        raws = read_rows(Path(data_root) / src.path)
        candidates, _ = candidate_ids(src, raws, in_pool.get(name, set()) | excluded.get(name, set()))
        rng = np.random.default_rng([cfg.validation.seed, zlib.crc32(name.encode()), 97])
        chosen = sorted(int(candidates[j]) for j in rng.permutation(len(candidates))[: cfg.validation.n_per_source])
        rows.extend(HeldoutRow(i, name, src.to_alpaca(raws[i])) for i in chosen)
    return rows


def validation_loss(adapter: Path, base_model: Path, rows: list, cfg: QualityConfig) -> dict[str, Any]:
    """Macro-averaged answer loss of base + adapter on the validation rows (the held-out metric's own code)."""
    from transformers import AutoTokenizer

    from diverse_axolotl.evaluation.heldout import loss_by_group
    from diverse_axolotl.models import load_model

    assert cfg.validation is not None
    model = load_model(base_model, adapter, device="auto", dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(str(base_model))
    out = loss_by_group(
        model, tokenizer, rows, "alpaca", cfg.validation.max_length, cfg.validation.batch_tokens, "validation loss"
    )
    return {"value": out["value"], "per_source": {g: v["loss"] for g, v in out["per_group"].items()}}


def score_runs(
    cfg: QualityConfig, plans, work: Path, model: Path, rows: list, compute: bool = True, log=print
) -> dict[str, dict]:
    """Validation loss of every finished run of `cfg.validation.arms` at `cfg.validation.budget` (cached; with
    `compute=False` only what the cache holds)."""
    assert cfg.validation is not None
    out: dict[str, dict] = {}
    digest = zlib.crc32(json.dumps([[r.group, r.index] for r in rows]).encode())
    for plan in plans:
        if plan.arm not in cfg.validation.arms or cfg.validation.budget not in plan.round_at:
            continue
        k = plan.round_at[cfg.validation.budget]
        adapter = work / "runs" / plan.key / f"round_{k}" / "adapter"
        done = work / "runs" / plan.key / f"round_{k}" / "done.json"
        cache = work / "validation" / f"{plan.key}__round{k}.json"
        if cache.is_file():
            cached = json.loads(cache.read_text())
            if cached.get("rows_digest") == digest:
                out[plan.key] = {**cached, "arm": plan.arm, "seed": plan.seed}
                continue
        if not compute or not done.is_file():
            continue
        log(f"validation: {plan.key} round {k} ({len(rows)} rows)")
        result = {**validation_loss(adapter, model, rows, cfg), "round": k, "rows_digest": digest}
        write_json(cache, result)
        out[plan.key] = {**result, "arm": plan.arm, "seed": plan.seed}
    return out


def validation_section(cfg: QualityConfig, scored: dict[str, dict], n_rows: int) -> list[str]:
    """The RESULTS.md section: every scored arm's validation loss, and each lever's verdict against k-center."""
    assert cfg.validation is not None
    v = cfg.validation
    by_arm: dict[str, list[float]] = {}
    for entry in scored.values():
        by_arm.setdefault(entry["arm"], []).append(entry["value"])
    md = [
        "## Validation split (for choices, not results)",
        "",
        f"{n_rows} rows ({v.n_per_source} per source) from the source files, in neither the pool nor the held-out "
        f"sets; answer loss of each run's adapter at {budget_label(v.budget)} (lower is better), macro over sources. "
        f"A lever is adopted only when it beats `{v.reference}` here by more than random's spread.",
        "",
        "| arm | validation loss | n | verdict against the reference |",
        "|---|---|---|---|",
    ]
    rand = by_arm.get("random", [])
    spread = (max(rand) - min(rand)) if len(rand) >= 2 else None
    ref = by_arm.get(v.reference)
    for arm in v.arms:
        values = by_arm.get(arm)
        if not values:
            md.append(f"| {arm} | - | 0 | not run yet |")
            continue
        mean = float(np.mean(values))
        verdict = "-"
        if arm not in ("random", v.reference):
            if ref is None or spread is None:
                verdict = "n/a (reference or random's spread missing)"
            else:
                gap = float(np.mean(ref)) - mean
                verdict = "**helps**" if gap > spread else ("*hurts*" if -gap > spread else "tie")
                verdict += f" ({gap:+.4f} vs spread {spread:.4f})"
        md.append(f"| {arm} | {mean:.4f} | {len(values)} | {verdict} |")
    return md + [""]
