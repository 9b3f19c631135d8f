"""Per-row scorers computed by the current (adapted) model, registered by name like selectors (same registry type,
entry-point group `diverse_axolotl.scorers`)."""

from .base import ENTRY_POINT_GROUP, SCORERS, Scorer, available_scorers, get_scorer, register_scorer

# Importing a scorer module registers it.
from . import perplexity_gap, reward_gap, token_stats  # noqa: E402,F401

__all__ = ["ENTRY_POINT_GROUP", "SCORERS", "Scorer", "available_scorers", "get_scorer", "register_scorer"]
