"""One formatter for pydantic validation errors: every problem at once, one line each, `file: key: message`."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from diverse_axolotl.errors import format_validation_error, validation_lines


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    budget: int
    name: str = "x"


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inner: Inner
    rounds: int = 1

    @field_validator("rounds")
    @classmethod
    def _positive(cls, v):
        if v < 1:
            raise ValueError("rounds must be at least 1")
        return v


def _error(**data) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        Outer(**data)
    return info.value


def test_every_error_is_reported_one_line_each():
    exc = _error(inner={"budgte": 3, "name": 5}, rounds=0, extra_key=1)
    lines = validation_lines(exc, "recipe.yaml", model=Outer)
    assert len(lines) == len(exc.errors()) == 5
    assert "recipe.yaml: inner.budget: missing required key" in lines
    assert "recipe.yaml: inner.budgte: unknown key (did you mean 'budget'?); valid keys there: budget, name" in lines
    assert "recipe.yaml: inner.name: Input should be a valid string (got 5)" in lines
    assert "recipe.yaml: rounds: rounds must be at least 1" in lines
    assert "recipe.yaml: extra_key: unknown key; valid keys there: inner, rounds" in lines
    assert format_validation_error(exc, "recipe.yaml", model=Outer) == "\n".join(lines)


def test_prefix_and_no_source():
    exc = _error(inner={"budget": "many"})
    assert validation_lines(exc, prefix="selection.") == [
        "selection.inner.budget: Input should be a valid integer, unable to parse string as an integer (got 'many')"
    ]
