"""kMQ, the k-means-quality sampler of Diversify and Conquer (Yu et al.), as the paper states it.

1. Cluster the whole pool with k-means (`n_clusters`, or the best of `k_candidates` by silhouette on a sample),
   started from k-means++ seeds (`kmeans.kmeans`); the objective goes to `last_info["kmeans"]`.
2. Split the budget over the clusters in proportion to cluster size, never more than a cluster's rows not yet
   selected: `proportional_quotas` water-fills (a cluster that cannot take its share gives all its rows and the
   others share the rest in proportion to their sizes) and rounds by the largest remainder, so the quotas sum
   exactly to the budget and each is within one row of its exact capped proportional share. (Cluster size counts
   the whole pool; with nothing selected yet this is the plain proportional split.)
3. Inside each cluster draw its quota without replacement with probability proportional to
   softmax(score / temperature) over the cluster's unselected rows; uniformly when no scores are given. Sequential
   draws without replacement are done exactly with the Gumbel-top-k trick: the rows with the largest
   score / temperature + Gumbel noise (numpy `default_rng(seed)`).

Picks come round-robin over the clusters: every cluster's first draw (by cluster id), then every second draw, ...
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from .base import Selector
from .kmeans import KMeansKnobs, kmeans, kmeans_info
from .quotas import largest_remainder, proportional_quotas, top_keys_per_cluster  # noqa: F401  (re-exported)
from .registry import register


# -- choosing k -----------------------------------------------------------------------------------------------
def silhouette(x: torch.Tensor, labels: np.ndarray) -> float:
    """Mean silhouette of the rows of `x` (Euclidean); rows alone in their cluster score 0. -1 with < 2 clusters."""
    _, lab = np.unique(labels, return_inverse=True)
    k = int(lab.max()) + 1
    if k < 2:
        return -1.0
    dist = torch.cdist(x, x).double()
    onehot = torch.zeros(len(lab), k, dtype=torch.float64)
    onehot[torch.arange(len(lab)), torch.as_tensor(lab)] = 1.0
    counts = onehot.sum(0)
    sums = dist @ onehot  # (m, k): summed distance of each row to each cluster
    own = torch.as_tensor(lab)
    own_count = counts[own]
    a = sums[torch.arange(len(lab)), own] / (own_count - 1).clamp(min=1)
    mean_other = sums / counts[None, :]
    mean_other[torch.arange(len(lab)), own] = float("inf")
    b = mean_other.min(1).values
    s = (b - a) / torch.maximum(a, b).clamp(min=1e-12)
    s[own_count <= 1] = 0.0
    return float(s.mean())


def run_kmeans(x, k: int, seed: int, knobs):
    """`kmeans` with a selector's knobs (`init` defaults to k-means++ for params models without the field)."""
    init = getattr(knobs, "init", "kmeans++")
    return kmeans(x, k, seed, knobs.niter, knobs.nredo, knobs.max_points_per_centroid, init)


def choose_k(x: np.ndarray, candidates, seed: int, sample: int, knobs) -> tuple[int, np.ndarray, dict, float]:
    """The candidate k whose clustering of `x` has the best silhouette on a seeded sample of rows (ties: smaller k);
    returns k, its assignment, every candidate's silhouette and the chosen clustering's k-means objective."""
    n = len(x)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    xs = torch.as_tensor(np.asarray(x[rows], dtype=np.float32))
    best = None
    scores = {}
    for k in sorted({min(int(c), n) for c in candidates}):
        result = run_kmeans(x, k, seed, knobs)
        scores[k] = silhouette(xs, result.assignment[rows])
        if best is None or scores[k] > scores[best[0]]:
            best = (k, result)
    assert best is not None  # at least one candidate
    return best[0], best[1].assignment, scores, best[1].objective


def cluster_pool(emb, seed: int, p, info: dict | None = None) -> tuple[int, np.ndarray]:
    """k and the k-means assignment of every pool row, with k from `n_clusters` or chosen among `k_candidates`.
    When `info` is a dict, the k-means objective (and the silhouettes, when k was chosen) are written into it."""
    x = np.ascontiguousarray(emb, dtype=np.float32)
    if getattr(p, "k_candidates", None):
        k, assignment, silhouettes, objective = choose_k(x, p.k_candidates, seed, p.silhouette_sample, p)
        extra = {"silhouettes": {str(c): s for c, s in silhouettes.items()}}
    else:
        k = min(p.n_clusters, len(x))
        _, assignment, objective = run_kmeans(x, k, seed, p)
        extra = {}
    if info is not None:
        info.update(kmeans_info(k, objective, p), **extra)
    return k, assignment


# -- the selector ---------------------------------------------------------------------------------------------
class KMQParams(KMeansKnobs):
    n_clusters: int = Field(64, gt=0, description="number of k-means clusters (capped at the pool size)")
    k_candidates: list[Annotated[int, Field(ge=2)]] | None = Field(
        None,
        min_length=1,
        description="if set, try each k (>= 2) and keep the best by silhouette (overrides n_clusters)",
    )
    silhouette_sample: int = Field(2000, ge=10, description="rows sampled to compute silhouettes for k_candidates")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the scores inside a cluster")


@register
class KMQSelector(Selector):
    name = "kmq"
    description = "Diversify and Conquer kMQ: quotas proportional to k-means cluster size, softmax(score/T) sampling"
    Params = KMQParams
    scores = "optional"

    def _select(self, embeddings, budget, already_selected, scores, seed):
        p = self.params
        n = len(embeddings)
        info: dict = {}
        k, assignment = cluster_pool(embeddings, seed, p, info)
        self.last_info = {"kmeans": info}
        eligible = np.ones(n, dtype=bool)
        eligible[already_selected] = False
        sizes = np.bincount(assignment, minlength=k)
        available = np.bincount(assignment[eligible], minlength=k)
        quotas = proportional_quotas(sizes, budget, available)
        logits = np.zeros(n) if scores is None else scores / p.temperature
        keys = logits + np.random.default_rng(seed).gumbel(size=n)
        return top_keys_per_cluster(assignment, keys, quotas, eligible)
