"""Uniform random sampling without replacement: the baseline every selector must beat."""

from __future__ import annotations

import numpy as np

from .base import Selector
from .registry import register


@register
class RandomSelector(Selector):
    name = "random"
    description = "uniform random rows, seeded (the baseline; also DiverseEvol's round-0 seed set)"
    needs_embeddings = False

    def _select(self, embeddings, budget, already_selected, scores, seed):
        n = embeddings if isinstance(embeddings, (int, np.integer)) else len(embeddings)
        available = np.setdiff1d(np.arange(n), already_selected, assume_unique=True)
        return np.random.default_rng(seed).choice(available, size=budget, replace=False)
