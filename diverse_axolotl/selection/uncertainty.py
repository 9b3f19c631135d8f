"""Uncertainty baselines: the rows the current model is least sure about.

Each selector reads the scores of the scorer of the same name (`diverse_axolotl.scoring.token_stats`, its default
scorer), computed by the round's adapted model, and takes the `budget` most uncertain rows not yet selected
(ties: lowest index). Which end is "most uncertain" depends on the score:

  least_confidence       DiverseEvol's baseline: mean raw maximum logit over every position. Takes the LOWEST.
  margin                 DiverseEvol's baseline: mean top-1 minus top-2 logit over every position. Takes the LOWEST.
  least_confidence_prob  mean 1 - top probability over response tokens. Takes the HIGHEST.
  margin_prob            mean 1 - (top-1 minus top-2 probability) over response tokens. Takes the HIGHEST.
  entropy                mean predictive entropy over response tokens. Takes the HIGHEST.

A recipe that pairs one of these selectors with another scorer gets that scorer's values read in the selector's
direction.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .base import Selector
from .registry import register


class TopScoreSelector(Selector):
    """The rows with the largest scores (or the smallest, with `take = "lowest"`) among those not yet selected."""

    scores = "required"
    needs_embeddings = False
    take: ClassVar[str] = "highest"

    def _select(self, embeddings, budget, already_selected, scores, seed):
        key = scores.astype(np.float64, copy=True) * (1.0 if self.take == "highest" else -1.0)
        key[already_selected] = -np.inf
        order = np.lexsort((np.arange(len(key)), -key))  # most uncertain first, then index ascending
        return order[:budget]


@register
class LeastConfidenceSelector(TopScoreSelector):
    name = "least_confidence"
    default_scorer = "least_confidence"
    take = "lowest"
    description = "DiverseEvol: rows with the lowest mean maximum logit over all positions"


@register
class MarginSelector(TopScoreSelector):
    name = "margin"
    default_scorer = "margin"
    take = "lowest"
    description = "DiverseEvol: rows with the smallest mean top-1 minus top-2 logit over all positions"


@register
class LeastConfidenceProbSelector(TopScoreSelector):
    name = "least_confidence_prob"
    default_scorer = "least_confidence_prob"
    description = "rows whose response tokens the model predicts with the lowest top-token probability"


@register
class MarginProbSelector(TopScoreSelector):
    name = "margin_prob"
    default_scorer = "margin_prob"
    description = "rows with the smallest margin between the model's top-2 token probabilities on their response"


@register
class EntropySelector(TopScoreSelector):
    name = "entropy"
    default_scorer = "entropy"
    description = "rows with the highest predictive entropy over their response tokens"
