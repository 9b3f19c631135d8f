"""Iterative kMQ: Diversify and Conquer's Algorithm 1 (Yu et al. 2024), one round per call, weights carried.

The paper clusters the pool once, draws the first subset with kMQ (quotas proportional to cluster size), then
repeats: train on the rows chosen so far, score them with the trained model, update each cluster's sampling weight
from the mean score of its trained rows (Eq. 6), draw the next rows with quotas proportional to the weights.

One round here, `select_with_state(embeddings, budget, already_selected, scores, seed, state)`:

1. Clusters. With no `state`: k-means on the given embeddings (`n_clusters`, `kmq.cluster_pool`) and, as each
   cluster's weight, its share of the pool (the kMQ prior). With a `state`: its assignment and weights, unchanged;
   the embeddings are then not read (given, only their row count is checked), so the loop does not embed the pool
   for those rounds (`needs_embeddings_given`). The clustering is made once per run (on the embeddings of the
   first call) and fixed afterwards, as in the paper and the reference code.
2. s_c = mean score of cluster c's trained rows (`already_selected`; the loop rescores every trained row with the
   current model each round). A cluster with no trained row has no score and keeps its weight (no evidence, no
   change); the clusters with a score share the weight they held before.
3. Update (`update`):
   * `eq6` (default; the paper's Eq. 6): w_c <- w_c * s_c / sum_c' s_c', linear in the score. The weights are then
     renormalised to sum to 1 (only their ratios set the quotas; Eq. 6's own denominator does not keep them summing
     to 1). Eq. 6 needs positive scores: when the smallest cluster score is <= 0, every cluster score is shifted up
     by the same amount so that the smallest equals `epsilon` (the shift is recorded in the state; positive scores
     are never shifted). Never a sign flip: a lower score always means a smaller factor.
   * `multiplicative`: w_c <- w_c * exp(eta * z_c), z = the cluster scores min-max normalised to [0, 1] (all 0 when
     equal). An exponential-weights rule that ignores the scores' offset and unit. Not the paper's.
   * `softmax`: w_c <- (1 - mix) * w_c + mix * W * softmax(z / temperature)_c, W the updated clusters' total
     weight. Not the paper's.
4. Draw exactly `budget` new rows: per-cluster quotas proportional to the weights (`quotas.proportional_quotas`:
   capped at each cluster's unselected rows, the rest handed to the others), uniformly at random inside each
   cluster (Gumbel keys from `seed`). Picks come round-robin over the clusters.

The new state is returned with the picks; the loop writes it with the round (weights and cluster scores in the
manifest's `selector_state`, the assignment in `selector_state.npz`) and hands it back to the next round, so a
resumed run continues exactly. State keys: `assignment` (int64, the cluster of every pool row), `weights` (after
this round's update), `cluster_scores` (None for clusters without trained rows), `shift`, `update`.

With no state and nothing trained, a call is a kMQ draw: the same rows as `kmq` with the same `n_clusters`,
k-means settings and seed and no scores. The loop makes that call on the base model's embeddings with
`round0: base` (Algorithm 1's start). With the default `round0: random`, round 0 is random and the first call
clusters the round-0 adapter's embeddings, then applies the first update to the size prior.

`select(...)` (no state) is one such round from scratch.

Differences of the reference code (for-ai/iterative-data-selection, selection/iter.py) from the paper, not
reproduced here:
* it divides the per-round count by the number of clusters K a second time (about budget / K new rows per round);
  here each round adds exactly `budget` rows;
* its update sets the weights to exp(mean reward gap) normalised over the clusters (a softmax of the raw means),
  each round afresh: neither Eq. 6's linear factor nor the previous weights or the size prior; and it draws the
  per-cluster counts at random with replacement (here: deterministic largest-remainder quotas);
* its first round takes the same number of rows from every cluster, not a share proportional to cluster size.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from ..errors import UserError
from .base import Selector, _assert_valid_picks, check_already_selected, check_budget, check_embeddings, check_scores
from .kmeans import KMeansKnobs
from .kmq import cluster_pool
from .quotas import proportional_quotas, top_keys_per_cluster
from .registry import register

UPDATES = ("eq6", "multiplicative", "softmax")


class IterativeKMQParams(KMeansKnobs):
    n_clusters: int = Field(64, gt=0, description="number of k-means clusters (capped at the pool size)")
    update: Literal["eq6", "multiplicative", "softmax"] = Field(
        "eq6",
        description="cluster weight update: eq6 (the paper: w * s / sum s, carried across rounds), multiplicative "
        "(w * exp(eta * min-max normalised s)), softmax (mix of w and a softmax of the normalised s)",
    )
    epsilon: float = Field(
        1e-3, gt=0, description="eq6: when the smallest cluster score is <= 0, all are shifted so the smallest is this"
    )
    eta: float = Field(1.0, ge=0, description="multiplicative update: step size (0: weights never move)")
    temperature: float = Field(1.0, gt=0, description="softmax update: temperature over the normalised cluster scores")
    mix: float = Field(
        0.5, ge=0, le=1, description="softmax update: weight of the softmax term against the previous weights"
    )


# -- pure pieces ----------------------------------------------------------------------------------------------
def cluster_means(assignment: np.ndarray, k: int, trained: np.ndarray, scores) -> np.ndarray:
    """Mean score of each cluster's trained rows; NaN for clusters with none (or when there are no scores)."""
    means = np.full(k, np.nan)
    if len(trained) == 0 or scores is None:
        return means
    cnt = np.bincount(assignment[trained], minlength=k)
    tot = np.bincount(assignment[trained], weights=np.asarray(scores, dtype=np.float64)[trained], minlength=k)
    has = cnt > 0
    means[has] = tot[has] / cnt[has]
    return means


def _minmax(s: np.ndarray) -> np.ndarray:
    lo, hi = s.min(), s.max()
    return (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)


def update_weights(
    weights,
    means,
    update: str = "eq6",
    epsilon: float = 1e-3,
    eta: float = 1.0,
    temperature: float = 1.0,
    mix: float = 0.5,
) -> tuple[np.ndarray, float]:
    """One update of the cluster weights from the cluster means (NaN: no evidence, weight kept). -> (weights, shift).

    The weights come back normalised to sum 1; `shift` is what `eq6` added to every cluster score (0 otherwise).
    """
    w = np.asarray(weights, dtype=np.float64).copy()
    means = np.asarray(means, dtype=np.float64)
    if update not in UPDATES:
        raise ValueError(f"unknown update {update!r}; one of {', '.join(UPDATES)}")
    has = ~np.isnan(means)
    shift = 0.0
    if has.any():
        s, mass = means[has], w[has].sum()
        if update == "eq6":
            if s.min() <= 0:
                shift = float(epsilon - s.min())
            raw = w[has] * (s + shift)
        elif update == "multiplicative":
            raw = w[has] * np.exp(eta * (_minmax(s) - 1.0))  # shifted by the max for range; renormalised below
        else:
            z = _minmax(s)
            e = np.exp((z - z.max()) / temperature)
            raw = (1.0 - mix) * w[has] + mix * mass * e / e.sum()
        if raw.sum() > 0:
            w[has] = raw / raw.sum() * mass
    return w / w.sum(), shift


def cluster_weights(
    assignment: np.ndarray,
    k: int,
    trained: np.ndarray,
    scores,
    update: str = "eq6",
    eta: float = 1.0,
    temperature: float = 1.0,
    mix: float = 0.5,
    epsilon: float = 1e-3,
) -> np.ndarray:
    """Normalised weights after one update of the size prior (what the first round after the clustering uses)."""
    sizes = np.bincount(assignment, minlength=k).astype(np.float64)
    means = cluster_means(assignment, k, trained, scores)
    return update_weights(sizes / sizes.sum(), means, update, epsilon, eta, temperature, mix)[0]


def draw(assignment: np.ndarray, weights, budget: int, chosen: np.ndarray, seed: int) -> np.ndarray:
    """`budget` unselected rows: quotas proportional to `weights`, uniform inside each cluster, round-robin order."""
    n, k = len(assignment), len(weights)
    eligible = np.ones(n, dtype=bool)
    eligible[chosen] = False
    available = np.bincount(assignment[eligible], minlength=k)
    quotas = proportional_quotas(np.asarray(weights, dtype=np.float64), budget, available)
    keys = np.random.default_rng(seed).gumbel(size=n)  # uniform inside each cluster
    return top_keys_per_cluster(assignment, keys, quotas, eligible)


def check_state(state: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The assignment and weights of a state from an earlier round, checked against the pool size."""
    try:
        assignment = np.asarray(state["assignment"], dtype=np.int64).ravel()
        weights = np.asarray(state["weights"], dtype=np.float64).ravel()
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"iterative_kmq: the state of the previous round is unreadable ({exc})") from None
    k = len(weights)
    if len(assignment) != n:
        raise UserError(f"iterative_kmq: the previous round's clusters cover {len(assignment)} rows, the pool has {n}")
    if k == 0 or assignment.min() < 0 or assignment.max() >= k:
        raise UserError("iterative_kmq: the previous round's cluster ids do not match its weights")
    if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise UserError("iterative_kmq: the previous round's cluster weights are not finite non-negative numbers")
    return assignment, weights


# -- the selector ---------------------------------------------------------------------------------------------
@register
class IterativeKMQSelector(Selector):
    name = "iterative_kmq"
    description = "Diversify and Conquer iterative kMQ: fixed k-means clusters, weights updated by Eq. 6 each round"
    Params = IterativeKMQParams
    scores = "selected"
    default_scorer = "perplexity"

    def needs_embeddings_given(self, state: dict | None) -> bool:
        """Only the first round clusters; later rounds draw from the clusters the state carries (Algorithm 1)."""
        return state is None

    def select_with_state(
        self,
        embeddings,
        budget: int,
        already_selected=(),
        scores=None,
        seed: int = 0,
        state: dict | None = None,
        n_rows: int | None = None,
    ) -> tuple[np.ndarray, dict]:
        """(picks, new state): one round of Algorithm 1 from `state` (None: cluster `embeddings` first). With a
        state, `embeddings` may be None (the clusters are in the state; `n_rows` checks the pool size)."""
        if embeddings is None:
            if state is None:
                raise UserError(f"selector '{self.name}' needs embeddings to cluster the pool")
            n = len(np.asarray(state.get("assignment", ())))
            if n_rows is not None and n_rows != n:
                raise UserError(f"iterative_kmq: the previous round's clusters cover {n} rows, the pool has {n_rows}")
            emb = None
        else:
            emb = check_embeddings(embeddings)
            n = len(emb)
        chosen = check_already_selected(already_selected, n)
        budget = check_budget(budget, n - len(chosen), self.name)
        score_arr = check_scores(scores, n) if scores is not None else None
        picks, new_state = self._round(emb, n, budget, chosen, score_arr, int(seed), state)
        _assert_valid_picks(picks, budget, chosen, n, self.name)
        return picks, new_state

    def _select(self, embeddings, budget, already_selected, scores, seed):
        return self._round(embeddings, len(embeddings), budget, already_selected, scores, seed, None)[0]

    def _round(self, emb, n, budget, chosen, scores, seed, state):
        p = self.params
        if scores is None and len(chosen):
            raise UserError("selector 'iterative_kmq' needs scores of the trained rows: set a scorer in the recipe")
        if state is None:
            k, assignment = cluster_pool(emb, seed, p)
            sizes = np.bincount(assignment, minlength=k).astype(np.float64)
            previous = sizes / sizes.sum()
        else:
            assignment, previous = check_state(state, n)
            k = len(previous)
        means = cluster_means(assignment, k, chosen, scores)
        weights, shift = update_weights(previous, means, p.update, p.epsilon, p.eta, p.temperature, p.mix)
        fresh = state is None and np.isnan(means).all()
        # a fresh, never updated state is the kMQ prior: hand kmq's own integer sizes to the quotas (same rows as kmq)
        picks = draw(assignment, sizes if fresh else weights, budget, chosen, seed) if budget else np.empty(0, np.int64)
        new_state = {
            "update": p.update,
            "weights": weights.tolist(),
            "cluster_scores": [None if np.isnan(m) else float(m) for m in means],
            "shift": shift,
            "assignment": assignment,
        }
        return picks, new_state
