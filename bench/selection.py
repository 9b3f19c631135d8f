"""Selection benchmarks on the CPU: `python bench/selection.py [--quick]`.

1. kcenter (O(N) memory, one matrix-vector product per pick) against the reference approach: the full N x N
   distance matrix first, then farthest-first over it. Same data, same run, same first-pick rule (the row
   farthest from the pool mean); prints both times, their ratio, and how many picks each shares with exact
   farthest-first (float64, `exact_farthest_first`). Then the toolkit's default (cosine, 5% outliers) on the same
   rows: what the isolation pass costs on top.
2. kcenter on rows sharing a large common component (median pairwise cosine ~0.8, like mean-pooled hidden
   states), with float32 and with bfloat16 storage: time and overlap with the exact picks.
3. kmq on a large pool (time only).
4. Our k-means helper (`selection.kmeans.kmeans`, k-means++ seeds handed to faiss) against the same helper with
   faiss's random initialisation (what it did before) and against calling faiss.Kmeans directly: time ratios and
   the objectives (sum of squared distances of all rows to their centroid).

Data are seeded Gaussian mixtures (float32). Default sizes: N=20,000 x 1,024 with 1,000 picks for kcenter,
N=200,000 x 256 with k=1,024 for kmq. `--quick` shrinks everything to run in well under a minute.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402

from diverse_axolotl.selection import get_selector  # noqa: E402
from diverse_axolotl.selection.kmeans import kmeans  # noqa: E402

FULL = dict(kc_n=20_000, kc_d=1024, kc_picks=1000, sh_n=20_000, sh_d=256, sh_picks=1000,
            kmq_n=200_000, kmq_d=256, kmq_k=1024, kmq_budget=10_000, wr_n=50_000, wr_d=128, wr_k=256)
QUICK = dict(kc_n=3000, kc_d=256, kc_picks=200, sh_n=1500, sh_d=256, sh_picks=100,
             kmq_n=20_000, kmq_d=64, kmq_k=128, kmq_budget=1000, wr_n=10_000, wr_d=32, wr_k=64)


def mixture(n: int, d: int, seed: int, components: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((components, d)).astype(np.float32) * 2.0
    x = rng.standard_normal((n, d), dtype=np.float32)
    x += centers[rng.integers(0, components, n)]
    return x


def reference_kcenter(x: np.ndarray, budget: int) -> np.ndarray:
    """The reference way: all pairwise distances (N x N), then greedy farthest-first over the matrix."""
    data = torch.as_tensor(x)
    dist = torch.cdist(data, data)  # N x N float32
    first = int(torch.argmax(((data - data.mean(0)) ** 2).sum(1)))
    picks = [first]
    nearest = dist[first].clone()
    nearest[first] = -float("inf")
    for _ in range(budget - 1):
        j = int(torch.argmax(nearest))
        picks.append(j)
        torch.minimum(nearest, dist[j], out=nearest)
        nearest[picks] = -float("inf")
    return np.asarray(picks)


def shared_component(n: int, d: int, seed: int) -> np.ndarray:
    """Gaussian rows plus one common vector twice as large per dimension: median pairwise cosine ~0.8."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) + 2.0 * rng.standard_normal(d)).astype(np.float32)


def exact_farthest_first(x: np.ndarray, budget: int) -> np.ndarray:
    """Farthest-first in float64 (rows centred in float64, so the squared-distance expansion does not cancel):
    the row farthest from the pool mean first, then the row farthest from its nearest pick (ties: lowest id)."""
    c = np.asarray(x, np.float64)
    c -= c.mean(0)
    sq = np.einsum("ij,ij->i", c, c)
    nearest = sq.copy()  # squared distance to the mean (the origin after centring)
    picks = []
    for _ in range(budget):
        j = int(np.argmax(nearest))
        picks.append(j)
        if len(picks) == 1:
            nearest[:] = np.inf
        np.minimum(nearest, np.maximum(sq - 2 * (c @ c[j]) + sq[j], 0), out=nearest)
        nearest[picks] = -np.inf
    return np.asarray(picks)


def overlap(picks: np.ndarray, exact: np.ndarray) -> str:
    return f"{len(np.intersect1d(picks, exact))}/{len(exact)} of the exact picks" + (
        " (same order)" if np.array_equal(picks, exact) else ""
    )


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def direct_faiss(x: np.ndarray, k: int, seed: int):
    km = faiss.Kmeans(x.shape[1], k, niter=20, nredo=1, seed=seed, max_points_per_centroid=256,
                      min_points_per_centroid=1, verbose=False)
    km.train(x)
    return km.centroids, km.index.search(x, 1)[1].ravel()


def gpu_kcenter(n: int, d: int, picks: int) -> list[tuple]:
    """Per-pick time of the k-center loop on the GPU (bf16 rows) against N * d * 2 bytes / measured copy bandwidth."""
    from diverse_axolotl.selection.kcenter import RowShard

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    shard = RowShard(np.zeros((1, d), np.float32), 0, dev, torch.bfloat16, 1 << 30)
    shard.data = torch.randn(n, d, device=dev, dtype=torch.bfloat16, generator=g)
    shard.n, shard.chunks = n, [(0, n)]
    shard.sq_norm = shard.data.float().pow(2).sum(1)
    shard.min_dist = torch.full((n,), float("inf"), device=dev)
    for _ in range(5):  # warm-up
        shard.absorb(shard.data[shard.best()[1]][None, :])
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(picks):
        i = shard.best()[1]
        shard.absorb(shard.data[i][None, :])
        shard.min_dist[i] = -float("inf")
    torch.cuda.synchronize()
    per_pick = (time.perf_counter() - start) / picks
    buf = torch.empty_like(shard.data)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        buf.copy_(shard.data)
    torch.cuda.synchronize()
    bandwidth = 2 * shard.data.numel() * 2 * 5 / (time.perf_counter() - start)  # read + write per copy
    floor = n * d * 2 / bandwidth
    size = f"N={n:,} d={d:,} bf16 picks={picks}"
    return [
        (
            "kcenter on GPU, ms per pick",
            size,
            per_pick * 1e3,
            f"bandwidth floor {floor * 1e3:.2f} ms; {floor / per_pick:.0%} of it (the time column is in ms here)",
        )
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (< 30 s)")
    args = ap.parse_args()
    s = QUICK if args.quick else FULL
    rows = []
    print(f"torch threads {torch.get_num_threads()}, faiss threads {faiss.omp_get_max_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {'quick' if args.quick else 'full'} sizes",
          flush=True)

    # 1. kcenter vs the N x N reference
    x = mixture(s["kc_n"], s["kc_d"], seed=0)
    size = f"N={s['kc_n']:,} d={s['kc_d']:,} picks={s['kc_picks']:,}"
    plain = get_selector("kcenter", device="cpu", normalize=False, outlier_fraction=0)  # the paper's k-center
    t_ours, ours = timed(plain.select, x, s["kc_picks"])
    print(f"kcenter (ours)            {t_ours:8.2f} s", flush=True)
    t_default, _ = timed(get_selector("kcenter", device="cpu").select, x, s["kc_picks"])
    print(f"kcenter (the default)     {t_default:8.2f} s", flush=True)
    t_ref, ref = timed(reference_kcenter, x, s["kc_picks"])
    print(f"kcenter (N x N reference) {t_ref:8.2f} s", flush=True)
    exact = exact_farthest_first(x, s["kc_picks"])
    rows += [("kcenter, ours (O(N) memory)", size, t_ours, overlap(ours, exact)),
             ("kcenter, N x N matrix + greedy", size, t_ref, (f"ours is {t_ref / t_ours:.2f}x faster" if t_ours < t_ref
              else f"ours is {t_ours / t_ref:.2f}x slower") + "; " + overlap(ref, exact)),
             ("kcenter, the default (cosine, 5% outliers)", size, t_default,
              f"{t_default / t_ours:.2f}x the paper's k-center above (isolation: a 4,096-row sample, float64)")]
    del x

    # 2. kcenter on rows with a shared component, float32 and bfloat16 storage
    x = shared_component(s["sh_n"], s["sh_d"], seed=3)
    size = f"N={s['sh_n']:,} d={s['sh_d']:,} picks={s['sh_picks']:,}, cosine ~0.8"
    exact = exact_farthest_first(x, s["sh_picks"])
    for dtype in ("float32", "bfloat16"):
        sel = get_selector("kcenter", device="cpu", dtype=dtype, normalize=False, outlier_fraction=0)
        t, picks = timed(sel.select, x, s["sh_picks"])
        print(f"kcenter ({dtype}, shared) {t:8.2f} s", flush=True)
        rows.append((f"kcenter, {dtype} storage", size, t, overlap(picks, exact)))
    del x

    # 3. kmq on a large pool
    x = mixture(s["kmq_n"], s["kmq_d"], seed=1, components=200)
    size = f"N={s['kmq_n']:,} d={s['kmq_d']:,} k={s['kmq_k']:,} budget={s['kmq_budget']:,}"
    t_kmq, picks = timed(get_selector("kmq", n_clusters=s["kmq_k"]).select, x, s["kmq_budget"], seed=0)
    assert len(np.unique(picks)) == s["kmq_budget"]
    print(f"kmq                       {t_kmq:8.2f} s", flush=True)
    cap = s["kmq_k"] * 256
    trained_on = "every row" if s["kmq_n"] <= cap else f"a {cap:,}-row subsample"
    rows.append(
        ("kmq (faiss k-means + quotas + sampling)", size, t_kmq, f"20 iterations, k-means trained on {trained_on}")
    )
    del x

    # 4. k-means++ seeding against faiss's random initialisation, and the wrapper against faiss directly
    x = mixture(s["wr_n"], s["wr_d"], seed=2)
    size = f"N={s['wr_n']:,} d={s['wr_d']:,} k={s['wr_k']:,}"
    t_pp, pp = min((timed(kmeans, x, s["wr_k"], 0) for _ in range(3)), key=lambda r: r[0])
    t_rand, rand = min((timed(kmeans, x, s["wr_k"], 0, init="random") for _ in range(3)), key=lambda r: r[0])
    t_direct = min(timed(direct_faiss, x, s["wr_k"], 0)[0] for _ in range(3))
    same = np.array_equal(rand.assignment, direct_faiss(x, s["wr_k"], 0)[1])
    rows += [("kmeans helper, k-means++ seeds (default)", size, t_pp,
              f"{t_pp / t_rand:.2f}x the time of random init; objective {pp.objective:.6g}"),
             ("kmeans helper, init=random (the old wrapper)", size, t_rand,
              f"{t_rand / t_direct:.3f}x direct; same assignment as direct: {same}; objective {rand.objective:.6g}"),
             ("faiss.Kmeans directly", size, t_direct, "best of 3 each")]

    # 5. on a GPU: ms per pick at N=1,000,000 x d=4,096 in bf16, next to the memory-bandwidth floor
    if torch.cuda.is_available():
        rows += gpu_kcenter(n=100_000 if args.quick else 1_000_000, d=4096, picks=50 if args.quick else 200)

    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print()
    print(f"{'benchmark':<{w0}}  {'size':<{w1}}  {'time (s)':>9}  notes")
    print(f"{'-' * w0}  {'-' * w1}  {'-' * 9}  {'-' * 40}")
    for name, sz, t, note in rows:
        print(f"{name:<{w0}}  {sz:<{w1}}  {t:9.2f}  {note}")


if __name__ == "__main__":
    main()
