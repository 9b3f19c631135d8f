"""`full`: every row not selected yet (the train-on-everything baseline). It needs no embeddings."""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from .base import Selector, check_already_selected
from .registry import register


@register
class FullSelector(Selector):
    """Needs no embeddings: give the pool size as `n_rows` (or any array with one row per pool row)."""

    name = "full"
    description = "every row not selected yet, in pool order (the full-data baseline); the budget must be all of them"
    needs_embeddings = False

    def select(self, embeddings, budget, already_selected=(), scores=None, seed=0, n_rows=None) -> np.ndarray:
        n = len(self._inputs(embeddings, n_rows))
        remaining = n - len(check_already_selected(already_selected, n))
        if isinstance(budget, (int, np.integer)) and not isinstance(budget, bool) and budget != remaining:
            raise UserError(
                f"selector 'full' takes every remaining row: the budget must be {remaining} (the rows not yet "
                f"selected), got {budget}; use another selector to pick a subset"
            )
        return super().select(embeddings, budget, already_selected, scores, seed, n_rows)

    def _select(self, embeddings, budget, already_selected, scores, seed):
        mask = np.ones(len(embeddings), dtype=bool)
        mask[already_selected] = False
        return np.flatnonzero(mask)
