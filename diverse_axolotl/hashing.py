"""Which parameter values name a run: options added after a release must not rename the runs that do not use them.

The recipe hash covers every parameter with its default filled in, so that writing a default out is the same run
as leaving it out. A field added later would then change the hash of every existing recipe, and every earlier run
folder would be refused as "a different recipe". Such a field is marked `json_schema_extra=HASH_NEUTRAL`: at its
default it is left out of the hash (and of the embedding cache key), so an old recipe hashes as before; set to
anything else it enters like any other parameter.

A default that changes after a release is the same problem the other way round: the field is marked
`hash_neutral_at(old default)`, so recipes that spell the old value out keep their hash, while recipes that leave it
out now mean the new default and hash as a different run (a folder made under the old default is then refused, not
silently continued with the other behaviour).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

HASH_NEUTRAL: dict[str, Any] = {"hash_neutral_default": True}


def hash_neutral_at(value: Any) -> dict[str, Any]:
    """Mark a field whose default changed: at `value` (the old default) it is left out of the hash."""
    return {"hash_neutral_value": value}


def without_neutral_defaults(model: BaseModel, dumped: dict[str, Any]) -> dict[str, Any]:
    """`dumped` (a dump of `model`) minus the hash-neutral fields that hold their neutral value."""
    out = dict(dumped)
    for name, field in type(model).model_fields.items():
        extra = field.json_schema_extra
        if not isinstance(extra, dict):
            continue
        if "hash_neutral_value" in extra:
            neutral = extra["hash_neutral_value"]
        elif extra.get("hash_neutral_default"):
            neutral = field.default
        else:
            continue
        if getattr(model, name) == neutral:
            out.pop(name, None)
    return out
