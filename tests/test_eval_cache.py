"""The evaluation cache: an evaluation is reused only when everything its numbers depend on is the same."""

from __future__ import annotations

import json

import pytest
from conftest import alpaca_rows

from diverse_axolotl.evaluation import EvalSpec, HeldoutSet
from diverse_axolotl.evaluation.cache import eval_cache_key, evaluate_spec_cached
from diverse_axolotl.evaluation.own_data import HeldoutRow


def held(rows) -> HeldoutSet:
    return HeldoutSet([HeldoutRow(i, "g", r) for i, r in enumerate(rows)], "alpaca", "split of pool.json (seed 0)")


def adapter_dir(path, weights: bytes):
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text('{"r": 8}')
    (path / "adapter_model.safetensors").write_bytes(weights)
    return path


def test_the_key_changes_with_each_thing_the_numbers_depend_on(tiny_model, tmp_path):
    spec = EvalSpec(tasks=["heldout_loss"], limit=5)
    own = held(alpaca_rows()[:6])
    a = adapter_dir(tmp_path / "a", b"weights")
    key = eval_cache_key(spec, tiny_model, a, own)
    assert key is not None
    assert eval_cache_key(spec, tiny_model, adapter_dir(tmp_path / "copy", b"weights"), own) == key  # same bytes
    different = {
        eval_cache_key(spec, tiny_model, adapter_dir(tmp_path / "b", b"other weights"), own),
        eval_cache_key(spec, tiny_model, None, own),
        eval_cache_key(EvalSpec(tasks=["heldout_loss"], limit=6), tiny_model, a, own),
        eval_cache_key(EvalSpec(tasks=["heldout_loss", "heldout_exact"], limit=5), tiny_model, a, own),
        eval_cache_key(spec, tiny_model, a, held(alpaca_rows()[1:7])),
    }
    # peft writes target_modules (a set) in any order, and a model card; our training record holds timings
    reordered = adapter_dir(tmp_path / "reordered", b"weights")
    (a / "adapter_config.json").write_text('{"r": 8, "target_modules": ["q_proj", "v_proj"]}')
    (reordered / "adapter_config.json").write_text('{"target_modules": ["v_proj", "q_proj"], "r": 8}')
    (reordered / "README.md").write_text("model card")
    (reordered / "train_result.json").write_text('{"seconds": 12.5}')
    key = eval_cache_key(spec, tiny_model, a, own)
    assert eval_cache_key(spec, tiny_model, reordered, own) == key
    (reordered / "adapter_config.json").write_text('{"target_modules": ["v_proj", "k_proj"], "r": 8}')
    different.add(eval_cache_key(spec, tiny_model, reordered, own))
    (a / "adapter_model.bin").write_bytes(b"more weights")  # any other file of the adapter folder counts
    different.add(eval_cache_key(spec, tiny_model, a, own))
    different.add(eval_cache_key(spec, tiny_model, adapter_dir(tmp_path / "copy", b"weights"), own, True))
    assert len(different) == 8 and key not in different


def test_the_key_follows_the_model_folder_and_this_packages_code(tiny_model, tmp_path, monkeypatch):
    import shutil

    from diverse_axolotl.evaluation import cache

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    spec, own = EvalSpec(tasks=["heldout_loss"]), held(alpaca_rows()[:3])
    key = eval_cache_key(spec, model, None, own)
    tok = next(p for p in model.iterdir() if p.name.startswith("tokenizer"))
    tok.write_text(tok.read_text() + " ")
    assert eval_cache_key(spec, model, None, own) != key
    key = eval_cache_key(spec, model, None, own)
    monkeypatch.setattr(cache, "_package_source_sha256", lambda: "edited code")
    assert eval_cache_key(spec, model, None, own) != key


def test_a_task_from_lm_evals_registry_is_never_cached(tiny_model, monkeypatch):
    from diverse_axolotl.evaluation import lm_tasks

    monkeypatch.setattr(lm_tasks, "registry_names", lambda: frozenset({"arc_easy"}))
    own = held(alpaca_rows()[:3])
    assert eval_cache_key(EvalSpec(tasks=["arc_easy", "heldout_loss"]), tiny_model, None, own) is None


def test_a_changed_data_file_is_a_different_evaluation(tiny_model, tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text(json.dumps(alpaca_rows()[0]) + "\n")
    spec = EvalSpec(tasks=["heldout_loss"], heldout={"file": str(heldout)})
    key = eval_cache_key(spec, tiny_model, None, None)
    heldout.write_text(json.dumps(alpaca_rows()[1]) + "\n")
    assert eval_cache_key(spec, tiny_model, None, None) != key


def test_a_second_identical_evaluation_is_read_from_the_cache(tiny_model, tmp_path):
    spec = EvalSpec(tasks=["heldout_loss"])
    own = held(alpaca_rows()[:4])
    calls: list[str] = []

    def fake_evaluation(out):
        def run():
            calls.append(str(out))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"metrics": {"heldout_loss": 1.25}, "meta": {"adapter": str(out.parent)}}))

        return run

    first, second, third = (tmp_path / name / "eval.json" for name in ("r0", "r1", "r2"))
    said: list[str] = []
    a, b = adapter_dir(tmp_path / "a", b"w"), adapter_dir(tmp_path / "b", b"w")
    assert not evaluate_spec_cached(spec, tiny_model, a, first, fake_evaluation(first), own, said.append)
    assert evaluate_spec_cached(spec, tiny_model, b, second, fake_evaluation(second), own, said.append)
    assert calls == [str(first)] and "found in the cache" in said[-1]
    got = json.loads(second.read_text())
    assert got["metrics"] == {"heldout_loss": 1.25}
    assert got["meta"]["cached_from"] == str(first.parent) and got["meta"]["adapter"] == str(b)
    assert "read from the cache" in (tmp_path / "r1" / "eval.log").read_text()
    # other held-out rows: evaluated again
    assert not evaluate_spec_cached(spec, tiny_model, b, third, fake_evaluation(third), held(alpaca_rows()[:5]))
    assert calls == [str(first), str(third)]
    # eval.cache: false, or an unreadable entry: evaluated again
    off = EvalSpec(tasks=["heldout_loss"], cache=False)
    assert not evaluate_spec_cached(off, tiny_model, b, second, fake_evaluation(second), own)
    from diverse_axolotl.evaluation.cache import cache_dir

    key = eval_cache_key(spec, tiny_model, b, own)
    (cache_dir() / f"{key}.json").write_text("{not json")
    assert not evaluate_spec_cached(spec, tiny_model, b, second, fake_evaluation(second), own)
    assert calls == [str(first), str(third), str(second), str(second)]
    assert json.loads((cache_dir() / f"{key}.json").read_text())["metrics"] == {"heldout_loss": 1.25}  # rewritten


@pytest.mark.parametrize("missing", ["data_dir", "data_root"])
def test_data_that_cannot_be_found_is_not_cached(tiny_model, monkeypatch, missing):
    monkeypatch.delenv("DIVERSE_AXOLOTL_EVAL_DATA", raising=False)
    monkeypatch.delenv("DIVERSE_AXOLOTL_DATA", raising=False)
    tasks = ["da_arc_easy"] if missing == "data_dir" else ["t0_exact"]
    assert eval_cache_key(EvalSpec(tasks=tasks), tiny_model, None, None) is None
