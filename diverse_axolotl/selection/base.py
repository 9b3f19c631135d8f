"""The interface every selector shares, and the input checks they all need.

A selector is configured once with typed parameters (a pydantic model, unknown keys rejected) and then asked,
possibly many times, for `budget` new row ids given the rows already chosen:

    picks = selector.select(embeddings, budget, already_selected=(), scores=None, seed=0)

`embeddings` is always an (N, d) array, scikit-learn style. A selector that needs none (`needs_embeddings`
False: random, full, the uncertainty baselines) reads only its length, and may instead be given `None` with the
pool size as `n_rows`; `_select` then sees an (N, 0) array, so every selector gets the pool size as `len()`.

`select` validates the arrays and hands clean inputs to `_select`, which subclasses implement as a pure function
of its arguments (no hidden state, so the same inputs and seed always give the same picks). After a call,
`selector.last_info` holds what that call wants recorded (e.g. the k-means objective under "kmeans"; `{}` when
nothing): it is output only and never read back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import UserError, did_you_mean


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Selector:
    """Base class: set `name`, `description`, `Params` (pydantic, extra='forbid') and implement `_select`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams
    #: "required": one score per pool row must be given; "selected": only the already-selected rows' scores are
    #: read (the loop scores just those); "optional": used when given; "none": ignored.
    scores: ClassVar[str] = "none"
    #: The scorer the loop uses when the recipe names none (e.g. "perplexity" for iterative_kmq).
    default_scorer: ClassVar[str | None] = None
    #: True when the selector needs no embeddings at all (the loop can then skip embedding the pool).
    needs_embeddings: ClassVar[bool] = True
    #: What of each row is embedded when `selection.embedding.text` is left out (`prompt_response` or `prompt`).
    embedding_text: ClassVar[str] = "prompt_response"

    def __init__(self, **params):
        self._configure(parse_params(self.name, self.Params, params))

    def needs_embeddings_given(self, state: dict | None) -> bool:
        """Whether a round that starts from `state` (the previous round's, from `select_with_state`; None for the
        first) reads the pool's embeddings. A selector whose state already holds all it took from them (iterative
        kMQ's fixed clusters) says no, and the loop skips embedding the pool with that round's adapter."""
        return self.needs_embeddings

    @classmethod
    def from_params(cls, params: BaseModel) -> Selector:
        """A selector from parameters already validated (a recipe's resolved `Params`), without validating again."""
        if not isinstance(params, cls.Params):
            raise TypeError(f"selector '{cls.name}' takes {cls.Params.__name__}, got {type(params).__name__}")
        self = cls.__new__(cls)
        self._configure(params)
        return self

    def _configure(self, params: BaseModel) -> None:
        self.params = params
        self.last_info: dict = {}  # diagnostics of the latest `select` call, for the round's manifest

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())
        return f"{type(self).__name__}({args})"

    def select(
        self,
        embeddings,
        budget: int,
        already_selected: Sequence[int] = (),
        scores=None,
        seed: int = 0,
        n_rows: int | None = None,
    ) -> np.ndarray:
        """Row ids of `budget` new rows, in pick order, none of them in `already_selected`. `n_rows`: the pool
        size, for a selector that needs no embeddings when `embeddings` is None."""
        emb = self._inputs(embeddings, n_rows)
        n = len(emb)
        chosen = check_already_selected(already_selected, n)
        budget = check_budget(budget, n - len(chosen), self.name)
        if self.scores == "required" and scores is None:
            raise UserError(f"selector '{self.name}' needs per-row scores: set a scorer in the recipe")
        score_arr = check_scores(scores, n) if scores is not None else None
        self.last_info = {}
        if budget == 0:
            return np.empty(0, dtype=np.int64)
        picks = np.asarray(self._select(emb, budget, chosen, score_arr, int(seed)), dtype=np.int64)
        _assert_valid_picks(picks, budget, chosen, n, self.name)
        return picks

    def _inputs(self, embeddings, n_rows: int | None) -> np.ndarray:
        """The checked embeddings; for a selector that needs none, an (N, 0) array of the pool's length."""
        if isinstance(embeddings, (bool, int, np.integer)):
            raise TypeError(f"selector '{self.name}': embeddings must be an array; pass the pool size as n_rows=")
        if self.needs_embeddings:
            if embeddings is None:
                raise UserError(f"selector '{self.name}' needs embeddings")
            emb = check_embeddings(embeddings)
        else:
            if embeddings is not None:
                n = len(embeddings)
            elif n_rows is not None:
                n = int(n_rows)
            else:
                raise TypeError(f"selector '{self.name}': give embeddings (any array, one row per pool row) or n_rows")
            emb = np.empty((n, 0), dtype=np.float32)
        if n_rows is not None and n_rows != len(emb):
            raise UserError(f"selector '{self.name}': {len(emb)} rows of embeddings, but the pool has {n_rows} rows")
        return emb

    def _select(self, embeddings, budget: int, already_selected: np.ndarray, scores, seed: int) -> np.ndarray:
        raise NotImplementedError


def parse_params(name: str, model: type[BaseModel], params: dict) -> BaseModel:
    """Validate selector (or scorer) parameters. Every problem at once, one line each: unknown keys with a
    did-you-mean and the valid ones, then each bad value."""
    valid = sorted(model.model_fields)
    lines = [
        f"selector '{name}' has no parameter '{key}'{did_you_mean(key, valid)};"
        f" valid parameters: {', '.join(valid) or 'none'}"
        for key in params
        if key not in model.model_fields
    ]
    known = {key: value for key, value in params.items() if key in model.model_fields}
    try:
        validated = model(**known)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            lines.append(f"selector '{name}' parameter '{where}': {err['msg']} (got {err.get('input')!r})")
    if lines:
        raise UserError("\n".join(lines))
    return validated


def check_embeddings(embeddings) -> np.ndarray:
    """A 2-D float array with no NaN/inf (names the first bad rows otherwise). Memmaps stay memmaps."""
    emb = embeddings if isinstance(embeddings, np.ndarray) else np.asarray(embeddings)
    if emb.ndim != 2:
        raise UserError(f"embeddings must be a 2-D array (rows x dims), got shape {emb.shape}")
    if len(emb) == 0:
        raise UserError("the pool is empty: there is nothing to select from")
    if not np.issubdtype(emb.dtype, np.floating):
        emb = emb.astype(np.float32)
    bad = nonfinite_rows(emb)
    if len(bad):
        raise UserError(f"embeddings hold NaN or inf in {len(bad)} row(s), first: {bad[:5].tolist()}")
    return emb


def nonfinite_rows(arr: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Ids of the rows (of a 1-D or 2-D array, memmaps included) holding NaN or inf, read in chunks."""
    bad = []
    for start in range(0, len(arr), chunk):
        block = np.asarray(arr[start : start + chunk])
        finite = np.isfinite(block) if block.ndim == 1 else np.isfinite(block).all(axis=1)
        bad.append(np.flatnonzero(~finite) + start)
    return np.concatenate(bad) if bad else np.empty(0, dtype=np.int64)


def check_scores(scores, n: int) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.shape != (n,):
        raise UserError(f"scores must hold one value per pool row: got shape {arr.shape} for {n} rows")
    bad = nonfinite_rows(arr)
    if len(bad):
        raise UserError(f"scores hold NaN or inf in {len(bad)} row(s), first: {bad[:5].tolist()}")
    return arr


def check_already_selected(already_selected, n: int) -> np.ndarray:
    """Integer row ids, in range and distinct. Floats and boolean masks are refused rather than read as ids
    (a cast would truncate 1.7 to 1, and a mask's True/False would become ids 1/0)."""
    chosen = np.asarray(list(already_selected) if not isinstance(already_selected, np.ndarray) else already_selected)
    chosen = chosen.ravel()
    if chosen.dtype == np.bool_:
        raise UserError("already_selected must hold row ids, not a boolean mask: pass np.flatnonzero(mask)")
    if len(chosen) and not np.issubdtype(chosen.dtype, np.integer):
        raise UserError(f"already_selected must hold integer row ids, got {chosen.dtype} values such as {chosen[0]!r}")
    chosen = chosen.astype(np.int64, copy=False)
    if len(chosen) and (chosen.min() < 0 or chosen.max() >= n):
        raise UserError(f"already_selected holds ids outside the pool of {n} rows")
    if len(np.unique(chosen)) != len(chosen):
        raise UserError("already_selected holds repeated ids")
    return chosen


def check_budget(budget, available: int, name: str) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise UserError(f"budget must be an integer, got {budget!r}")
    if budget < 0:
        raise UserError(f"budget must be >= 0, got {budget}")
    if budget > available:
        raise UserError(f"selector '{name}': budget {budget} is larger than the {available} rows not yet selected")
    return int(budget)


def _assert_valid_picks(picks: np.ndarray, budget: int, chosen: np.ndarray, n: int, name: str) -> None:
    """Guard against selector bugs: the contract is checked on every call, it is cheap."""
    if picks.shape != (budget,):
        raise RuntimeError(f"selector '{name}' returned {picks.shape} picks, expected ({budget},)")
    if len(picks) and (picks.min() < 0 or picks.max() >= n):
        raise RuntimeError(f"selector '{name}' returned ids outside the pool")
    if len(np.unique(picks)) != len(picks) or np.isin(picks, chosen).any():
        raise RuntimeError(f"selector '{name}' returned repeated or already selected ids")
