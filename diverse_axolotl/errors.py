"""One exception type for every mistake a user can fix; the CLI prints it as one line (one line per problem when a
file has several), and one formatter for pydantic's validation errors so that every config reads alike."""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """A problem with the user's input (recipe, pool, model, arrays), explained in one line."""


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _model_at(model: Any, loc: list[str]) -> Any:
    """The pydantic model that holds the key at `loc` (walking nested models from `model`), or None."""
    from pydantic import BaseModel

    for key in loc:
        field = getattr(model, "model_fields", {}).get(key)
        if field is None:
            return None
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                model = cand
                break
        else:
            return None
    return model


def validation_lines(exc, source: str = "", prefix: str = "", model: Any = None) -> list[str]:
    """Every error of a pydantic ValidationError, one line each: `source: key: message`.

    `prefix` goes before each key (e.g. "eval." for a block validated on its own); with `model` (the validated class)
    an unknown key also gets a did-you-mean and the keys valid at that place."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = prefix + ".".join(loc)
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            holder = _model_at(model, loc[:-1]) if model is not None else None
            valid = sorted(holder.model_fields) if holder is not None else []
            msg = (
                "unknown key"
                + did_you_mean(loc[-1], valid)
                + (f"; valid keys there: {', '.join(valid)}" if valid else "")
            )
        elif err["type"] == "missing":
            msg = "missing required key"
        elif err["type"] != "value_error" and "input" in err and not isinstance(err["input"], dict):
            msg += f" (got {err['input']!r})"
        parts = [p for p in (source, key) if p]
        lines.append(": ".join([*parts, msg]))
    return lines


def format_validation_error(exc, source: str = "", prefix: str = "", model: Any = None) -> str:
    """All of a ValidationError's problems at once, one line each (see `validation_lines`)."""
    return "\n".join(validation_lines(exc, source, prefix, model))
