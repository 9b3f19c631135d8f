"""Uncertainty baselines from DiverseEvol: the rows the current model is least sure about.

Each takes the `budget` rows with the highest score (ties: lowest index), where the score comes from the scorer of
the same name (`diverse_axolotl.scoring.token_stats`): the model's token distribution over the row's gold
response, averaged over its tokens. The loop computes those scores with the adapted model of the round.
"""

from __future__ import annotations

import numpy as np

from .base import Selector
from .registry import register


class TopScoreSelector(Selector):
    """The rows with the largest scores among those not yet selected."""

    scores = "required"
    needs_embeddings = False

    def _select(self, embeddings, budget, already_selected, scores, seed):
        masked = scores.astype(np.float64, copy=True)
        masked[already_selected] = -np.inf
        order = np.lexsort((np.arange(len(masked)), -masked))  # score descending, then index ascending
        return order[:budget]


@register
class LeastConfidenceSelector(TopScoreSelector):
    name = "least_confidence"
    default_scorer = "least_confidence"
    description = "rows whose response tokens the model predicts with the lowest top-token probability"


@register
class MarginSelector(TopScoreSelector):
    name = "margin"
    default_scorer = "margin"
    description = "rows with the smallest margin between the model's top-2 token probabilities"


@register
class EntropySelector(TopScoreSelector):
    name = "entropy"
    default_scorer = "entropy"
    description = "rows with the highest predictive entropy over their response tokens"
