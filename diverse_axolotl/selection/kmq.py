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

from typing import Annotated, Optional

import numpy as np
import torch
from pydantic import Field

from .base import Selector
from .kmeans import KMeansKnobs, kmeans, kmeans_info
from .registry import register


# -- quotas ---------------------------------------------------------------------------------------------------
def largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to `weights` summing exactly to `total` (Hamilton's method; ties: lower index)."""
    w = np.asarray(weights, dtype=np.float64)
    out = np.zeros(len(w), dtype=np.int64)
    if total <= 0 or w.sum() <= 0:
        return out
    exact = w / w.sum() * total
    out = np.floor(exact).astype(np.int64)
    frac = exact - out
    left = total - int(out.sum())
    if left > 0:
        eligible = np.flatnonzero(w > 0)
        order = eligible[np.argsort(-frac[eligible], kind="stable")]
        out[order[:left]] += 1
    elif left < 0:  # floating point put a floor one too high somewhere
        order = np.argsort(frac, kind="stable")
        order = order[out[order] > 0]
        out[order[:-left]] -= 1
    return out


def capped_shares(weights: np.ndarray, total: float, available: np.ndarray) -> np.ndarray:
    """Water-filling: real shares min(available, lam * weight) summing to `total` (needs weights > 0 wherever
    available > 0, and total <= available.sum()). Clusters are capped in order of available / weight; the
    rest share what is left in proportion to their weights."""
    shares = np.zeros(len(weights))
    left, open_ = float(total), np.ones(len(weights), dtype=bool)
    for i in np.argsort(available / weights, kind="stable"):  # the cluster that caps first comes first
        fair = weights[i] / weights[open_].sum() * left
        if fair < available[i]:
            break
        shares[i], left, open_[i] = available[i], left - available[i], False
    shares[open_] = weights[open_] / weights[open_].sum() * left if open_.any() and left > 0 else 0.0
    return shares


def round_shares(shares: np.ndarray, total: int, available: np.ndarray) -> np.ndarray:
    """Integers within one of `shares`, summing to `total`, none above `available`: floors, then one more row for
    the largest fractional parts among the clusters with room (ties: lower index)."""
    out = np.minimum(np.floor(shares + 1e-9).astype(np.int64), available)
    left = total - int(out.sum())
    if left >= 0:
        frac = np.where(out < available, shares - out, -np.inf)
        out[np.argsort(-frac, kind="stable")[:left]] += 1
    else:  # a share a hair below an integer was floored up (float rounding): take those rows back
        frac = np.where(out > 0, shares - out, np.inf)
        out[np.argsort(frac, kind="stable")[:-left]] -= 1
    return out


def proportional_quotas(sizes: np.ndarray, budget: int, available: np.ndarray) -> np.ndarray:
    """Per-cluster quotas proportional to `sizes`, summing exactly to `budget`, none above `available`.

    Water-filling: the exact capped proportional share of cluster c is min(available_c, lam * size_c) with lam set
    so the shares sum to the budget (a cluster that cannot take its share gives all its rows and the others
    share the rest in proportion to their sizes). Each quota is that share rounded down or up (largest remainder,
    ties to the lower cluster id), so every quota is within one row of it. Clusters of size 0 only receive rows
    when the clusters with positive size are full; they then share the rest in proportion to their free rows.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    available = np.asarray(available, dtype=np.int64)
    if sizes.shape != available.shape:
        raise ValueError("sizes and available must have the same length")
    if (sizes < 0).any() or (available < 0).any():
        raise ValueError("sizes and available must be >= 0")
    if budget > available.sum():
        raise ValueError(f"budget {budget} exceeds the {available.sum()} available rows")
    budget = int(budget)
    positive = (sizes > 0) & (available > 0)
    room_positive = int(available[positive].sum())
    shares = np.zeros(len(sizes))
    if budget <= room_positive:
        shares[positive] = capped_shares(sizes[positive], budget, available[positive])
    else:  # every cluster with positive size gives all its rows; the zero-size ones share the rest
        shares[positive] = available[positive]
        rest = ~positive & (available > 0)
        shares[rest] = capped_shares(available[rest].astype(np.float64), budget - room_positive, available[rest])
    return round_shares(shares, budget, available)


def top_keys_per_cluster(assignment: np.ndarray, keys: np.ndarray, quotas: np.ndarray, eligible=None) -> np.ndarray:
    """Indices of the `quotas[c]` eligible rows with the largest keys in each cluster c (ties: lower index).

    Returned round-robin: every cluster's best row (by cluster id), then every cluster's second best, ...
    """
    idx = np.arange(len(assignment)) if eligible is None else np.flatnonzero(eligible)
    clusters = assignment[idx]
    order = np.lexsort((idx, -keys[idx], clusters))  # by cluster, then key descending, then index
    idx, clusters = idx[order], clusters[order]
    rank = np.arange(len(idx)) - np.searchsorted(clusters, clusters, side="left")
    take = rank < quotas[clusters]
    idx, clusters, rank = idx[take], clusters[take], rank[take]
    return idx[np.lexsort((clusters, rank))]


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
    return best[0], best[1].assignment, scores, best[1].objective


def cluster_pool(emb, seed: int, p, info: Optional[dict] = None) -> tuple[int, np.ndarray]:
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
    k_candidates: Optional[list[Annotated[int, Field(ge=2)]]] = Field(
        None, min_length=1, description="if set, try each k (>= 2) and keep the best by silhouette (overrides n_clusters)"
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
