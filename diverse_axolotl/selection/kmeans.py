"""k-means with faiss, shared by the clustering selectors, and two plain k-means selectors.

`kmeans(emb, k, seed, ...)` is the one place the package calls `faiss.Kmeans`: float32 contiguous input, a fixed
seed, the GPU when faiss sees one. Selectors built on it:

* `kmeans_closest`: k = budget clusters over the rows not yet selected; the pick of each cluster is the row nearest
  its centroid. Picks come in order of cluster size, largest first (ties: lower cluster id first). When two
  centroids share a nearest row, the larger cluster (the one earlier in that order) takes it and the other takes
  its next nearest unused row.
* `kmeans_random`: `n_clusters` clusters (default: the budget) over the rows not yet selected, then uniform random
  rows inside each cluster, with per-cluster quotas proportional to cluster size (largest-remainder rounding,
  `kmq.proportional_quotas`). Picks come round-robin over the clusters (every cluster's first pick, then every
  cluster's second, ...).
"""

from __future__ import annotations

from typing import Optional

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .base import Selector
from .registry import register


def kmeans(
    emb,
    k: int,
    seed: int,
    niter: int = 20,
    nredo: int = 1,
    max_points_per_centroid: int = 256,
    spherical: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with faiss: returns (centroids (k, d) float32, assignment (n,) int64).

    `emb` is copied to float32 C-contiguous when it is not already. Training is seeded (`seed`, reduced modulo
    2**31) and runs on every GPU faiss can see, else on the CPU.

    Note that faiss trains on a random subsample of k * max_points_per_centroid rows when the input has more rows
    than that (256 points per centroid by default); every row is still assigned to its nearest centroid afterwards.
    Pass a larger `max_points_per_centroid` to train on more rows.

    With `spherical=True` the centroids are L2-normalised after each iteration and rows are assigned by largest
    inner product; normalise `emb` yourself beforehand for cosine k-means.
    """
    x = np.ascontiguousarray(emb, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"kmeans needs a 2-D array, got shape {x.shape}")
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: k={k} must be between 1 and the number of rows ({n})")
    options = dict(
        niter=int(niter),
        nredo=int(nredo),
        seed=int(seed) % (2**31),
        max_points_per_centroid=int(max_points_per_centroid),
        min_points_per_centroid=1,  # only silences faiss' "too few points" warning; it never changes the result
        spherical=bool(spherical),
        verbose=False,
    )
    if faiss.get_num_gpus() > 0:
        options["gpu"] = True
    km = faiss.Kmeans(d, int(k), **options)
    km.train(x)
    _, assignment = km.index.search(x, 1)  # after training the index holds exactly the k centroids
    return np.asarray(km.centroids, dtype=np.float32), assignment.ravel().astype(np.int64)


def available_rows(n: int, already_selected: np.ndarray) -> np.ndarray:
    """Sorted ids of the rows not in `already_selected`."""
    mask = np.ones(n, dtype=bool)
    mask[already_selected] = False
    return np.flatnonzero(mask)


class KMeansKnobs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    niter: int = Field(20, gt=0, description="k-means iterations")
    nredo: int = Field(1, gt=0, description="k-means restarts (the clustering with the lowest objective is kept)")
    max_points_per_centroid: int = Field(
        256, gt=0, description="faiss trains on at most k x this many rows (a random subsample); all rows are assigned"
    )


class KMeansClosestParams(KMeansKnobs):
    pass


class KMeansRandomParams(KMeansKnobs):
    n_clusters: Optional[int] = Field(None, gt=0, description="number of clusters (default: the budget)")


def nearest_unused(index_data: np.ndarray, centroids: np.ndarray, neighbours: int = 8) -> np.ndarray:
    """For each centroid in order, the nearest row of `index_data` not taken by an earlier centroid."""
    n = len(index_data)
    index = faiss.IndexFlatL2(index_data.shape[1])
    index.add(index_data)
    m = min(neighbours, n)
    _, nn = index.search(np.ascontiguousarray(centroids, dtype=np.float32), m)
    used = np.zeros(n, dtype=bool)
    out = np.empty(len(centroids), dtype=np.int64)
    for i, row in enumerate(nn):
        free = row[(row >= 0) & ~used[np.maximum(row, 0)]]
        if len(free):
            pick = int(free[0])
        else:  # all m nearest rows already taken: rank every row for this centroid (rare)
            dist = ((index_data - centroids[i]) ** 2).sum(1)
            dist[used] = np.inf
            pick = int(np.argmin(dist))
        used[pick] = True
        out[i] = pick
    return out


@register
class KMeansClosestSelector(Selector):
    name = "kmeans_closest"
    description = "k-means with k = budget on the unselected rows; the row nearest each centroid (largest clusters first)"
    Params = KMeansClosestParams

    def _select(self, embeddings, budget, already_selected, scores, seed):
        p = self.params
        avail = available_rows(len(embeddings), already_selected)
        x = np.ascontiguousarray(np.asarray(embeddings)[avail], dtype=np.float32)
        centroids, assignment = kmeans(x, budget, seed, p.niter, p.nredo, p.max_points_per_centroid)
        sizes = np.bincount(assignment, minlength=budget)
        order = np.argsort(-sizes, kind="stable")
        return avail[nearest_unused(x, centroids[order])]


@register
class KMeansRandomSelector(Selector):
    name = "kmeans_random"
    description = "k-means on the unselected rows, then uniform random rows per cluster, quotas proportional to size"
    Params = KMeansRandomParams

    def _select(self, embeddings, budget, already_selected, scores, seed):
        from .kmq import proportional_quotas, top_keys_per_cluster  # kmq imports this module: import late

        p = self.params
        avail = available_rows(len(embeddings), already_selected)
        k = min(p.n_clusters or budget, len(avail))
        x = np.asarray(embeddings)[avail]
        _, assignment = kmeans(x, k, seed, p.niter, p.nredo, p.max_points_per_centroid)
        sizes = np.bincount(assignment, minlength=k)
        quotas = proportional_quotas(sizes, budget, sizes)
        keys = np.random.default_rng(seed).gumbel(size=len(avail))  # uniform order inside each cluster
        return avail[top_keys_per_cluster(assignment, keys, quotas)]
