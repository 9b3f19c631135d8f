"""Per-row scores are cached like embeddings: a second selector reading the same scorer (deita, then qdit, both on
IFD) scores nothing again, and anything that changes the numbers (scorer parameters, adapter, rows, reward model)
changes the key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_loop_integration import write_recipe

from diverse_axolotl.cli import main
from diverse_axolotl.recipe import EmbeddingSpec
from diverse_axolotl.result_cache import score_cache_key
from diverse_axolotl.scoring import get_scorer
from diverse_axolotl.selection import get_selector


def count_scoring(monkeypatch) -> list[str]:
    """The name of every scorer whose `score` runs from now on."""
    calls: list[str] = []
    for cls in {type(get_scorer(n)) for n in ("ifd", "perplexity_gap", "perplexity")}:
        real = cls.score

        def counting(self, *args, _real=real, **kwargs):
            calls.append(self.name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "score", counting)
    return calls


def test_the_key_follows_what_changes_the_numbers_and_nothing_else(tmp_path, tiny_model):
    spec = EmbeddingSpec(max_length=128)
    rows = np.arange(10)

    def key(scorer, spec=spec, rows=rows, adapter=None, pool="p"):
        return score_cache_key(pool, Path(tiny_model), adapter, spec, scorer.identity(), rows)

    ifd = key(get_scorer("ifd"))
    assert key(get_scorer("ifd", batch_tokens=512)) == ifd  # how the batches are cut is not what the scores are
    assert key(get_scorer("perplexity")) != ifd
    assert key(get_scorer("perplexity_gap", max_new_tokens=8)) != key(get_scorer("perplexity_gap", max_new_tokens=9))
    assert key(get_scorer("ifd"), spec=EmbeddingSpec(max_length=64)) != ifd
    assert key(get_scorer("ifd"), spec=EmbeddingSpec(max_length=128, dtype="bfloat16")) != key(
        get_scorer("ifd"), spec=EmbeddingSpec(max_length=128, dtype="float32")
    )
    assert key(get_scorer("ifd"), rows=np.arange(9)) != ifd
    assert key(get_scorer("ifd"), pool="q") != ifd
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"one")
    first = key(get_scorer("ifd"), adapter=adapter)
    assert first != ifd
    (adapter / "adapter_model.safetensors").write_bytes(b"two")  # other weights of the same size, same second
    assert key(get_scorer("ifd"), adapter=adapter) != first
    # the tokenizer and chat template are part of what a row's tokens are
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    before = score_cache_key("p", model, None, spec, get_scorer("ifd").identity(), rows)
    assert before == ifd  # a copy of the same folder: the same entry
    config = model / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "chat_template": "{{ messages }}"}))
    assert score_cache_key("p", model, None, spec, get_scorer("ifd").identity(), rows) != before
    # a reward model's own weights are part of what its scores are
    reward = tmp_path / "reward"
    shutil.copytree(tiny_model, reward)
    gap = get_scorer("reward_gap", reward_model=reward)
    before = key(gap)
    weights = next(reward.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b"\0")
    assert key(get_scorer("reward_gap", reward_model=reward)) != before


def _select(tmp_path, tiny_model, pool_file, selector: str, name: str):
    out = tmp_path / f"{name}.jsonl"
    args = ["select", pool_file, "--selector", selector, "--scorer", "ifd", "--budget", "6", "--model", tiny_model]
    result = CliRunner().invoke(main, [str(a) for a in [*args, "--out", out]])
    assert result.exit_code == 0, result.output
    return result.output, json.loads((tmp_path / f"{name}.manifest.json").read_text())


def test_select_scores_once_for_two_selectors_of_the_same_scorer(tmp_path, tiny_model, pool_file, monkeypatch):
    from diverse_axolotl.embedding import embed_rows, pool_texts
    from diverse_axolotl.models import load_model, load_tokenizer

    calls = count_scoring(monkeypatch)
    _select(tmp_path, tiny_model, pool_file, "deita", "deita")
    assert calls == ["ifd"]
    output, manifest = _select(tmp_path, tiny_model, pool_file, "qdit", "qdit")
    assert calls == ["ifd"], "qdit scored the pool again"
    assert "scores (ifd) reused from the cache" in output
    # the cached scores are IFD of the base model: qdit's picks on independently computed scores are the same
    pool = json.loads(pool_file.read_text())
    tok, model = load_tokenizer(tiny_model), load_model(tiny_model)
    spec = EmbeddingSpec()
    emb = np.asarray(embed_rows(model, tok, pool_texts(pool, "alpaca", tok), spec))
    ifd = get_scorer("ifd").score(model, tok, pool, "alpaca", max_length=spec.max_length)
    assert manifest["indices"] == get_selector("qdit").select(emb, 6, scores=np.asarray(ifd)).tolist()


@pytest.mark.slow
def test_a_second_recipe_reads_the_base_scores_of_the_first(tmp_path, tiny_model, pool_file, monkeypatch):
    calls = count_scoring(monkeypatch)
    runs = {}
    for selector in ("deita", "qdit"):
        folder = tmp_path / selector
        folder.mkdir()
        blocks = {"round0": "base", "rounds": 0, "seed_size": 6, "selector": {"name": selector}}
        recipe = write_recipe(folder, tiny_model, pool_file, {**blocks, "scorer": {"name": "ifd"}})
        result = CliRunner().invoke(main, ["run", str(recipe)])
        assert result.exit_code == 0, result.output
        runs[selector] = (result.output, np.load(folder / "run" / "round_0" / "base_scores.npy"))
    assert calls == ["ifd"]
    assert "round 0: base model scores (ifd) reused from the cache" in runs["qdit"][0]
    np.testing.assert_array_equal(runs["qdit"][1], runs["deita"][1])
    # no cache: scored again
    folder = tmp_path / "nocache"
    folder.mkdir()
    blocks = {"round0": "base", "rounds": 0, "seed_size": 6, "selector": {"name": "qdit"}, "scorer": {"name": "ifd"}}
    recipe = write_recipe(folder, tiny_model, pool_file, {**blocks, "embedding": {"cache": False, "max_length": 128}})
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    assert calls == ["ifd", "ifd"]
    np.testing.assert_allclose(np.load(folder / "run" / "round_0" / "base_scores.npy"), runs["deita"][1], rtol=1e-6)


def test_the_loop_takes_a_rounds_scores_from_the_cache_without_loading_a_model(
    tmp_path, tiny_model, pool_file, monkeypatch
):
    """After round 0 (the same rows, the same adapter bytes), a run of another recipe on the same scorer reads
    the first run's scores and embeddings from the cache: nothing is scored again and no model is loaded."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from diverse_axolotl.loop import Loop
    from diverse_axolotl.recipe import load_recipe
    from diverse_axolotl.stages import RoundStages

    calls = count_scoring(monkeypatch)
    loads: list[int | None] = []
    real_model = RoundStages.model

    def counting_model(self, k):
        loads.append(k)
        return real_model(self, k)

    monkeypatch.setattr(RoundStages, "model", counting_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")  # stands in for Axolotl's round-0 training, identical in both runs
    said: dict[str, list[str]] = {}
    for name, selector in {"first": {"name": "qdit"}, "second": {"name": "qdit", "alpha": 0.9}}.items():
        folder = tmp_path / name
        folder.mkdir()
        blocks = {"rounds": 1, "seed_size": 6, "per_round": 4, "selector": selector}
        recipe = write_recipe(folder, tiny_model, pool_file, {**blocks, "scorer": {"name": "ifd"}})
        said[name] = []
        loop = Loop(load_recipe(recipe), log=said[name].append)
        loop.prepare()
        loop.picker.seed_round()
        shutil.copytree(tmp_path / "adapter", loop.paths.adapter(0))
        loop.picker.select_next(0)
    assert calls == ["ifd"], "the second run scored the pool again"
    assert loads == [0], "the second run loaded a model though its embeddings and scores were cached"
    assert any("round 0: scores (ifd) reused from the cache" in line for line in said["second"])
    np.testing.assert_array_equal(
        np.load(tmp_path / "second" / "run" / "round_0" / "scores.npy"),
        np.load(tmp_path / "first" / "run" / "round_0" / "scores.npy"),
    )
