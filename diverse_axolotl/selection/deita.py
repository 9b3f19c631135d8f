"""Deita's score-first diversity filter (Repr Filter).

Rows are visited in descending score (ties: lower row id first; pool order when no scores are given). A row is
kept only if its cosine similarity to every kept row, the already selected rows included, is below `threshold`;
the scan stops once `budget` rows are kept. When the whole pool has been scanned with fewer rows kept, it is a
UserError: the threshold is too strict for this pool and budget.

Rows are L2-normalised once. An all-zero row has no direction; here all-zero rows are identical to each other
(cosine 1) and orthogonal to every non-zero row (cosine 0), so at most one of them is kept. This is done with
one extra column, 1 for all-zero rows and 0 otherwise, next to the unit vectors. Kept vectors grow in one
preallocated torch matrix. Candidates are screened a block at a time against the rows kept before the block
(one matrix product), and the survivors then one by one against the rows kept inside the block (one
matrix-vector product each), which gives exactly the sequential rule.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserError
from ..models import resolve_device
from .base import Selector
from .registry import register


class DeitaParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float = Field(
        0.9, gt=-1, le=1, description="a row is skipped when its cosine similarity to a kept row is >= this"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where similarities are computed")
    block_rows: int = Field(1024, gt=0, description="candidates screened together against the kept rows")


def normalise(emb, device: torch.device, chunk: int = 65536) -> torch.Tensor:
    """(n, d + 1) float32 on `device`: each non-zero row divided by its L2 norm, then 0; an all-zero row is zeros
    then 1. Dot products are cosines, with zero rows at cosine 1 to each other and 0 to non-zero rows."""
    out = torch.zeros((len(emb), emb.shape[1] + 1), dtype=torch.float32, device=device)
    for s in range(0, len(emb), chunk):
        # a copy (np.array): emb may be a read-only memmap, which torch warns about
        block = torch.from_numpy(np.array(emb[s : s + chunk], dtype=np.float32)).to(device)
        norm = block.norm(dim=1, keepdim=True)
        out[s : s + chunk, :-1] = block / torch.where(norm > 0, norm, torch.ones_like(norm))
        out[s : s + chunk, -1] = (norm[:, 0] == 0).float()
    return out


def repr_filter(
    unit: torch.Tensor, order: np.ndarray, budget: int, already_selected: np.ndarray, threshold: float, block: int
) -> np.ndarray:
    """Kept row ids in scan order (at most `budget`), from the unit vectors `unit` visited in `order`."""
    kept_vecs = torch.empty(len(already_selected) + budget, unit.shape[1], dtype=unit.dtype, device=unit.device)
    m = len(already_selected)
    if m:
        kept_vecs[:m] = unit[torch.as_tensor(already_selected, device=unit.device)]
    kept: list[int] = []
    for s in range(0, len(order), block):
        ids = order[s : s + block]
        cand = unit[torch.as_tensor(ids, device=unit.device)]
        if m:
            ok = ((cand @ kept_vecs[:m].T).amax(1) < threshold).cpu().numpy()
        else:
            ok = np.ones(len(ids), dtype=bool)
        start = m  # rows kept from here on are checked one candidate at a time
        for j in np.flatnonzero(ok):
            if m > start and float((kept_vecs[start:m] @ cand[j]).max()) >= threshold:
                continue
            kept_vecs[m] = cand[j]
            m += 1
            kept.append(int(ids[j]))
            if len(kept) == budget:
                return np.asarray(kept, dtype=np.int64)
    return np.asarray(kept, dtype=np.int64)


@register
class DeitaSelector(Selector):
    name = "deita"
    description = "Deita score-first filter: best-scored rows whose cosine to every kept row is below a threshold"
    Params = DeitaParams
    scores = "optional"

    def _select(self, embeddings, budget, already_selected, scores, seed):
        p = self.params
        n = len(embeddings)
        eligible = np.ones(n, dtype=bool)
        eligible[already_selected] = False
        if scores is None:
            order = np.flatnonzero(eligible)
        else:
            order = np.argsort(-scores, kind="stable")  # descending, ties: lower row id first
            order = order[eligible[order]]
        unit = normalise(embeddings, resolve_device(p.device))
        kept = repr_filter(unit, order, budget, already_selected, p.threshold, p.block_rows)
        if len(kept) < budget:
            raise UserError(
                f"selector 'deita': only {len(kept)} of the {len(order)} unselected rows have cosine similarity below "
                f"threshold {p.threshold} to every kept row, fewer than the budget {budget}; raise the threshold "
                "(or lower the budget)"
            )
        return kept
