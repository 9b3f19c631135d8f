"""Shared fixtures: a tiny random Llama with a locally trained tokenizer, and small pools (no downloads)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from diverse_axolotl.environment import OFFLINE_ENV

for _key, _value in {"OMP_NUM_THREADS": "1", **OFFLINE_ENV}.items():
    os.environ.setdefault(_key, _value)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
if SHARED_DATA.is_dir():  # the library has no default data folder; the tests may read the development copy
    os.environ.setdefault("DIVERSE_AXOLOTL_DATA", str(SHARED_DATA))
    os.environ.setdefault("DIVERSE_AXOLOTL_EVAL_DATA", str(SHARED_DATA / "eval"))


@pytest.fixture(autouse=True)
def _private_embedding_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own embedding cache (never the user's ~/.cache)."""
    monkeypatch.setenv("DIVERSE_AXOLOTL_CACHE", str(tmp_path_factory.mktemp("cache")))
FIXTURE_POOL = ROOT / "tests" / "data" / "alpaca_200.json"


def alpaca_rows() -> list[dict]:
    """200 real Alpaca rows shipped with the tests (a slice of ../shared/data/pools/alpaca/alpaca_5000.json)."""
    return json.loads(FIXTURE_POOL.read_text())


def build_tiny_model(folder: Path, hidden: int = 32, layers: int = 2) -> Path:
    """A random Llama (hidden 32, 2 layers) and a byte-level BPE tokenizer trained on the fixture pool."""
    from diverse_axolotl.testing import build_tiny_model as build

    return build(folder, (f"{r['instruction']} {r['input']} {r['output']}" for r in alpaca_rows()), hidden, layers)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def pool_file(tmp_path) -> Path:
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(alpaca_rows()[:60]))
    return path
