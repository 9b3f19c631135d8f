"""Per-cluster quotas and draws, shared by the clustering selectors (kmeans_random, kmq, iterative_kmq).

`proportional_quotas` splits a budget over clusters in proportion to weights (cluster sizes, or iterative kMQ's
cluster weights), capped at each cluster's free rows, exactly: water-filling, then largest-remainder rounding.
`top_keys_per_cluster` takes each cluster's quota of rows by a key (Gumbel noise: uniform or softmax draws).
"""

from __future__ import annotations

import numpy as np


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
