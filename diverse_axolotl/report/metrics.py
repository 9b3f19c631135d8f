"""Diversity of a subset in an embedding space: Vendi score (cosine kernel), mean nearest-neighbour distance and
coverage radius (Euclidean, the distance k-center minimises), plus the 2-D PCA of the embedding maps."""

from __future__ import annotations

import numpy as np


def _as_float_matrix(emb) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array, not shape {emb.shape}")
    return emb


def vendi_score(emb) -> float:
    """Vendi score of rows under the cosine kernel: exp(-sum l log l), l the eigenvalues of K/k, K_ij = cos(x_i, x_j).

    k identical rows score 1, k orthogonal rows score k. Computed from the d x d matrix X^T X / k, which has the
    same non-zero eigenvalues as K/k (all-zero rows are treated as orthogonal to everything, with K_ii = 1).
    """
    x = _as_float_matrix(emb)
    k = x.shape[0]
    if k == 0:
        return float("nan")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    gram = unit.T @ unit if unit.shape[1] <= k else unit @ unit.T
    eig = np.linalg.eigvalsh(gram / k)
    eig = np.concatenate([eig, np.full(int(zero.sum()), 1.0 / k)])  # each all-zero row: its own eigenvalue 1/k
    eig = eig[eig > 1e-12]
    return float(np.exp(-np.sum(eig * np.log(eig))))


def nearest_distances(a, b, exclude_self: bool = False, chunk: int = 2048) -> np.ndarray:
    """For each row of a, the Euclidean distance to its nearest row of b (with exclude_self, a is b and row i skips
    itself). Chunked: memory O(chunk x len(b))."""
    a, b = _as_float_matrix(a), _as_float_matrix(b)
    b_sq = np.einsum("ij,ij->i", b, b)
    out = np.empty(a.shape[0])
    for start in range(0, a.shape[0], chunk):
        part = a[start : start + chunk]
        d2 = np.einsum("ij,ij->i", part, part)[:, None] + b_sq[None, :] - 2.0 * part @ b.T
        if exclude_self:
            rows = np.arange(part.shape[0])
            d2[rows, start + rows] = np.inf
        out[start : start + chunk] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


def mean_nn_distance(emb) -> float:
    """Mean over rows of the Euclidean distance to the nearest other row (nan for fewer than two rows)."""
    x = _as_float_matrix(emb)
    if x.shape[0] < 2:
        return float("nan")
    return float(nearest_distances(x, x, exclude_self=True).mean())


def coverage_radius(pool, selected) -> float:
    """max over pool rows of the Euclidean distance to the nearest selected row (what k-center minimises)."""
    sel = _as_float_matrix(selected)
    if sel.shape[0] == 0:
        return float("nan")
    return float(nearest_distances(pool, sel).max())


def diversity(pool_emb, indices) -> dict[str, float]:
    subset = np.asarray(pool_emb[np.asarray(indices, dtype=np.int64)], dtype=np.float64)
    return {
        "vendi": vendi_score(subset),
        "nn_distance": mean_nn_distance(subset),
        "coverage": coverage_radius(pool_emb, subset),
    }


def pca_2d(emb) -> np.ndarray:
    """Rows projected on the two leading principal components (from the d x d covariance)."""
    x = _as_float_matrix(emb)
    centred = x - x.mean(axis=0, keepdims=True)
    if x.shape[1] < 2:
        return np.hstack([centred, np.zeros((x.shape[0], 2 - x.shape[1]))])
    _, vecs = np.linalg.eigh(centred.T @ centred)
    return centred @ vecs[:, ::-1][:, :2]
