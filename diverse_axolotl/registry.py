"""Named plugins (selectors, scorers): one registry type so that both kinds load, check and fail the same way.

An entry is a class or a lazy "module:Class" string (imported on first use). Built-ins are added by a decorator
when their module is imported; third parties add entries through an entry-point group, e.g. in their
pyproject.toml:

    [project.entry-points."diverse_axolotl.scorers"]
    my_scorer = "my_pkg.module:MyScorer"

A name registered twice is a programming error (ValueError); a plugin never shadows a built-in; a plugin that fails
to load or is not a subclass of the registry's base class is a UserError naming it.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from .errors import UserError, did_you_mean

T = TypeVar("T", bound=type)


def load_target(target: str) -> object:
    """The object a "package.module:Attr" string names."""
    module, _, attr = target.partition(":")
    obj: object = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Classes by name, each a subclass of `base`; `kind` ("selector", "scorer") words the errors."""

    def __init__(self, kind: str, base: type, group: str):
        self.kind, self.base, self.group = kind, base, group
        self._entries: dict[str, type | str] = {}

    def register(self, cls_or_name, target: str | None = None):
        """`@registry.register` on a class (added under `cls.name`), or `registry.register(name, "module:Class")`
        for a lazy entry."""
        if target is not None:
            self._add(str(cls_or_name), target)
            return target
        cls = cls_or_name
        if not getattr(cls, "name", ""):
            raise ValueError(f"{cls.__name__} has no name")
        self._check_class(cls, f"{self.kind} '{cls.name}'", error=ValueError)
        self._add(cls.name, cls)
        return cls

    def _add(self, name: str, entry: type | str) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry

    def _check_class(self, cls, what: str, error: type[Exception] = UserError) -> None:
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise error(f"{what} is not a {self.base.__name__} subclass")

    def _resolve(self, name: str) -> type:
        entry = self._entries[name]
        if isinstance(entry, str):
            cls = load_target(entry)
            self._check_class(cls, f"{self.kind} '{name}' ({entry})", error=ValueError)
            self._entries[name] = entry = cls  # type: ignore[assignment]
        return entry  # type: ignore[return-value]

    def _entry_points(self):
        return [ep for ep in entry_points(group=self.group) if ep.name not in self._entries]  # never shadow a built-in

    def _load_plugin(self, ep) -> type:
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not break the built-ins
            raise UserError(f"{self.kind} plugin '{ep.name}' ({ep.value}) failed to load: {exc}") from None
        self._check_class(cls, f"{self.kind} plugin '{ep.name}' ({ep.value})")
        return cls

    def available(self) -> dict[str, T]:
        """Every class by name: built-ins first, then plugins, each group sorted (loads every entry)."""
        builtin = {name: self._resolve(name) for name in sorted(self._entries)}
        plugins = {ep.name: self._load_plugin(ep) for ep in sorted(self._entry_points(), key=lambda ep: ep.name)}
        return {**builtin, **plugins}  # type: ignore[dict-item]

    def names(self) -> list[str]:
        """Every name, without importing anything."""
        return [*sorted(self._entries), *sorted({ep.name for ep in self._entry_points()})]

    def get(self, name: str) -> T:
        """The class registered as `name` (only that entry is loaded); unknown -> UserError with a did-you-mean."""
        if name in self._entries:
            return self._resolve(name)  # type: ignore[return-value]
        for ep in self._entry_points():
            if ep.name == name:
                return self._load_plugin(ep)  # type: ignore[return-value]
        names = self.names()
        raise UserError(f"unknown {self.kind} '{name}'{did_you_mean(name, names)}; available: {', '.join(names)}")
