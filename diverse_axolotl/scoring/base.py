"""The scorer interface: `get_scorer(name, **params).score(model, tokenizer, rows, fmt) -> np.ndarray`."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import BaseModel

from ..errors import UserError, did_you_mean
from ..selection.base import NoParams, parse_params

_SCORERS: dict[str, type["Scorer"]] = {}


class Scorer:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, **params):
        self.params = parse_params(f"scorer {self.name}", self.Params, params)

    def check_ready(self, recipe) -> None:
        """Fail at `validate` time when something the scorer needs is missing (files, models)."""

    def score(self, model, tokenizer, rows: list[dict], fmt: str, max_length: int = 512, desc: str = "scoring") -> np.ndarray:
        raise NotImplementedError


def register_scorer(cls):
    _SCORERS[cls.name] = cls
    return cls


def available_scorers() -> dict[str, type[Scorer]]:
    """Every registered scorer by name (the package's __init__ imports the built-in modules, which registers them)."""
    return dict(sorted(_SCORERS.items()))


def get_scorer(name: str, **params) -> Scorer:
    scorers = available_scorers()
    if name not in scorers:
        raise UserError(f"unknown scorer '{name}'{did_you_mean(name, scorers)}; available: {', '.join(scorers)}")
    return scorers[name](**params)
