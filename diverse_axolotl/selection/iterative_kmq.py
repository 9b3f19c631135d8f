"""Iterative kMQ: Diversify and Conquer's refinement loop, one round per `select` call.

The loop trains on the rows chosen so far, scores each trained row with the trained model (default scorer:
perplexity; higher = more left to learn) and calls `select(..., already_selected=trained rows, scores=...)`, of
which only the entries of the trained rows are read (`scores = "selected"`). A round:

1. Cluster the pool with k-means (`n_clusters`). Each cluster starts with the weight of its size (the kMQ prior).
2. s_c = mean score of cluster c's trained rows. The means are min-max normalised over the clusters that have
   trained rows, z_c = (s_c - min s) / (max s - min s) in [0, 1] (all 0 when the means are equal). This is the
   guard for scores of any sign and scale (perplexities, losses, negative rewards): the update depends only on
   how the clusters rank against each other and on `eta` / `temperature`, never on the unit of the score.
3. Update, among the clusters with trained rows (their total weight is kept, so clusters without trained rows
   keep their prior weight: no evidence, no change):
   * `multiplicative` (the paper's form): w_c <- w_c * exp(eta * z_c), renormalised over those clusters.
   * `softmax`: w_c <- (1 - mix) * prior_c + mix * P * softmax(z / temperature)_c, with P their total prior.
4. Draw exactly `budget` new rows: per-cluster quotas proportional to the weights (largest remainder, capped at
   each cluster's unselected rows, the overflow redistributed: `kmq.proportional_quotas`), uniformly at random
   inside each cluster. Picks come round-robin over the clusters.

Stateless rounds. The selector keeps nothing between calls, so the weights are recomputed from the size prior
at every call, with one update from the current scores of *all* rows trained so far. Because the loop rescores
every trained row with the latest model each round, this is the paper's update driven by the current model's
view of the whole training set, rather than a running product of past rounds' updates (which would compound
the scores of earlier models, about rows the model has since been trained on again). It also means rounds can
be resumed, re-run or reordered without hidden state, and a change of clustering between rounds (the
embeddings come from the current model and the loop varies the seed) cannot leave stale per-cluster weights.

Deviations of the reference code from the paper, which this module does not reproduce:

* The reference implementation divides the per-round sample count by the number of clusters K a second time
  after already splitting it over the K clusters, so a round adds about budget / K rows in total (about 4 new
  rows per round in its setting) instead of the round's budget. Here each round adds exactly `budget` rows.
* Its cluster-weight update does not follow the paper's equation (a multiplicative exponential update
  w_c <- w_c * exp(eta * s_c) of the previous weights); `multiplicative` above implements the paper's form,
  with the normalisation of step 2.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from ..errors import UserError
from .base import Selector
from .kmeans import KMeansKnobs
from .kmq import cluster_pool, proportional_quotas, top_keys_per_cluster
from .registry import register


class IterativeKMQParams(KMeansKnobs):
    n_clusters: int = Field(64, gt=0, description="number of k-means clusters (capped at the pool size)")
    update: Literal["multiplicative", "softmax"] = Field(
        "multiplicative", description="cluster weight update: the paper's exp(eta * score), or a softmax mixed with the size prior"
    )
    eta: float = Field(1.0, ge=0, description="step size of the multiplicative update (0: weights stay the size prior)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature over the normalised cluster scores")
    mix: float = Field(0.5, ge=0, le=1, description="softmax update: weight of the softmax term against the size prior")


def cluster_weights(
    assignment: np.ndarray,
    k: int,
    trained: np.ndarray,
    scores,
    update: str = "multiplicative",
    eta: float = 1.0,
    temperature: float = 1.0,
    mix: float = 0.5,
) -> np.ndarray:
    """Normalised cluster weights after one update of the size prior from the trained rows' scores."""
    sizes = np.bincount(assignment, minlength=k).astype(np.float64)
    prior = sizes / sizes.sum()
    if len(trained) == 0 or scores is None:
        return prior
    cnt = np.bincount(assignment[trained], minlength=k)
    tot = np.bincount(assignment[trained], weights=np.asarray(scores, dtype=np.float64)[trained], minlength=k)
    has = cnt > 0
    mean = tot[has] / cnt[has]
    lo, hi = mean.min(), mean.max()
    z = (mean - lo) / (hi - lo) if hi > lo else np.zeros_like(mean)
    mass = prior[has].sum()
    w = prior.copy()
    if update == "multiplicative":
        raw = prior[has] * np.exp(eta * (z - 1.0))  # shifted by the max for range; the renormalisation cancels it
        w[has] = raw / raw.sum() * mass
    else:
        e = np.exp((z - z.max()) / temperature)
        w[has] = (1.0 - mix) * prior[has] + mix * mass * e / e.sum()
    return w / w.sum()


@register
class IterativeKMQSelector(Selector):
    name = "iterative_kmq"
    description = "Diversify and Conquer iterative kMQ: cluster weights move toward clusters the model still finds hard"
    Params = IterativeKMQParams
    scores = "selected"
    default_scorer = "perplexity"

    def _select(self, embeddings, budget, already_selected, scores, seed):
        p = self.params
        if scores is None and len(already_selected):
            raise UserError("selector 'iterative_kmq' needs scores of the trained rows: set a scorer in the recipe")
        n = len(embeddings)
        k, assignment = cluster_pool(embeddings, seed, p)
        weights = cluster_weights(assignment, k, already_selected, scores, p.update, p.eta, p.temperature, p.mix)
        eligible = np.ones(n, dtype=bool)
        eligible[already_selected] = False
        available = np.bincount(assignment[eligible], minlength=k)
        quotas = proportional_quotas(weights, budget, available)
        keys = np.random.default_rng(seed).gumbel(size=n)  # uniform inside each cluster
        return top_keys_per_cluster(assignment, keys, quotas, eligible)
