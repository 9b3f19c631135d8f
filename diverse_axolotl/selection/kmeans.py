"""k-means with faiss, shared by the clustering selectors, and two plain k-means selectors.

`kmeans(emb, k, seed, ...)` is the one place the package calls `faiss.Kmeans`: float32 contiguous input, a fixed
seed, the GPU when faiss sees one. By default its initial centroids are k-means++ seeds drawn on the training
rows (faiss alone starts from random rows, and with one run can split a big cluster and merge two small ones);
`nredo` runs keep the lowest objective, which it returns and the selectors record in `last_info["kmeans"]`.
It trains on a sample, then assigns every row (`assign`): under torchrun the assignment is the step that runs on
every rank (`selection.sharded.ShardedAssigner`), with the same chunks and code, so the result does not change.
Selectors built on it:

* `kmeans_closest`: k = budget clusters over the rows not yet selected; the pick of each cluster is the row nearest
  its centroid. Picks come in order of cluster size, largest first (ties: lower cluster id first). When two
  centroids share a nearest row, the larger cluster (the one earlier in that order) takes it and the other takes
  its next nearest unused row.
* `kmeans_random`: `n_clusters` clusters (default: the budget) over the rows not yet selected, then uniform random
  rows inside each cluster, with per-cluster quotas proportional to cluster size (largest-remainder rounding,
  `quotas.proportional_quotas`, no cluster capped since every cluster is all unselected rows). Picks come
  round-robin over the clusters (every cluster's first pick, then every cluster's second, ...).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Literal, NamedTuple

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .base import Selector
from .quotas import proportional_quotas, top_keys_per_cluster
from .registry import register


class KMeansResult(NamedTuple):
    centroids: np.ndarray  # (k, d) float32
    assignment: np.ndarray  # (n,) int64: each row's nearest centroid
    objective: float  # sum over all n rows of the squared distance to the nearest centroid


def kmeans_plus_plus(x, k: int, rng: np.random.Generator) -> np.ndarray:
    """Row ids of `k` k-means++ seeds (Arthur and Vassilvitskii, 2007): the first uniform, each next drawn with
    probability proportional to its squared distance to the nearest seed so far. Distances are computed on rows
    centred by their float64 mean (no cancellation from a shared component); one matrix-vector product per seed."""
    x = np.asarray(x, dtype=np.float64)
    x = (x - x.mean(0)).astype(np.float32)
    sq_norm = np.einsum("ij,ij->i", x, x)
    seeds = np.empty(k, dtype=np.int64)
    nearest = np.full(len(x), np.inf, dtype=np.float32)
    for i in range(k):
        if i == 0:
            j = int(rng.integers(len(x)))
        else:
            cumulative = np.cumsum(nearest, dtype=np.float64)
            if cumulative[-1] > 0:
                j = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
                j = min(j, int(np.flatnonzero(nearest > 0)[-1]))
            else:  # every row coincides with a seed: take an unused row uniformly
                unused = np.setdiff1d(np.arange(len(x)), seeds[:i])
                j = int(unused[rng.integers(len(unused))])
        seeds[i] = j
        dist = np.maximum(sq_norm - 2 * (x @ x[j]) + sq_norm[j], 0)
        np.minimum(nearest, dist, out=nearest)
        nearest[seeds[: i + 1]] = 0
    return seeds


def kmeans(
    emb,
    k: int,
    seed: int,
    niter: int = 20,
    nredo: int = 1,
    max_points_per_centroid: int = 256,
    init: str = "kmeans++",
    rows: np.ndarray | None = None,
) -> KMeansResult:
    """Lloyd's k-means with faiss on `emb` (or its rows `rows`): (centroids (k, d) float32, assignment (n,) int64,
    objective).

    Two steps, so that the second can run sharded (`selection.sharded`): TRAIN on at most k *
    max_points_per_centroid rows (a seeded subsample when there are more), on a GPU when faiss sees one, then
    ASSIGN every row to its nearest centroid (`assign`). Rows are read as float32 where they are needed, so a
    memmap is never loaded whole.

    `init="kmeans++"` (default): the initial centroids are k-means++ seeds drawn on the training rows (numpy,
    `default_rng(seed)`) and handed to faiss. `init="random"`: faiss's own initialisation (k distinct random
    training rows, faiss seed = `seed` mod 2**31) on faiss's own subsample, drawn here with faiss's generator,
    which can split a big cluster and merge two small ones. `nredo` runs are made (new seeds each) and the one
    with the lowest objective is kept. The objective is the sum over ALL rows (not only the training rows) of the
    squared distance to their centroid.
    """
    if not isinstance(emb, np.ndarray):
        emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"kmeans needs a 2-D array, got shape {emb.shape}")
    n = len(emb) if rows is None else len(rows)
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: k={k} must be between 1 and the number of rows ({n})")
    if init not in ("kmeans++", "random"):
        raise ValueError(f"kmeans: init must be 'kmeans++' or 'random', got {init!r}")
    rng = np.random.default_rng(seed)
    cap = k * int(max_points_per_centroid)
    best = None
    for redo in range(int(nredo)):
        if init == "random":  # the rows faiss would subsample itself, in its order (rand_perm seeded by its seed)
            train = take_rows(emb, rows, None if n <= cap else faiss_perm(n, seed + redo)[:cap])
            centroids = train_kmeans(train, k, seed + redo, niter, max_points_per_centroid)
        else:
            train = take_rows(emb, rows, None if n <= cap else np.sort(rng.choice(n, size=cap, replace=False)))
            seeds = kmeans_plus_plus(train, k, rng)
            centroids = train_kmeans(train, k, seed + redo, niter, max_points_per_centroid, seeds)
        del train
        assignment, objective = assign(emb, rows, centroids)
        if best is None or objective < best.objective:
            best = KMeansResult(centroids, assignment, objective)
    assert best is not None  # nredo >= 1
    return best


def take_rows(emb, rows, ids) -> np.ndarray:
    """Rows `ids` (None: all; a slice or an id array) of `emb[rows]`, float32 C-contiguous, reading only those."""
    if rows is not None:
        ids = rows if ids is None else rows[ids]
    return np.ascontiguousarray(emb if ids is None else emb[ids], dtype=np.float32)


def faiss_perm(n: int, seed: int) -> np.ndarray:
    """faiss's `rand_perm(n, seed)`: the order in which `faiss.Kmeans` subsamples its training rows."""
    perm = np.empty(n, dtype=np.int32)
    faiss.rand_perm(faiss.swig_ptr(perm), n, int(seed) % (2**31))  # type: ignore[attr-defined]
    return perm.astype(np.int64)


def train_kmeans(train: np.ndarray, k: int, seed: int, niter: int, max_points_per_centroid: int, init_ids=None):
    """Centroids (k, d) float32 of one faiss k-means run on `train`: from its rows `init_ids`, else from faiss's
    random rows. `train` never exceeds k * max_points_per_centroid rows, so faiss subsamples nothing itself."""
    options = dict(
        niter=int(niter),
        nredo=1,
        seed=int(seed) % (2**31),
        max_points_per_centroid=int(max_points_per_centroid),
        min_points_per_centroid=1,  # only silences faiss' "too few points" warning; it never changes the result
        verbose=False,
    )
    if faiss.get_num_gpus() > 0:
        options["gpu"] = True
    km = faiss.Kmeans(train.shape[1], int(k), **options)
    if init_ids is None:
        km.train(train)
    else:
        km.train(train, init_centroids=np.ascontiguousarray(train[init_ids]))
    return np.asarray(km.centroids, dtype=np.float32)


# -- assignment: the step that runs sharded under torchrun --------------------------------------------------------
ASSIGN_CHUNK = 16384  # rows per faiss search; chunks are the unit ranks share, so results never depend on W

#: Under torchrun, `selection.sharded` sets this to an assigner of the ranks' blocks (see `assign`).
ASSIGNER: ContextVar = ContextVar("kmeans_assigner", default=None)


def assign(emb, rows, centroids: np.ndarray) -> tuple[np.ndarray, float]:
    """(nearest centroid of every row of `emb[rows]`, int64; objective). In one process: `assign_chunks` over all
    chunks. Under a sharded assigner that holds this same array, each rank assigns its own chunks instead; the
    chunks and the code are the same, so the result is identical."""
    hook = ASSIGNER.get()
    if hook is not None and hook.covers(emb):
        return hook(rows, centroids)
    n = len(emb) if rows is None else len(rows)
    assignment, sums = assign_chunks(emb, rows, centroids, 0, n_chunks(n))
    return assignment.astype(np.int64), float(sum(sums))


def n_chunks(n: int) -> int:
    return -(-n // ASSIGN_CHUNK)


def assign_chunks(emb, rows, centroids: np.ndarray, first: int, last: int, gpu: int | None = None):
    """Chunks [first, last) of the rows: (their nearest centroid as int32, each chunk's sum of squared distances).

    One faiss flat search per chunk (ties to the lower centroid id, as faiss's top-1 keeps the first minimum);
    the squared errors are summed in float64 from differences (faiss's own distances are |x|^2 - 2 x.c + |c|^2
    in float32, which cancels when the rows are far from the origin)."""
    n = len(emb) if rows is None else len(rows)
    index: faiss.Index = faiss.IndexFlatL2(centroids.shape[1])
    if faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), gpu or 0, index)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    parts, sums = [], []
    for c in range(first, last):
        x = take_rows(emb, rows, slice(c * ASSIGN_CHUNK, min((c + 1) * ASSIGN_CHUNK, n)))
        a = index.search(x, 1)[1].ravel()
        diff = x.astype(np.float64) - centroids[a].astype(np.float64)
        parts.append(a.astype(np.int32))
        sums.append(float(np.einsum("ij,ij->", diff, diff)))
    return (np.concatenate(parts) if parts else np.empty(0, dtype=np.int32)), sums


def kmeans_info(k: int, objective: float, knobs) -> dict:
    """What a selector records about its clustering (for the round's manifest)."""
    return {
        "k": int(k),
        "objective": float(objective),
        "init": getattr(knobs, "init", "kmeans++"),
        "nredo": knobs.nredo,
    }


def available_rows(n: int, already_selected: np.ndarray) -> np.ndarray:
    """Sorted ids of the rows not in `already_selected`."""
    mask = np.ones(n, dtype=bool)
    mask[already_selected] = False
    return np.flatnonzero(mask)


class KMeansKnobs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    niter: int = Field(20, gt=0, description="k-means iterations")
    nredo: int = Field(1, gt=0, description="k-means restarts (the clustering with the lowest objective is kept)")
    init: Literal["kmeans++", "random"] = Field(
        "kmeans++", description="initial centroids: k-means++ seeds on the training rows, or faiss's random rows"
    )
    max_points_per_centroid: int = Field(
        256, gt=0, description="faiss trains on at most k x this many rows (a random subsample); all rows are assigned"
    )


class KMeansClosestParams(KMeansKnobs):
    pass


class KMeansRandomParams(KMeansKnobs):
    n_clusters: int | None = Field(None, gt=0, description="number of clusters (default: the budget)")


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
    description = (
        "k-means with k = budget on the unselected rows; the row nearest each centroid (largest clusters first)"
    )
    Params = KMeansClosestParams

    def _select(self, embeddings, budget, already_selected, scores, seed):
        p = self.params
        avail = available_rows(len(embeddings), already_selected)
        centroids, assignment, objective = kmeans(
            embeddings, budget, seed, p.niter, p.nredo, p.max_points_per_centroid, p.init, rows=avail
        )
        self.last_info = {"kmeans": kmeans_info(budget, objective, p)}
        sizes = np.bincount(assignment, minlength=budget)
        order = np.argsort(-sizes, kind="stable")
        # the nearest rows are searched among all unselected rows at once: under torchrun, on rank 0 (not sharded)
        return avail[nearest_unused(take_rows(embeddings, avail, None), centroids[order])]


@register
class KMeansRandomSelector(Selector):
    name = "kmeans_random"
    description = "k-means on the unselected rows, then uniform random rows per cluster, quotas proportional to size"
    Params = KMeansRandomParams

    def _select(self, embeddings, budget, already_selected, scores, seed):
        p = self.params
        avail = available_rows(len(embeddings), already_selected)
        k = min(p.n_clusters or budget, len(avail))
        _, assignment, objective = kmeans(
            embeddings, k, seed, p.niter, p.nredo, p.max_points_per_centroid, p.init, rows=avail
        )
        self.last_info = {"kmeans": kmeans_info(k, objective, p)}
        sizes = np.bincount(assignment, minlength=k)
        quotas = proportional_quotas(sizes, budget, sizes)
        keys = np.random.default_rng(seed).gumbel(size=len(avail))  # uniform order inside each cluster
        return avail[top_keys_per_cluster(assignment, keys, quotas)]
