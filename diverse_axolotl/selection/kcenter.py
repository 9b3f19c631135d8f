"""Greedy k-center (farthest-first traversal), the selector of DiverseEvol.

Each pick is the row whose Euclidean distance to its nearest selected row is largest (ties: lowest index); with
nothing selected yet, the first pick is the row farthest from the pool mean. Memory is O(N) beyond the embeddings:
a running vector of squared distances to the nearest selected row, updated with one matrix-vector product per pick,
in chunks of rows so temporaries stay O(chunk x d). The reference code builds an N x N distance matrix instead.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..models import resolve_device
from .base import Selector
from .registry import register


class KCenterParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where distances are computed")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="storage of the embeddings on the device (auto: bfloat16 on cuda, float32 on cpu)"
    )
    project_dim: Optional[int] = Field(None, gt=0, description="project embeddings to this many dims first (off)")
    projection: Literal["random", "pca"] = Field("random", description="how to project when project_dim is set")
    chunk_rows: int = Field(262144, gt=0, description="rows per chunk of the distance update")


def project(emb: np.ndarray, dim: int, how: str, seed: int) -> np.ndarray:
    """Random Gaussian (Johnson-Lindenstrauss) or PCA projection to `dim` dims, float32, seeded."""
    if dim >= emb.shape[1]:
        return np.asarray(emb, dtype=np.float32)
    rng = np.random.default_rng(seed)
    if how == "random":
        basis = rng.standard_normal((emb.shape[1], dim)).astype(np.float32) / np.sqrt(dim)
        mean = 0.0
    else:
        sample = np.asarray(emb[np.sort(rng.choice(len(emb), min(len(emb), 100_000), replace=False))], np.float32)
        mean = sample.mean(0)
        _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
        basis = vt[:dim].T.astype(np.float32)
    out = np.empty((len(emb), dim), dtype=np.float32)
    for start in range(0, len(emb), 65536):
        out[start : start + 65536] = (np.asarray(emb[start : start + 65536], np.float32) - mean) @ basis
    return out


def farthest_first(
    emb,
    budget: int,
    already_selected: np.ndarray,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    chunk_rows: int = 262144,
) -> np.ndarray:
    """The k-center loop over a (N, d) array; returns `budget` ids in pick order."""
    n = len(emb)
    data = torch.tensor(np.asarray(emb, dtype=np.float32)).to(device=device, dtype=dtype)  # a copy: emb may be a read-only memmap
    chunks = [(s, min(s + chunk_rows, n)) for s in range(0, n, chunk_rows)]
    sq_norm = torch.empty(n, dtype=torch.float32, device=device)
    for s, e in chunks:
        sq_norm[s:e] = data[s:e].float().pow(2).sum(1)
    min_dist = torch.full((n,), float("inf"), dtype=torch.float32, device=device)

    def absorb(centers: torch.Tensor) -> None:
        """min_dist <- min(min_dist, squared distance of every row to its nearest row in `centers`)."""
        c = centers.to(dtype)
        c_norm = c.float().pow(2).sum(1)
        for s, e in chunks:
            dots = (data[s:e] @ c.T).float()
            dist = (sq_norm[s:e, None] - 2 * dots + c_norm[None, :]).clamp_(min=0).amin(1)
            torch.minimum(min_dist[s:e], dist, out=min_dist[s:e])

    if len(already_selected):
        idx = torch.as_tensor(already_selected, device=device)
        for s in range(0, len(idx), 1024):
            absorb(data[idx[s : s + 1024]])
        min_dist[idx] = -float("inf")
        first = None
    else:
        mean = torch.zeros(data.shape[1], dtype=torch.float32, device=device)
        for s, e in chunks:
            mean += data[s:e].float().sum(0)
        mean /= n
        absorb(mean[None, :])
        first = int(torch.argmax(min_dist))
        min_dist.fill_(float("inf"))

    picks = torch.empty(budget, dtype=torch.long, device=device)
    for i in range(budget):
        pick = torch.argmax(min_dist) if (i or first is None) else torch.tensor(first, device=device)
        picks[i] = pick
        absorb(data[pick][None, :])
        min_dist[pick] = -float("inf")
    return picks.cpu().numpy()


@register
class KCenterSelector(Selector):
    name = "kcenter"
    description = "greedy k-center / farthest-first (DiverseEvol): each pick maximises distance to the selected set"
    Params = KCenterParams

    def _select(self, embeddings, budget, already_selected, scores, seed):
        p = self.params
        device = resolve_device(p.device)
        dtype = torch.bfloat16 if (p.dtype == "bfloat16" or (p.dtype == "auto" and device.type == "cuda")) else torch.float32
        emb = project(embeddings, p.project_dim, p.projection, seed) if p.project_dim else embeddings
        return farthest_first(emb, budget, already_selected, device, dtype, p.chunk_rows)
