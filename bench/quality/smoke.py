"""What the smoke mode needs without a real model or the shared data: a tiny random Llama and a data root.

`build_tiny_model` is the tests' tiny random Llama (`diverse_axolotl.testing`) with its tokenizer trained on the
fixture pool.
`fixture_data_root` lays out `pools/alpaca/alpaca_5000.json` from tests/data/alpaca_200.json, which is what
`diverse_axolotl.evaluation.SOURCES['alpaca']` reads; held-out rows and the pool are then drawn from it exactly as
from the real file.
"""

from __future__ import annotations

import json
from pathlib import Path

from diverse_axolotl.data import atomic_path

from .config import REPO_ROOT

FIXTURE_POOL = REPO_ROOT / "tests" / "data" / "alpaca_200.json"


def fixture_rows() -> list[dict]:
    return json.loads(FIXTURE_POOL.read_text(encoding="utf-8"))


def build_tiny_model(folder: Path, hidden: int = 32, layers: int = 2) -> Path:
    """The tests' tiny random Llama (`diverse_axolotl.testing`), its tokenizer trained on the fixture pool."""
    from diverse_axolotl.testing import build_tiny_model as build

    return build(folder, (f"{r['instruction']} {r['input']} {r['output']}" for r in fixture_rows()), hidden, layers)


def fixture_data_root(root: Path) -> Path:
    """<root>/pools/alpaca/alpaca_5000.json holding the 200 fixture rows."""
    from diverse_axolotl.evaluation import SOURCES

    target = Path(root) / SOURCES["alpaca"].path
    text = FIXTURE_POOL.read_text(encoding="utf-8")
    if not (target.is_file() and target.read_text(encoding="utf-8") == text):
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return Path(root)
