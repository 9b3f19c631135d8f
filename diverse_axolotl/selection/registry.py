"""Selectors by name: built-ins register with a decorator, third parties through an entry-point group.

A package exposes a selector with, in its pyproject.toml:

    [project.entry-points."diverse_axolotl.selectors"]
    my_selector = "my_pkg.module:MySelector"

after which `get_selector("my_selector")` and recipes use it exactly like a built-in one. The registry itself is
the package-wide one (`diverse_axolotl.registry`), shared with the scorers.
"""

from __future__ import annotations

from ..registry import Registry
from .base import Selector

ENTRY_POINT_GROUP = "diverse_axolotl.selectors"
SELECTORS: Registry[type[Selector]] = Registry("selector", Selector, ENTRY_POINT_GROUP)


def register(cls: type[Selector]) -> type[Selector]:
    """Class decorator adding a built-in selector under `cls.name`."""
    return SELECTORS.register(cls)


def available_selectors() -> dict[str, type[Selector]]:
    """Every selector by name: built-ins first, then plugins, each group sorted."""
    return SELECTORS.available()


def selector_class(name: str) -> type[Selector]:
    return SELECTORS.get(name)


def get_selector(name: str, **params) -> Selector:
    """The selector `name` configured with `params` (validated; unknown ones are a UserError)."""
    return selector_class(name)(**params)
