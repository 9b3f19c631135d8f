"""Per-row scorers computed by the current (adapted) model, registered by name like selectors."""

from .base import Scorer, available_scorers, get_scorer, register_scorer

# Importing a scorer module registers it.
from . import perplexity_gap, reward_gap, token_stats  # noqa: E402,F401

__all__ = ["Scorer", "available_scorers", "get_scorer", "register_scorer"]
