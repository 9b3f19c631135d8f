"""The scorer interface: `get_scorer(name, **params).score(model, tokenizer, rows, fmt) -> np.ndarray`."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import BaseModel

from ..registry import Registry
from ..selection.base import NoParams, parse_params

ENTRY_POINT_GROUP = "diverse_axolotl.scorers"


class Scorer:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, **params):
        self.params = parse_params(f"scorer {self.name}", self.Params, params)

    #: Parameters that say how the scores are computed, not what they are: left out of the score cache key.
    how_params: ClassVar[frozenset[str]] = frozenset({"batch_tokens", "batch_size"})
    #: Raised whenever the scorer's formula changes, so scores cached by an earlier release are not reused.
    version: ClassVar[int] = 1

    def check_ready(self, recipe) -> None:
        """Fail at `validate` time when something the scorer needs is missing (files, models)."""

    def identity(self) -> dict:
        """What the scores are, for the score cache: the name and the parameters that change the numbers. A scorer
        that reads files of its own (a reward model) adds their identity, so a changed file is scored again."""
        from ..hashing import without_neutral_defaults

        params = without_neutral_defaults(self.params, self.params.model_dump(mode="json"))
        what = {k: v for k, v in params.items() if k not in self.how_params}
        return {"name": self.name, "version": self.version, **what}

    def score(
        self, model, tokenizer, rows: list[dict], fmt: str, max_length: int = 512, desc: str = "scoring"
    ) -> np.ndarray:
        raise NotImplementedError


#: Built-ins (registered when the package's __init__ imports their modules) and plugins of ENTRY_POINT_GROUP.
SCORERS: Registry[type[Scorer]] = Registry("scorer", Scorer, ENTRY_POINT_GROUP)


def register_scorer(cls):
    """Class decorator adding a built-in scorer under `cls.name` (a name registered twice is a ValueError)."""
    return SCORERS.register(cls)


def available_scorers() -> dict[str, type[Scorer]]:
    """Every scorer by name: built-ins first, then plugins, each group sorted."""
    return SCORERS.available()


def get_scorer(name: str, **params) -> Scorer:
    return SCORERS.get(name)(**params)
