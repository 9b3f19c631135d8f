"""The user's own held-out set: a file they name (any pool format), or a split carved from the pool before round 0.

Carving happens once, in the loop, before anything is selected: the carved rows leave the rows every selector
sees, so no round can pick them, and run.json records their pool row numbers. Rows are grouped by a label field
when the recipe names one (`label`, or the field the split is stratified by); our metrics report each group and
their macro average.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserError

ALL_ROWS = "all"  # the one group of a held-out set without labels


class HeldoutRow(NamedTuple):
    index: int  # type: ignore[assignment]  # row number in the source file (for a carved split: the pool file's row number)
    group: str  # the label, the T0 template, or the source name
    row: dict  # in the set's format


@dataclass(frozen=True)
class HeldoutSet:
    """Held-out rows in one pool format, ready for our metrics."""

    rows: list[HeldoutRow]
    fmt: str
    origin: str  # where the rows came from, for run.json and eval.json

    def limited(self, limit: int | None) -> list[HeldoutRow]:
        """At most `limit` rows per group (the eval block's `limit`), keeping the set's order."""
        if not limit:
            return list(self.rows)
        taken: dict[str, int] = {}
        out = []
        for r in self.rows:
            if taken.get(r.group, 0) < limit:
                taken[r.group] = taken.get(r.group, 0) + 1
                out.append(r)
        return out

    def record(self) -> dict:
        """What run.json keeps: where the rows came from, how many per group, and their row numbers."""
        groups: dict[str, int] = {}
        for r in self.rows:
            groups[r.group] = groups.get(r.group, 0) + 1
        return {
            "origin": self.origin,
            "format": self.fmt,
            "rows": len(self.rows),
            "groups": dict(sorted(groups.items())),
            "file_rows": [r.index for r in self.rows],
        }


class SplitSpec(BaseModel):
    """`split: {rows: 500, seed: 0, stratify: category}`: rows carved from the pool before round 0."""

    model_config = ConfigDict(extra="forbid")
    rows: int = Field(gt=0, description="held-out rows carved from the pool (never selected, never trained on)")
    seed: int = Field(0, description="fixes which rows are carved")
    stratify: str | None = Field(
        None, description="a field of the pool's rows: each value keeps its share of the held-out rows (and becomes a "
        "metric group unless `label` names another field)",
    )


def stable_rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator fixed by (seed, keys): the same rows for the same names whatever else is in the file."""
    return np.random.default_rng([seed & 0xFFFFFFFF] + [zlib.crc32(k.encode("utf-8")) for k in keys])


def _label_of(row: dict, field: str | None, where: str) -> str:
    if field is None:
        return ALL_ROWS
    if field not in row or row[field] is None:
        raise UserError(f"{where} has no '{field}' field, which the held-out set groups (or stratifies) by")
    return str(row[field])


def _quotas(sizes: dict[str, int], n: int) -> dict[str, int]:
    """n split over groups in proportion to their sizes, largest remainders first (ties by name): exact total."""
    total = sum(sizes.values())
    exact = {g: n * s / total for g, s in sizes.items()}
    quota = {g: int(v) for g, v in exact.items()}
    for g in sorted(sizes, key=lambda g: (-(exact[g] - quota[g]), g))[: n - sum(quota.values())]:
        quota[g] += 1
    return quota


def carve_split(
    rows: list[dict], file_rows: list[int], split: SplitSpec, label: str | None, fmt: str, pool: Path
) -> tuple[list[int], HeldoutSet]:
    """(positions of `rows` left for selection, the carved HeldoutSet): a seeded draw of `split.rows` rows,
    proportional per value of `split.stratify` when given. Row numbers in the set are the pool file's."""
    if split.rows >= len(rows):
        raise UserError(
            f"eval.heldout.split.rows is {split.rows}, but the pool {pool} has only {len(rows)} usable rows"
        )
    by_stratum: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_stratum.setdefault(_label_of(row, split.stratify, f"{pool}: row {file_rows[i]}"), []).append(i)
    quota = _quotas({g: len(v) for g, v in by_stratum.items()}, split.rows)
    carved: list[int] = []
    for name in sorted(by_stratum):
        members = np.asarray(by_stratum[name])
        carved.extend(
            int(i) for i in members[stable_rng(split.seed, "split", name).permutation(len(members))[: quota[name]]]
        )
    carved.sort()
    field = label or split.stratify
    held = [HeldoutRow(file_rows[i], _label_of(rows[i], field, f"{pool}: row {file_rows[i]}"), rows[i]) for i in carved]
    taken = set(carved)
    keep = [i for i in range(len(rows)) if i not in taken]
    return keep, HeldoutSet(held, fmt, f"split of {pool} (seed {split.seed})")


def row_texts(row: dict, fmt: str) -> tuple[str, str]:
    """What a row says, whatever its format: (its prompt texts, trimmed and joined by newlines, its answer). An
    alpaca row (instruction, input, output) and a chat row whose user turn holds the instruction and input on two
    lines, then the same answer, say the same thing. System turns are left out."""
    if fmt == "alpaca":
        texts = [row.get("instruction"), row.get("input"), row.get("output")]
    elif fmt == "chat":
        texts = [m.get("content") for m in row.get("messages") or [] if m.get("role") != "system"]
    elif fmt == "sharegpt":
        texts = [t.get("value") for t in row.get("conversations") or [] if t.get("from") != "system"]
    else:
        texts = ["", row.get("text")]
    parts = [str(t or "").strip() for t in texts]
    return "\n".join(t for t in parts[:-1] if t), parts[-1] if parts else ""


def rows_in_heldout(rows: list[dict], fmt: str, held: HeldoutSet) -> list[int]:
    """Positions of the pool `rows` (format `fmt`) that say what a held-out row says: training on them would
    score the model on rows it was trained on."""
    said = {row_texts(r.row, held.fmt) for r in held.rows}
    return [i for i, row in enumerate(rows) if row_texts(row, fmt) in said]


def read_heldout_file(path: Path, fmt: str, label: str | None) -> HeldoutSet:
    """A held-out file in any pool format, read and cleaned like a pool (empty rows skipped)."""
    from ..data import clean_pool
    from ..pools import load_pool

    rows = load_pool(path, fmt)
    kept, numbers, _ = clean_pool(rows, fmt, "skip", False, path)
    held = [HeldoutRow(n, _label_of(r, label, f"{path}: row {n}"), r) for r, n in zip(kept, numbers, strict=True)]
    return HeldoutSet(held, fmt, str(path))


Format = Literal["alpaca", "chat", "completion"]
