"""QDIT: greedy maximisation of quality plus facility-location diversity.

    f(S) = (1 - alpha) * sum_i max_{j in S} sim(i, j)  +  alpha * sum_{j in S} quality(j)

with sim(i, j) = (cos(i, j) + 1) / 2 in [0, 1] between non-zero rows and quality = the scores min-max normalised
to [0, 1] (all 0 without scores, or when they are all equal). i runs over every pool row, or over a seeded random
subsample of `sample_rows` rows to bound the cost on large pools. The already selected rows start in S; the max over an
empty S is 0. Each pick is the row with the largest marginal gain (ties: lowest row id). An all-zero row has no
direction: it has similarity 1 to every all-zero row (itself included) and 0, the bottom of the scale, to every
non-zero row, so one zero row covers all of them and nothing else covers them. `similarity_vectors` builds
vectors whose dot products are exactly these similarities, so every similarity is one matrix product.

f is monotone submodular, so a gain computed earlier is an upper bound on the gain now. `lazy=True` keeps those
stale bounds in a priority queue and only recomputes the gains of the candidates that reach the top; a candidate
whose fresh gain is still on top is the greedy pick. Gains are always computed for fixed blocks of `block_rows`
candidates (rows [b * block_rows, (b + 1) * block_rows)) by one routine, in plain greedy (every block, every step)
and in lazy greedy (the block of the candidate on top), so the two see bit-identical numbers and lazy greedy
returns exactly the picks of plain greedy, ties included. The coverage update after a pick is shared too, and
it only ever raises coverage, so in floating point as in exact arithmetic a stale gain is an upper bound.
"""

from __future__ import annotations

import heapq
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..models import resolve_device
from .base import Selector
from .deita import normalise
from .registry import register


class QDITParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of quality against facility-location diversity")
    lazy: bool = Field(True, description="lazy greedy (same picks as plain greedy, far fewer gain evaluations)")
    sample_rows: int | None = Field(
        None, gt=0, description="measure coverage on this many seeded random rows instead of the whole pool"
    )
    block_rows: int = Field(64, gt=0, description="candidates whose gains are computed together")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where similarities are computed")


def similarity_vectors(emb, device: torch.device) -> torch.Tensor:
    """(n, d + 2) rows whose dot products are the similarities: [u / sqrt 2, 1 / sqrt 2, 0] for a non-zero row with
    unit vector u ((cos + 1) / 2 between two of them), [0, ..., 0, 1] for an all-zero row."""
    unit = normalise(emb, device)  # last column: 1 for all-zero rows
    zero = unit[:, -1:]
    return torch.cat([unit[:, :-1] * 0.5**0.5, (1 - zero) * 0.5**0.5, zero], dim=1)


def normalised_quality(scores, n: int) -> np.ndarray:
    if scores is None:
        return np.zeros(n)
    lo, hi = float(scores.min()), float(scores.max())
    return (scores - lo) / (hi - lo) if hi > lo else np.zeros(n)


class Gains:
    """Marginal gains of candidate blocks given the current coverage; identical arithmetic for every caller."""

    def __init__(self, vectors: torch.Tensor, rows: torch.Tensor, quality: np.ndarray, alpha: float, block: int):
        self.vectors, self.ref = vectors, vectors[rows]  # candidates, and the rows whose coverage is measured
        self.quality = torch.as_tensor(quality, dtype=torch.float32, device=vectors.device)
        self.alpha, self.block = alpha, block
        self.cover = torch.zeros(len(rows), dtype=torch.float32, device=vectors.device)  # max sim to S, per ref row

    def sims(self, b: int) -> torch.Tensor:
        """(block, refs) similarities of block b's candidates, always computed with the same shapes."""
        s = b * self.block
        return self.vectors[s : s + self.block] @ self.ref.T

    def block_gains(self, b: int) -> np.ndarray:
        gain = (self.sims(b) - self.cover).clamp_(min=0).sum(1)
        s = b * self.block
        return ((1.0 - self.alpha) * gain + self.alpha * self.quality[s : s + self.block]).cpu().double().numpy()

    def add(self, ids) -> None:
        """Put rows `ids` into S: coverage <- max(coverage, their similarities)."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        for s in range(0, len(ids), self.block):
            chunk = torch.as_tensor(ids[s : s + self.block], device=self.vectors.device)
            sims = (self.vectors[chunk] @ self.ref.T).amax(0)
            torch.maximum(self.cover, sims, out=self.cover)


def greedy(g: Gains, n: int, budget: int, eligible: np.ndarray) -> np.ndarray:
    nblocks = -(-n // g.block)
    picks = np.empty(budget, dtype=np.int64)
    for t in range(budget):
        gains = np.concatenate([g.block_gains(b) for b in range(nblocks)])
        gains[~eligible] = -np.inf
        j = int(np.argmax(gains))  # first maximum: lowest id
        picks[t] = j
        eligible[j] = False
        g.add(j)
    return picks


def lazy_greedy(g: Gains, n: int, budget: int, eligible: np.ndarray) -> np.ndarray:
    nblocks = -(-n // g.block)
    fresh_at = np.zeros(n, dtype=np.int64)  # step at which each candidate's bound was computed
    heap = []
    for b in range(nblocks):
        gains = g.block_gains(b)
        for r, value in enumerate(gains):
            j = b * g.block + r
            if eligible[j]:
                heap.append((-value, j, 0))
    heapq.heapify(heap)
    picks = np.empty(budget, dtype=np.int64)
    for t in range(budget):
        while True:
            neg, j, stamp = heapq.heappop(heap)
            if not eligible[j] or stamp != fresh_at[j]:
                continue  # picked already, or superseded by a newer bound
            if stamp == t:
                break  # fresh and on top of every upper bound: the greedy pick
            b = j // g.block
            gains = g.block_gains(b)  # refresh its whole block: a small matrix product, and more bounds fresh
            for r, value in enumerate(gains):
                i = b * g.block + r
                if eligible[i]:
                    fresh_at[i] = t
                    heapq.heappush(heap, (-value, i, t))
        picks[t] = j
        eligible[j] = False
        g.add(j)
    return picks


@register
class QDITSelector(Selector):
    name = "qdit"
    description = "QDIT: greedy (lazy) maximisation of facility-location diversity plus normalised quality"
    Params = QDITParams
    scores = "optional"

    def _select(self, embeddings, budget, already_selected, scores, seed):
        p = self.params
        n = len(embeddings)
        device = resolve_device(p.device)
        vectors = similarity_vectors(embeddings, device)
        if p.sample_rows is not None and p.sample_rows < n:
            rows = np.sort(np.random.default_rng(seed).choice(n, size=p.sample_rows, replace=False))
        else:
            rows = np.arange(n)
        g = Gains(vectors, torch.as_tensor(rows, device=device), normalised_quality(scores, n), p.alpha, p.block_rows)
        g.add(already_selected)
        eligible = np.ones(n, dtype=bool)
        eligible[already_selected] = False
        return (lazy_greedy if p.lazy else greedy)(g, n, budget, eligible)
