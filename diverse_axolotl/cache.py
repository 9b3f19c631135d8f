"""The one folder where diverse-axolotl keeps what it can recompute: embeddings, logs of CLI verbs, lm-eval's task
index, the per-machine bf16 decision. $DIVERSE_AXOLOTL_CACHE, else $XDG_CACHE_HOME/diverse-axolotl (~/.cache)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "DIVERSE_AXOLOTL_CACHE"


def cache_root() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "diverse-axolotl"
    )
    return Path(root).expanduser()
