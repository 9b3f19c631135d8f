"""Selectors, one file each, registered by name. `get_selector(name, **params).select(...)` is the interface."""

# Importing a selector module registers it.
from . import deita, full, iterative_kmq, kcenter, kmeans, kmq, qdit, random, uncertainty  # noqa: F401
from .base import Selector
from .registry import ENTRY_POINT_GROUP, SELECTORS, available_selectors, get_selector, register, selector_class

__all__ = [
    "Selector",
    "ENTRY_POINT_GROUP",
    "SELECTORS",
    "available_selectors",
    "get_selector",
    "register",
    "selector_class",
]
