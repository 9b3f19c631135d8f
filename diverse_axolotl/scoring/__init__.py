"""Per-row scorers computed by the current (adapted) model, registered by name like selectors."""

from .base import Scorer, available_scorers, get_scorer, register_scorer

__all__ = ["Scorer", "available_scorers", "get_scorer", "register_scorer"]
