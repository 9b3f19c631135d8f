"""Held-out rows and our metrics on them: answer-token loss and exact match of greedy answers, per group.

  heldout_loss   mean NLL of the answer tokens given the prompt (the same pass as the perplexity scorer), averaged
                 over each group's rows, then macro-averaged over groups (lower is better)
  heldout_exact  greedy answers, exact match after strip/lower (and without `<|endoftext|>`), averaged per group,
                 then macro-averaged over groups
  t0_exact       heldout_exact on the T0 source's rows, one group per T0 template
Where the rows come from is configuration (`HeldoutSpec`): the user's own set (`file:` in any pool format, or
`split:` carved from the pool before round 0, grouped by a `label` field; see `own_data`), or named benchmark
sources (`sources:`, the five files of `SOURCES`, one group per source). Source rows are fixed by (source, seed):
`heldout_rows` / `HeldoutSpec.excluded_ids()` name them so a benchmark can keep them out of its training pool;
they are read under a data root the caller names (`HeldoutSpec.data_root` or $DIVERSE_AXOLOTL_DATA): the library
has no default folder.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..data import prompt_and_response, read_rows
from ..errors import UserError, did_you_mean
from ..inference import greedy_generate
from .own_data import Format, HeldoutRow, HeldoutSet, SplitSpec, read_heldout_file, stable_rng

DATA_ENV = "DIVERSE_AXOLOTL_DATA"
EOT = "<|endoftext|>"


def default_data_root() -> Path:
    """The folder holding `pools/`: $DIVERSE_AXOLOTL_DATA (no default: the data are the user's)."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser().resolve()
    raise UserError(f"held-out metrics need the folder holding pools/: set heldout.data_root or ${DATA_ENV}")


@dataclass(frozen=True)
class HeldoutSource:
    """One pool file and how its fields become an Alpaca row {instruction, input, output}."""

    name: str
    path: str  # relative to the data root
    fields: dict[str, str]  # alpaca field -> field of the file's rows
    group_by: str | None = None  # held-out rows are drawn per value of this field (T0: the template)
    strip_suffix: str = ""  # removed from the answer (T0 completions end in <|endoftext|>)
    skip_if: str | None = None  # rows where this field is non-empty are never held out (LIMA's multi-turn rows)

    def to_alpaca(self, raw: dict) -> dict:
        out = str(raw[self.fields["output"]])
        if self.strip_suffix and out.endswith(self.strip_suffix):
            out = out[: -len(self.strip_suffix)]
        inp = raw.get(self.fields["input"]) if "input" in self.fields else ""
        return {"instruction": str(raw[self.fields["instruction"]]), "input": str(inp or ""), "output": out}

    def eligible(self, raw: dict) -> bool:
        return not (self.skip_if and raw.get(self.skip_if))


_ALPACA_FIELDS = {"instruction": "instruction", "input": "input", "output": "output"}
SOURCES: dict[str, HeldoutSource] = {
    s.name: s
    for s in (
        HeldoutSource("alpaca", "pools/alpaca/alpaca_5000.json", _ALPACA_FIELDS),
        HeldoutSource("code_alpaca", "pools/code_alpaca/code_alpaca_2k.json", _ALPACA_FIELDS),
        HeldoutSource("lima", "pools/lima/lima_llamafactory.json", _ALPACA_FIELDS, skip_if="history"),
        HeldoutSource("gsm8k", "pools/gsm8k_train.jsonl", {"instruction": "question", "output": "answer"}),
        HeldoutSource(
            "t0", "pools/t0_train_50k.jsonl.xz", {"instruction": "prompt", "output": "completion"},
            group_by="template", strip_suffix=EOT,
        ),
    )
}
T0_SOURCE = "t0"
HELDOUT_FORMAT = "alpaca"


@functools.lru_cache(maxsize=8)
def _read_source(path: str) -> tuple[dict, ...]:
    """Rows of a pool file (`data.read_rows`: JSON list or JSON lines, optionally .gz/.xz), cached for the process."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: held-out source file not found (set {DATA_ENV} or heldout.data_root)")
    return tuple(read_rows(p))


def heldout_rows(
    source: str,
    n: int,
    seed: int = 0,
    data_root: str | Path | None = None,
    max_groups: int | None = None,
) -> list[HeldoutRow]:
    """n held-out rows of a source (n per template for T0), in file order; deterministic in (source, seed).

    Each group's rows are a seeded permutation's first n, so a smaller n picks a subset of a larger one's rows (and
    `max_groups` keeps a prefix of a seeded permutation of the sorted groups). Excluding `heldout_ids(...)` with the
    largest n used keeps every evaluated row out of training.
    """
    if source not in SOURCES:
        raise UserError(
            f"unknown held-out source '{source}'{did_you_mean(source, SOURCES)}; sources: {', '.join(SOURCES)}"
        )
    src = SOURCES[source]
    root = Path(data_root) if data_root is not None else default_data_root()
    raws = _read_source(str((root / src.path).resolve()))
    groups: dict[str, list[int]] = {}
    for i, raw in enumerate(raws):
        if src.eligible(raw):
            key = str(raw[src.group_by]) if src.group_by else source
            groups.setdefault(key, []).append(i)
    names = sorted(groups)
    if max_groups is not None and max_groups < len(names):
        order = stable_rng(seed, source, "groups").permutation(len(names))
        names = sorted(names[j] for j in order[:max_groups])
    picked: list[HeldoutRow] = []
    for name in names:
        candidates = np.asarray(groups[name])
        chosen = candidates[stable_rng(seed, source, name).permutation(len(candidates))[:n]]
        picked.extend(HeldoutRow(int(i), name, src.to_alpaca(raws[int(i)])) for i in chosen)
    picked.sort(key=lambda r: r.index)
    return picked


def heldout_ids(source: str, n: int, seed: int = 0, data_root: str | Path | None = None) -> list[int]:
    """Row numbers (in the source file) of `heldout_rows(source, n, seed)`: what a training pool should leave out."""
    return [r.index for r in heldout_rows(source, n, seed, data_root)]


class HeldoutSpec(BaseModel):
    """Which held-out rows our metrics use, and how they are scored: the user's own set (`file` or `split`) or
    benchmark `sources` (the default when neither is given)."""

    model_config = ConfigDict(extra="forbid")
    file: Path | None = Field(None, description="held-out rows in a file of any pool format (see `format`)")
    split: SplitSpec | None = Field(None, description="held-out rows carved from the pool before round 0")
    format: Format | None = Field(None, description="format of `file` (default: the pool's)")
    label: str | None = Field(None, description="rows are grouped by this field (default: split.stratify)")
    sources: list[str] | None = Field(None, description="benchmark sources averaged by heldout_loss (default: all)")
    n_per_source: int = Field(64, gt=0, description="held-out rows per source (not T0)")
    n_per_template: int = Field(2, gt=0, description="held-out rows per T0 template (heldout_loss and t0_exact)")
    max_templates: int | None = Field(None, gt=0, description="use only this many T0 templates (seeded choice)")
    seed: int = Field(0, description="fixes which rows are held out")
    max_length: int = Field(512, gt=8, description="tokens of prompt + answer; the prompt is cut from the left")
    batch_tokens: int = Field(8192, gt=0, description="padded tokens per batch")
    max_new_tokens: int = Field(128, gt=0, description="t0_exact: at most this many generated tokens per answer")
    data_root: Path | None = Field(None, description="folder holding pools/ (default: $DIVERSE_AXOLOTL_DATA)")

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("name at least one source")
        for name in value:
            if name not in SOURCES:
                raise ValueError(f"unknown source '{name}'{did_you_mean(name, SOURCES)}; sources: {', '.join(SOURCES)}")
        return value

    @model_validator(mode="after")
    def _one_origin(self):
        """One place the rows come from: a file, a split of the pool, or benchmark sources (the default)."""
        given = [k for k in ("file", "split", "sources") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"heldout: name one of file, split, sources (got {', '.join(given)})")
        if self.sources is None and not given:
            self.sources = list(SOURCES)
        if self.sources is not None and (self.label or self.format):
            raise ValueError("heldout: label and format go with file or split, not with sources")
        return self

    @property
    def own(self) -> bool:
        """The rows are the user's (a file or a split), not benchmark sources."""
        return self.file is not None or self.split is not None

    @property
    def group_field(self) -> str | None:
        return self.label or (self.split.stratify if self.split else None)

    def own_set(self, pool_format: str | None = None) -> HeldoutSet:
        """The user's file as a HeldoutSet (a split exists only in a run: the loop carves it from the pool)."""
        if self.file is None:
            raise UserError("eval.heldout.split: the held-out split is carved from the pool by `diverse-axolotl run`;"
                            " to evaluate outside a run, name the held-out rows with heldout.file")
        return read_heldout_file(self.file, self.format or pool_format or HELDOUT_FORMAT, self.group_field)

    def source_set(self, limit: int | None = None) -> HeldoutSet:
        """The benchmark sources' rows as one set, one group per source."""
        rows = [r._replace(group=name) for name in self.sources for r in self.rows(name, limit)]  # type: ignore[union-attr, arg-type]
        return HeldoutSet(rows, HELDOUT_FORMAT, "sources: " + ", ".join(self.sources))  # type: ignore[union-attr, arg-type]

    def n_for(self, source: str, limit: int | None = None) -> int:
        n = self.n_per_template if SOURCES[source].group_by else self.n_per_source
        return min(n, limit) if limit else n

    def groups_for(self, source: str, limit: int | None = None) -> int | None:
        if not SOURCES[source].group_by:
            return None
        caps = [c for c in (self.max_templates, limit) if c]
        return min(caps) if caps else None

    def rows(self, source: str, limit: int | None = None) -> list[HeldoutRow]:
        return heldout_rows(
            source, self.n_for(source, limit), self.seed, self.data_root, self.groups_for(source, limit)
        )

    def excluded_ids(self, sources: Iterable[str] | None = None) -> dict[str, list[int]]:
        """Per source, the row numbers our metrics may evaluate (the full held-out slice, whatever `limit`)."""
        if self.own and sources is None:  # the user's rows: a split never reaches selection, a file is not the pool
            return {}
        names = list(sources) if sources is not None else sorted(set(self.sources) | {T0_SOURCE})  # type: ignore[union-attr, arg-type]
        return {name: [r.index for r in self.rows(name)] for name in names}



# ------------------------------------------------------------------------------------------------ our metrics
def _fit_length(model, wanted: int) -> int:
    """`wanted`, or less when the model has fewer positions."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(wanted, int(positions)) if isinstance(positions, int) and positions > 0 else wanted


def loss_by_group(model, tokenizer, rows: list[HeldoutRow], fmt: str, max_length: int, batch_tokens: int,
                  desc: str = "held-out loss") -> dict[str, Any]:
    """Mean answer-token NLL per group of rows, and their macro average (each group counts once)."""
    from ..scoring.token_stats import response_token_stats

    if not rows:
        raise UserError("the held-out set holds no rows")
    pairs = [prompt_and_response(r.row, fmt, tokenizer) for r in rows]
    nll = response_token_stats(model, tokenizer, pairs, _fit_length(model, max_length), batch_tokens, desc=desc)["nll"]
    groups: dict[str, list[float]] = {}
    for r, value in zip(rows, nll, strict=True):
        groups.setdefault(r.group, []).append(float(value))
    per_group = {g: {"loss": float(np.mean(v)), "rows": len(v)} for g, v in sorted(groups.items())}
    return {"value": float(np.mean([g["loss"] for g in per_group.values()])), "per_group": per_group,
            "rows": len(rows), "higher_is_better": False}


def heldout_loss(
    model, tokenizer, spec: HeldoutSpec, limit: int | None = None, own: HeldoutSet | None = None
) -> dict[str, Any]:
    """Mean answer-token NLL per group (label of the user's rows, or benchmark source), macro-averaged.

    Benchmark sources keep their `per_source` key (each source's rows are drawn and scored as before)."""
    if spec.own:
        own = own or spec.own_set()
        return loss_by_group(model, tokenizer, own.limited(limit), own.fmt, spec.max_length, spec.batch_tokens)
    per_source = {}
    for name in spec.sources:  # type: ignore[union-attr, arg-type]
        part = loss_by_group(model, tokenizer, [r._replace(group=name) for r in spec.rows(name, limit)], HELDOUT_FORMAT,
                             spec.max_length, spec.batch_tokens, desc=f"held-out loss: {name}")
        per_source[name] = part["per_group"][name]
    return {
        "value": float(np.mean([s["loss"] for s in per_source.values()])),
        "per_source": per_source,
        "per_group": per_source,
        "higher_is_better": False,
    }


def normalise_answer(text: str) -> str:
    return text.replace(EOT, "").strip().lower()


def exact_match(prediction: str, gold: str) -> bool:
    return normalise_answer(prediction) == normalise_answer(gold)


def exact_by_group(model, tokenizer, rows: list[HeldoutRow], fmt: str, spec: HeldoutSpec, slack_tokens: int = 8,
                   desc: str = "exact match") -> dict[str, Any]:
    """Exact match of greedy answers per group of rows, macro-averaged over groups.

    Each row may generate its gold answer's token count + `slack_tokens` (at most `spec.max_new_tokens`): a longer
    answer cannot match, so generating further only costs time. Gold answers longer than max_new_tokens count as
    misses.
    """
    pairs = [prompt_and_response(r.row, fmt, tokenizer) for r in rows]
    budgets = [
        min(len(tokenizer(gold, add_special_tokens=False)["input_ids"]) + slack_tokens, spec.max_new_tokens)
        for _, gold in pairs
    ]
    predictions = greedy_generate(
        model,
        tokenizer,
        [p for p, _ in pairs],
        budgets,
        _fit_length(model, spec.max_length),
        spec.batch_tokens,
        desc=desc,
    )
    hits: dict[str, list[bool]] = {}
    for r, (_, gold), pred in zip(rows, pairs, predictions, strict=True):
        hits.setdefault(r.group, []).append(exact_match(pred, gold))
    per_group = {name: float(np.mean(v)) for name, v in sorted(hits.items())}
    return {
        "value": float(np.mean(list(per_group.values()))) if per_group else float("nan"),
        "per_group": per_group,
        "groups": len(per_group),
        "rows": len(rows),
        "higher_is_better": True,
    }


def heldout_exact(
    model, tokenizer, spec: HeldoutSpec, limit: int | None = None, own: HeldoutSet | None = None
) -> dict[str, Any]:
    """Exact match of greedy answers on the held-out set, per group (label, or benchmark source)."""
    held = (own or spec.own_set()) if spec.own else spec.source_set(limit)
    rows = held.limited(limit) if spec.own else held.rows
    return exact_by_group(model, tokenizer, rows, held.fmt, spec, desc="held-out exact match")


def t0_exact(model, tokenizer, spec: HeldoutSpec, limit: int | None = None, slack_tokens: int = 8) -> dict[str, Any]:
    """heldout_exact on held-out rows of the T0 source, one group per template, macro-averaged over templates."""
    rows = spec.rows(T0_SOURCE, limit)
    out = exact_by_group(model, tokenizer, rows, HELDOUT_FORMAT, spec, slack_tokens, desc="t0 exact match")
    out["per_template"], out["templates"] = out.pop("per_group"), out.pop("groups")
    return out
