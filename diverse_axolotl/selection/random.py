"""Uniform random sampling without replacement: the baseline every selector must beat."""

from __future__ import annotations

import numpy as np

from .base import Selector
from .registry import register


@register
class RandomSelector(Selector):
    """Needs no embeddings: give the pool size as `n_rows` (or any array with one row per pool row)."""

    name = "random"
    description = "uniform random rows, seeded (the baseline; also DiverseEvol's round-0 seed set)"
    needs_embeddings = False

    def _select(self, embeddings, budget, already_selected, scores, seed):
        available = np.setdiff1d(np.arange(len(embeddings)), already_selected, assume_unique=True)
        return np.random.default_rng(seed).choice(available, size=budget, replace=False)
