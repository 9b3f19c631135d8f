"""What each selector guarantees, on small seeded random inputs, plus the contract every registered selector keeps."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from diverse_axolotl.errors import UserError
from diverse_axolotl.selection import available_selectors, get_selector
from diverse_axolotl.selection.iterative_kmq import cluster_weights
from diverse_axolotl.selection.kmeans import kmeans, nearest_unused
from diverse_axolotl.selection.kmq import largest_remainder, proportional_quotas, silhouette


def gaussian(n=200, d=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def blobs(sizes, d=8, spread=0.3, gap=20.0, seed=0):
    """Well separated Gaussian blobs; returns (X, label per row), rows grouped by blob in order."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((len(sizes), d)) * gap
    x = np.concatenate([c + spread * rng.standard_normal((s, d)) for c, s in zip(centers, sizes, strict=True)])
    return x.astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


def cosine(x):
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return u @ u.T


# -- kmeans_closest / kmeans_random -----------------------------------------------------------------------------
def test_kmeans_helper_matches_direct_faiss_call():
    from diverse_axolotl.selection.kmeans import kmeans_plus_plus

    x = gaussian(300, 6)
    cent, assign, _ = kmeans(x, 7, seed=3, init="random")  # faiss's own random initialisation
    km = faiss.Kmeans(6, 7, niter=20, nredo=1, seed=3, max_points_per_centroid=256, verbose=False)
    km.train(x)
    np.testing.assert_array_equal(cent, km.centroids)
    np.testing.assert_array_equal(assign, km.index.search(x, 1)[1].ravel())
    cent, assign, _ = kmeans(x, 7, seed=3)  # default: faiss started from k-means++ seeds drawn with default_rng(seed)
    km = faiss.Kmeans(6, 7, niter=20, nredo=1, seed=3, max_points_per_centroid=256, verbose=False)
    km.train(x, init_centroids=x[kmeans_plus_plus(x, 7, np.random.default_rng(3))])
    np.testing.assert_array_equal(cent, km.centroids)
    np.testing.assert_array_equal(assign, km.index.search(x, 1)[1].ravel())


def test_kmeans_closest_returns_row_nearest_each_centroid_largest_cluster_first():
    x = gaussian(200, 8, seed=1)
    already = np.arange(0, 200, 9)
    budget, seed = 12, 5
    picks = get_selector("kmeans_closest", init="random").select(x, budget, already_selected=already, seed=seed)

    avail = np.setdiff1d(np.arange(200), already)
    sub = np.ascontiguousarray(x[avail])
    km = faiss.Kmeans(8, budget, niter=20, nredo=1, seed=seed, max_points_per_centroid=256, min_points_per_centroid=1)
    km.train(sub)
    assign = km.index.search(sub, 1)[1].ravel()
    order = np.argsort(-np.bincount(assign, minlength=budget), kind="stable")
    dist = ((sub[None, :, :].astype(np.float64) - km.centroids[:, None, :]) ** 2).sum(-1)
    nearest = dist.argmin(1)[order]
    assert len(set(nearest)) == budget  # no two centroids share a nearest row for this seed
    np.testing.assert_array_equal(picks, avail[nearest])


def test_nearest_unused_gives_shared_nearest_row_to_first_centroid():
    data = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]], dtype=np.float32)
    cents = np.array([[0.1, 0.0], [-0.1, 0.0]], dtype=np.float32)  # both nearest to row 0
    np.testing.assert_array_equal(nearest_unused(data, cents), [0, 1])
    np.testing.assert_array_equal(nearest_unused(data, cents, neighbours=1), [0, 1])  # exhaustive fallback


def test_kmeans_random_quota_per_cluster():
    x = gaussian(150, 4, seed=2)
    picks = get_selector("kmeans_random", n_clusters=5).select(x, 20, seed=4)
    assign = kmeans(x, 5, seed=4).assignment
    sizes = np.bincount(assign, minlength=5)
    np.testing.assert_array_equal(np.bincount(assign[picks], minlength=5), proportional_quotas(sizes, 20, sizes))


# -- kmq ------------------------------------------------------------------------------------------------------
def test_largest_remainder_sums_exactly():
    np.testing.assert_array_equal(largest_remainder(np.array([1, 1, 1]), 2), [1, 1, 0])
    np.testing.assert_array_equal(largest_remainder(np.array([50, 30, 20]), 10), [5, 3, 2])
    np.testing.assert_array_equal(largest_remainder(np.array([0, 3, 1]), 3), [0, 2, 1])


def test_proportional_quotas_redistributes_what_a_small_cluster_cannot_take():
    q = proportional_quotas(np.array([100, 50, 10]), 80, np.array([100, 50, 2]))
    np.testing.assert_array_equal(q, [52, 26, 2])  # ideal 50/25/5; the 3 extra split 2:1
    q = proportional_quotas(np.array([10, 10, 10]), 25, np.array([10, 3, 20]))
    np.testing.assert_array_equal(q, [10, 3, 12])  # two rounds of redistribution


def test_proportional_quotas_random_properties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        k = int(rng.integers(1, 12))
        sizes = rng.integers(0, 50, k)
        available = np.minimum(sizes, rng.integers(0, 50, k))
        budget = int(rng.integers(0, available.sum() + 1))
        q = proportional_quotas(sizes, budget, available)
        assert q.sum() == budget and (q >= 0).all() and (q <= available).all()
        if (available == sizes).all() and sizes.sum():
            assert np.abs(q - sizes / sizes.sum() * budget).max() < 1


def test_kmq_counts_follow_proportional_split_even_when_a_cluster_runs_dry():
    x, label = blobs([100, 60, 30, 10])
    already = np.flatnonzero(label == 3)[:8]  # the small cluster has 2 rows left
    p = dict(n_clusters=4, nredo=3)
    picks = get_selector("kmq", **p).select(x, 60, already_selected=already, seed=7)
    assign = kmeans(x, 4, seed=7, nredo=3).assignment
    assert len(np.unique(np.stack([assign, label]), axis=1).T) == 4  # k-means found the blobs
    eligible = np.ones(len(x), bool)
    eligible[already] = False
    quotas = proportional_quotas(np.bincount(assign, minlength=4), 60, np.bincount(assign[eligible], minlength=4))
    np.testing.assert_array_equal(np.bincount(assign[picks], minlength=4), quotas)
    small = assign[np.flatnonzero(label == 3)[0]]
    assert quotas[small] == 2 and quotas.sum() == 60 == len(picks)
    assert not np.isin(picks, already).any()


def test_kmq_low_temperature_takes_top_scores_per_cluster():
    x, label = blobs([40, 30, 20], seed=3)
    scores = np.random.default_rng(1).standard_normal(len(x))
    picks = get_selector("kmq", n_clusters=3, temperature=1e-6).select(x, 18, scores=scores, seed=2)
    assign = kmeans(x, 3, seed=2).assignment
    for c in range(3):
        members = np.flatnonzero(assign == c)
        got = np.sort(picks[assign[picks] == c])
        top = np.sort(members[np.argsort(-scores[members])[: len(got)]])
        np.testing.assert_array_equal(got, top)


def test_kmq_k_candidates_picks_true_cluster_count():
    x, _ = blobs([50, 50, 50], d=4, spread=0.2, seed=5)
    sel = get_selector("kmq", k_candidates=[2, 3, 6], nredo=3)
    picks = sel.select(x, 30, seed=0)
    assert len(np.unique(picks)) == 30
    from diverse_axolotl.selection.kmq import choose_k

    k, _, sil, _ = choose_k(x, [2, 3, 6], 0, 2000, sel.params)
    assert k == 3 and sil[3] > sil[2] and sil[3] > sil[6]


def test_silhouette_of_separated_clusters_is_near_one():
    import torch

    x, label = blobs([20, 20], d=3, spread=0.01, seed=0)
    assert silhouette(torch.as_tensor(x), label) > 0.99


def test_kmq_rejects_bad_params():
    with pytest.raises(UserError):
        get_selector("kmq", temperature=0)
    with pytest.raises(UserError):
        get_selector("kmq", k_candidates=[1, 4])
    with pytest.raises(UserError):
        get_selector("kmq", n_cluster=4)


# -- iterative_kmq --------------------------------------------------------------------------------------------
def _new_from_blob_a(update, scores_a, scores_b, **params):
    x, label = blobs([100, 100], seed=1)
    rng = np.random.default_rng(0)
    trained = np.concatenate([rng.choice(100, 20, replace=False), 100 + rng.choice(100, 20, replace=False)])
    scores = np.zeros(len(x))
    scores[trained] = np.where(label[trained] == 0, scores_a, scores_b)
    sel = get_selector("iterative_kmq", n_clusters=2, update=update, **params)
    picks = sel.select(x, 40, already_selected=trained, scores=scores, seed=3)
    assert len(picks) == 40 and not np.isin(picks, trained).any()
    return int((label[picks] == 0).sum())


@pytest.mark.parametrize("update", ["multiplicative", "softmax"])
def test_iterative_kmq_moves_weight_to_high_scores(update):
    flat = _new_from_blob_a(update, 5.0, 5.0)
    high = _new_from_blob_a(update, 9.0, 2.0)
    low = _new_from_blob_a(update, -3.0, 4.0)  # negative scores are fine
    assert flat == 20 and high > flat > low


def test_iterative_kmq_multiplicative_is_the_exp_update_of_the_size_prior():
    assign = np.array([0] * 6 + [1] * 3 + [2] * 3)
    trained = np.array([0, 1, 6, 7])
    scores = np.zeros(12)
    scores[[0, 1]] = 4.0  # cluster 0 mean 4 -> z = 1
    scores[[6, 7]] = 2.0  # cluster 1 mean 2 -> z = 0; cluster 2 has no trained rows
    w = cluster_weights(assign, 3, trained, scores, "multiplicative", eta=np.log(3.0))
    # prior 1/2, 1/4, 1/4; clusters 0 and 1 share their 3/4 in ratio 2 * 3 : 1 * 1; cluster 2 keeps its 1/4
    np.testing.assert_allclose(w, [0.75 * 6 / 7, 0.75 / 7, 0.25])
    np.testing.assert_allclose(cluster_weights(assign, 3, np.array([], int), None), [0.5, 0.25, 0.25])


def test_iterative_kmq_needs_scores_once_rows_are_trained():
    x = gaussian(50, 4)
    sel = get_selector("iterative_kmq", n_clusters=4)
    assert len(sel.select(x, 10, seed=0)) == 10  # round 0: nothing trained, no scores needed
    with pytest.raises(UserError, match="scores"):
        sel.select(x, 10, already_selected=[0, 1], seed=0)


# -- deita ----------------------------------------------------------------------------------------------------
def _near_duplicates(seed=0):
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((15, 8))
    return (directions[rng.integers(0, 15, 300)] + 0.25 * rng.standard_normal((300, 8))).astype(np.float32)


def test_deita_keeps_no_pair_above_threshold_and_follows_the_sequential_rule():
    x = _near_duplicates()
    scores = np.random.default_rng(1).standard_normal(len(x))
    already = np.array([3, 50])
    threshold = 0.8
    picks = get_selector("deita", threshold=threshold, block_rows=16).select(x, 12, already, scores=scores)
    kept = np.concatenate([already, picks])
    sim = cosine(x.astype(np.float64))[np.ix_(picks, kept)]  # every pick against every other kept row
    sim[np.arange(len(picks)), len(already) + np.arange(len(picks))] = -1
    assert sim.max() < threshold + 1e-6

    # the plain sequential rule, written out
    cos = cosine(x.astype(np.float64))
    expect, keep = [], list(already)
    for i in np.argsort(-scores, kind="stable"):
        if i in already:
            continue
        if all(cos[i, j] < threshold for j in keep):
            keep.append(i)
            expect.append(i)
            if len(expect) == 12:
                break
    np.testing.assert_array_equal(picks, expect)


def test_deita_without_scores_scans_pool_order():
    x = _near_duplicates(2)
    picks = get_selector("deita", threshold=0.95).select(x, 5, already_selected=[0])
    assert picks[0] == 1 or cosine(x)[0, 1] >= 0.95
    assert (np.diff(picks) > 0).all()


def test_deita_too_strict_threshold_is_a_user_error():
    x = _near_duplicates()
    with pytest.raises(UserError, match="raise the threshold"):
        get_selector("deita", threshold=0.5).select(x, 100)


# -- qdit -----------------------------------------------------------------------------------------------------
def naive_qdit(x, budget, already, scores, alpha):
    sim = (cosine(x.astype(np.float64)) + 1) / 2
    q = (scores - scores.min()) / (scores.max() - scores.min())
    cover = sim[:, already].max(1) if len(already) else np.zeros(len(x))
    picks = []
    for _ in range(budget):
        gains = (1 - alpha) * np.maximum(sim - cover[:, None], 0).sum(0) + alpha * q
        gains[list(already) + picks] = -np.inf
        j = int(np.argmax(gains))
        picks.append(j)
        cover = np.maximum(cover, sim[:, j])
    return np.array(picks)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("already", [[], [4, 17, 33]])
def test_qdit_lazy_equals_plain_greedy(alpha, already):
    x = gaussian(150, 6, seed=3)
    scores = np.random.default_rng(4).standard_normal(150)
    kw = dict(alpha=alpha, block_rows=16)
    lazy = get_selector("qdit", lazy=True, **kw).select(x, 25, already, scores=scores)
    plain = get_selector("qdit", lazy=False, **kw).select(x, 25, already, scores=scores)
    np.testing.assert_array_equal(lazy, plain)
    np.testing.assert_array_equal(plain, naive_qdit(x, 25, np.array(already, int), scores, alpha))


def test_qdit_lazy_equals_plain_with_exact_ties_and_subsampled_rows():
    x = np.repeat(gaussian(40, 5, seed=6), 3, axis=0)  # every row three times: exact ties everywhere
    for kw in (dict(), dict(sample_rows=50)):
        lazy = get_selector("qdit", block_rows=7, **kw).select(x, 30, seed=1)
        plain = get_selector("qdit", lazy=False, block_rows=7, **kw).select(x, 30, seed=1)
        np.testing.assert_array_equal(lazy, plain)
    assert lazy[0] % 3 == 0  # a tie between copies goes to the lowest id


def test_qdit_alpha_one_is_top_quality():
    x = gaussian(60, 4)
    scores = np.random.default_rng(0).standard_normal(60)
    picks = get_selector("qdit", alpha=1.0).select(x, 10, scores=scores)
    np.testing.assert_array_equal(picks, np.argsort(-scores)[:10])


# -- full -----------------------------------------------------------------------------------------------------
def test_full_returns_all_the_rest():
    np.testing.assert_array_equal(
        get_selector("full").select(None, 7, already_selected=[2, 5, 8], n_rows=10), [0, 1, 3, 4, 6, 7, 9]
    )
    np.testing.assert_array_equal(get_selector("full").select(gaussian(5, 2), 5), np.arange(5))
    with pytest.raises(TypeError, match="n_rows"):  # the pool size is its own argument, never the embeddings
        get_selector("full").select(10, 10)
    with pytest.raises(UserError, match="every remaining row"):
        get_selector("full").select(None, 3, already_selected=[2], n_rows=10)
    with pytest.raises(UserError):
        get_selector("full").select(None, 0, n_rows=10)


# -- every registered selector --------------------------------------------------------------------------------
N, D, ALREADY = 80, 6, np.array([5, 11, 40, 41, 79, 0, 23])


def _call(name, x, budget=6, already=ALREADY, scores="auto", seed=0):
    cls = available_selectors()[name]
    if isinstance(scores, str):
        scores = np.random.default_rng(9).standard_normal(N) if cls.scores in ("required", "selected") else None
    if name == "full" and budget == 6:
        budget = N - len(already)
    return get_selector(name).select(x, budget, already_selected=already, scores=scores, seed=seed)


@pytest.mark.parametrize("name", list(available_selectors()))
def test_selector_contract(name):
    x = gaussian(N, D, seed=11)
    picks = _call(name, x)
    budget = N - len(ALREADY) if name == "full" else 6
    assert picks.dtype == np.int64 and len(picks) == budget
    assert len(np.unique(picks)) == budget
    assert not np.isin(picks, ALREADY).any()
    assert ((picks >= 0) & (picks < N)).all()
    np.testing.assert_array_equal(picks, _call(name, x))  # deterministic for a seed
    assert len(_call(name, x, already=np.array([], int))) == (N if name == "full" else 6)

    with pytest.raises(UserError):
        _call(name, x, budget=N - len(ALREADY) + 1)
    with pytest.raises(UserError):
        _call(name, x, scores=np.zeros(N - 1))
    if available_selectors()[name].needs_embeddings:
        bad = x.copy()
        bad[17, 2] = np.nan
        with pytest.raises(UserError):
            _call(name, bad)


@pytest.mark.parametrize("name", list(available_selectors()))
def test_every_param_is_described(name):
    for field, info in available_selectors()[name].Params.model_fields.items():
        assert info.description, f"{name}.{field} has no description"
