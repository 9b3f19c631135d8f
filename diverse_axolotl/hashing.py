"""Which parameter values name a run: options added after a release must not rename the runs that do not use them.

The recipe hash covers every parameter with its default filled in, so that writing a default out is the same run
as leaving it out. A field added later would then change the hash of every existing recipe, and every earlier run
folder would be refused as "a different recipe". Such a field is marked `json_schema_extra=HASH_NEUTRAL`: at its
default it is left out of the hash (and of the embedding cache key), so an old recipe hashes as before; set to
anything else it enters like any other parameter.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

HASH_NEUTRAL: dict[str, Any] = {"hash_neutral_default": True}


def without_neutral_defaults(model: BaseModel, dumped: dict[str, Any]) -> dict[str, Any]:
    """`dumped` (a dump of `model`) minus the hash-neutral fields that hold their default."""
    out = dict(dumped)
    for name, field in type(model).model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get("hash_neutral_default") and getattr(model, name) == field.default:
            out.pop(name, None)
    return out
