"""Per-row scorers computed by the current (adapted) model, registered by name like selectors (same registry type,
entry-point group `diverse_axolotl.scorers`)."""

# Importing a scorer module registers it.
from . import perplexity_gap, reward_gap, token_stats  # noqa: F401
from .base import ENTRY_POINT_GROUP, SCORERS, Scorer, available_scorers, get_scorer, register_scorer

__all__ = ["ENTRY_POINT_GROUP", "SCORERS", "Scorer", "available_scorers", "get_scorer", "register_scorer"]
