"""`full`: every row not selected yet (the train-on-everything baseline). It needs no embeddings."""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from .base import Selector, check_already_selected
from .registry import register


def _pool_size(embeddings) -> int:
    if isinstance(embeddings, (int, np.integer)):
        return int(embeddings)
    return len(embeddings)


@register
class FullSelector(Selector):
    name = "full"
    description = "every row not selected yet, in pool order (the full-data baseline); the budget must be all of them"
    needs_embeddings = False

    def select(self, embeddings, budget, already_selected=(), scores=None, seed=0) -> np.ndarray:
        remaining = _pool_size(embeddings) - len(check_already_selected(already_selected, _pool_size(embeddings)))
        if isinstance(budget, (int, np.integer)) and not isinstance(budget, bool) and budget != remaining:
            raise UserError(
                f"selector 'full' takes every remaining row: the budget must be {remaining} (the rows not yet "
                f"selected), got {budget}; use another selector to pick a subset"
            )
        return super().select(embeddings, budget, already_selected, scores, seed)

    def _select(self, embeddings, budget, already_selected, scores, seed):
        mask = np.ones(_pool_size(embeddings), dtype=bool)
        mask[already_selected] = False
        return np.flatnonzero(mask)
