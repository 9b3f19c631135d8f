"""Selectors by name: built-ins register with a decorator, third parties through an entry-point group.

A package exposes a selector with, in its pyproject.toml:

    [project.entry-points."diverse_axolotl.selectors"]
    my_selector = "my_pkg.module:MySelector"

after which `get_selector("my_selector")` and recipes use it exactly like a built-in one.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from ..errors import UserError, did_you_mean
from .base import Selector

ENTRY_POINT_GROUP = "diverse_axolotl.selectors"
_BUILTIN: dict[str, type[Selector]] = {}


def register(cls: type[Selector]) -> type[Selector]:
    """Class decorator adding a built-in selector under `cls.name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _BUILTIN:
        raise ValueError(f"selector '{cls.name}' is registered twice")
    _BUILTIN[cls.name] = cls
    return cls


def _plugins() -> dict[str, type[Selector]]:
    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _BUILTIN:
            continue  # a plugin never shadows a built-in
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not break the built-ins
            raise UserError(f"selector plugin '{ep.name}' ({ep.value}) failed to load: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Selector)):
            raise UserError(f"selector plugin '{ep.name}' ({ep.value}) is not a Selector subclass")
        found[ep.name] = cls
    return found


def available_selectors() -> dict[str, type[Selector]]:
    """Every selector by name: built-ins first, then plugins, each group sorted."""
    return {**dict(sorted(_BUILTIN.items())), **dict(sorted(_plugins().items()))}


def selector_class(name: str) -> type[Selector]:
    selectors = available_selectors()
    if name not in selectors:
        raise UserError(
            f"unknown selector '{name}'{did_you_mean(name, selectors)}; available: {', '.join(selectors)}"
        )
    return selectors[name]


def get_selector(name: str, **params) -> Selector:
    """The selector `name` configured with `params` (validated; unknown ones are a UserError)."""
    return selector_class(name)(**params)
