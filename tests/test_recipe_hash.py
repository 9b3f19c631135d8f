"""The recipe hash names the run, not its spelling; a base_model that is no local folder fails at `validate`."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from diverse_axolotl.cli import main
from diverse_axolotl.errors import UserError
from diverse_axolotl.recipe import load_recipe


def recipe_file(folder, model, selector=None, scorer=None, name="recipe.yaml", **selection):
    (folder / "pool.json").write_text(
        json.dumps([{"instruction": f"say {i}", "input": "", "output": f"{i}"} for i in range(20)])
    )
    block = {
        "pool": {"path": "pool.json"},
        "selector": selector or {"name": "kcenter"},
        "seed_size": 4,
        "per_round": 4,
        "rounds": 1,
        **selection,
    }
    if scorer is not None:
        block["scorer"] = scorer
    path = folder / name
    path.write_text(
        yaml.safe_dump({"base_model": str(model), "adapter": "lora", "selection": block, "output_dir": "run"})
    )
    return path


@pytest.mark.parametrize(
    "short, explicit",
    [
        ({"name": "kcenter"}, {"name": "kcenter", "device": "auto"}),
        ({"name": "iterative_kmq"}, {"name": "iterative_kmq", "n_clusters": 64, "update": "eq6", "niter": 20}),
    ],
)
def test_writing_a_default_out_is_the_same_run(tmp_path, tiny_model, short, explicit):
    a = load_recipe(recipe_file(tmp_path, tiny_model, short, name="a.yaml"))
    b = load_recipe(recipe_file(tmp_path, tiny_model, explicit, name="b.yaml"))
    assert a.hash == b.hash


def test_scorer_defaults_and_real_changes(tmp_path, tiny_model):
    sel = {"name": "iterative_kmq"}
    a = load_recipe(recipe_file(tmp_path, tiny_model, sel, {"name": "perplexity"}, name="a.yaml"))
    b = load_recipe(
        recipe_file(tmp_path, tiny_model, sel, {"name": "perplexity", "batch_tokens": 16384}, name="b.yaml")
    )
    c = load_recipe(recipe_file(tmp_path, tiny_model, sel, {"name": "perplexity", "batch_tokens": 8192}, name="c.yaml"))
    d = load_recipe(recipe_file(tmp_path, tiny_model, {"name": "kcenter", "device": "cpu"}, name="d.yaml"))
    e = load_recipe(recipe_file(tmp_path, tiny_model, name="e.yaml"))
    assert a.hash == b.hash != c.hash
    assert d.hash != e.hash  # a non-default value is a different run


@pytest.mark.parametrize("hub_id", ["HuggingFaceTB/SmolLM2-135M-Instruct", "gpt2"])
def test_a_hub_id_as_base_model_fails_at_validate_in_one_line(tmp_path, hub_id):
    path = recipe_file(tmp_path, hub_id)
    with pytest.raises(UserError, match="no local model folder"):
        load_recipe(path)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert f"base_model: no local model folder '{hub_id}'" in lines[0] and "never downloaded" in lines[0]


@pytest.mark.parametrize(
    "block, expected",
    [
        ({"selector": {"name": "kmq", "n_clusters": 8}}, "9b576d9d6dd3e900"),
        (
            {
                "selector": {"name": "iterative_kmq"},
                "scorer": {"name": "perplexity", "batch_tokens": 8192},
                "round0": "base",
            },
            "aadc22c2268106af",
        ),
    ],
)
def test_the_hash_of_an_existing_recipe_is_unchanged(block, expected):
    """Hashes computed before the recipe resolved its selector and scorer blocks once (commit 815d316): the run
    folders of earlier versions still match their recipes. (No file is read: a missing pool hashes as None.)"""
    from pathlib import Path

    from diverse_axolotl.recipe import Recipe

    recipe = Recipe(
        path=Path("/recipes/recipe.yaml"),
        output_dir=Path("/runs/run"),
        axolotl={"base_model": "/models/tiny", "adapter": "lora", "sequence_len": 128},
        selection={
            "pool": {"path": Path("/data/no-such-pool.json")},
            "seed_size": 4,
            "per_round": 4,
            "rounds": 2,
            **block,
        },
    )
    assert recipe.hash == expected
    assert recipe.resolved()["selection"]["selector"] == recipe.selection.selector.filled()  # recorded as hashed


def test_selector_and_scorer_blocks_are_resolved_once_into_their_params_models(tmp_path, tiny_model):
    from diverse_axolotl.scoring import SCORERS
    from diverse_axolotl.selection import selector_class

    recipe = load_recipe(
        recipe_file(tmp_path, tiny_model, {"name": "iterative_kmq", "niter": 5}, {"name": "perplexity"})
    )
    selector, scorer = recipe.selection.selector, recipe.selection.scorer
    assert isinstance(selector.validated, selector_class("iterative_kmq").Params) and selector.validated.niter == 5
    assert isinstance(scorer.validated, SCORERS.get("perplexity").Params)
    assert selector.build().params is selector.validated  # built from the validated model, not validated again


def test_every_problem_of_a_selector_block_is_named_at_once(tmp_path, tiny_model):
    path = recipe_file(tmp_path, tiny_model, {"name": "kcenter", "devise": "cpu", "dtype": "int4"})
    with pytest.raises(UserError) as err:
        load_recipe(path)
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{path}: selection.selector: ") for line in lines), lines
    assert "no parameter 'devise'" in lines[0] and "parameter 'dtype'" in lines[1]


@pytest.mark.parametrize(
    "block, expected",
    [
        # hashes from before k-center's levers and embedding.text existed (commit e27d0ae)
        ({"selector": {"name": "kcenter"}}, "5952ab946998b685"),
        (
            {"selector": {"name": "kcenter", "device": "cpu"}, "embedding": {"pooling": "last", "layer": 15}},
            "2fc4c25d6b1ff9ec",
        ),
    ],
)
def test_options_added_later_leave_old_recipes_hashes_alone(block, expected):
    """Parameters marked hash-neutral (k-center's normalize/outlier_*, embedding.text) enter the hash only when
    set to something other than their neutral value (the default, or for normalize and outlier_fraction the
    default they had before): run folders of earlier versions still match their recipes."""
    from pathlib import Path

    from diverse_axolotl.recipe import Recipe

    def recipe(**changes):
        selection = {"pool": {"path": Path("/data/no-such-pool.json")}, "seed_size": 4, "per_round": 4, "rounds": 2}
        selection.update(block)
        for key, value in changes.items():
            selection[key] = {**selection.get(key, {}), **value}
        return Recipe(
            path=Path("/recipes/recipe.yaml"),
            output_dir=Path("/runs/run"),
            axolotl={"base_model": "/models/tiny", "adapter": "lora", "sequence_len": 128},
            selection=selection,
        )

    plain = {"normalize": False, "outlier_fraction": 0.0}  # k-center's default until issue 17 turned both levers on
    whole = {"text": "prompt_response"}  # what k-center embedded until issue 17 (the prompt alone since)
    assert recipe(selector=plain, embedding=whole).hash == expected
    assert recipe(selector=plain).hash != expected  # the prompt alone: another run
    assert "normalize" in recipe().resolved()["selection"]["selector"]  # run.json still records every parameter
    # a recipe that leaves the levers out now means cosine k-center with outliers: a different run from before
    assert recipe().hash == recipe(selector={"normalize": True, "outlier_fraction": 0.05}).hash != expected
    assert recipe(selector={"normalize": True, "outlier_fraction": 0.0}).hash not in {recipe().hash, expected}
    changed = {
        recipe(selector={"normalize": True}).hash,
        recipe(selector={**plain, "outlier_fraction": 0.05}).hash,
        recipe(selector=plain, embedding={"text": "prompt"}).hash,
    }
    assert len(changed) == 3 and expected not in changed


def test_embedding_text_left_out_is_the_selectors_own():
    """k-center embeds the prompt alone unless the recipe says otherwise; every other selector prompt + answer."""
    from pathlib import Path

    from diverse_axolotl.recipe import Recipe

    def text(selector, **embedding):
        selection = {"pool": {"path": Path("/p.json")}, "seed_size": 4, "per_round": 4, "rounds": 1}
        selection.update(selector=selector, embedding=embedding)
        recipe = Recipe(path=Path("/r.yaml"), output_dir=Path("/o"), axolotl={"base_model": "/m"}, selection=selection)
        return recipe.selection.embedding.text, recipe.resolved()["selection"]["embedding"]["text"]

    assert text({"name": "kcenter"}) == ("prompt", "prompt")
    assert text({"name": "kcenter"}, text="prompt_response") == ("prompt_response", "prompt_response")
    assert text({"name": "kmq"}) == ("prompt_response", "prompt_response")
    assert text({"name": "kmq"}, text="prompt") == ("prompt", "prompt")


def test_prompt_only_embedding_text_and_its_cache_key(tiny_model):
    from transformers import AutoTokenizer

    from diverse_axolotl.embedding import pool_texts
    from diverse_axolotl.recipe import EmbeddingSpec
    from diverse_axolotl.result_cache import embedding_cache_key

    tok = AutoTokenizer.from_pretrained(tiny_model)
    rows = [{"instruction": "Name a colour.", "input": "", "output": "Blue, a very long answer " * 20}]
    both = pool_texts(rows, "alpaca", tok)[0]
    prompt = pool_texts(rows, "alpaca", tok, "prompt")[0]
    assert both.startswith(prompt) and "Name a colour." in prompt and "Blue" not in prompt
    default, explicit, other = (
        embedding_cache_key("pool", tiny_model, None, spec)
        for spec in (EmbeddingSpec(), EmbeddingSpec(text="prompt_response"), EmbeddingSpec(text="prompt"))
    )
    assert default == explicit != other


def test_shared_fs_changes_neither_the_recipe_hash_nor_the_cache_key(tiny_model):
    """`selection.embedding.shared_fs` says how the rows reach the file under torchrun, not what they are: an old
    recipe keeps its hash, and either value names the same run and the same cached embeddings."""
    from pathlib import Path

    from diverse_axolotl.recipe import EmbeddingSpec, Recipe
    from diverse_axolotl.result_cache import embedding_cache_key

    def recipe(**embedding):
        selection = {"pool": {"path": Path("/data/no-such-pool.json")}, "seed_size": 4, "per_round": 4, "rounds": 2}
        selection.update(
            selector={"name": "kcenter", "normalize": False, "outlier_fraction": 0.0},
            embedding={"text": "prompt_response", **embedding},
        )
        return Recipe(
            path=Path("/recipes/recipe.yaml"),
            output_dir=Path("/runs/run"),
            axolotl={"base_model": "/models/tiny", "adapter": "lora", "sequence_len": 128},
            selection=selection,
        )

    assert recipe().hash == recipe(shared_fs=True).hash == recipe(shared_fs=False).hash == "5952ab946998b685"
    assert recipe(shared_fs=False).resolved()["selection"]["embedding"]["shared_fs"] is False  # run.json has it
    keys = {embedding_cache_key("pool", tiny_model, None, EmbeddingSpec(shared_fs=v)) for v in (True, False)}
    assert len(keys) == 1


def test_the_stage_hands_shared_fs_to_embed_rows():
    """RoundStages.embed is the one caller of embed_rows in the loop: the recipe's value must reach it."""
    import inspect

    from diverse_axolotl.stages import RoundStages

    assert "shared_fs=spec.shared_fs" in inspect.getsource(RoundStages.embed)


def test_the_embedding_cache_key_of_default_settings_is_the_one_written_before_text_existed(tiny_model):
    """Embeddings cached before `text` and `shared_fs` were added keep their key: the payload then was exactly
    pool, model, adapter, pooling, layer, max_length and dtype (restated here by hand)."""
    import hashlib
    import json

    from diverse_axolotl.models import dtype_name
    from diverse_axolotl.recipe import EmbeddingSpec
    from diverse_axolotl.result_cache import embedding_cache_key, model_fingerprint

    spec = EmbeddingSpec(pooling="last", layer=1, max_length=64, batch_tokens=99, shared_fs=False)
    payload = {"pool": "p", "model": model_fingerprint(tiny_model), "adapter": None, "pooling": "last", "layer": 1}
    payload.update(max_length=64, dtype=dtype_name(spec.dtype, spec.device))
    before = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]
    assert embedding_cache_key("p", tiny_model, None, spec) == before


def test_embedding_cache_dir_expands_home_and_is_read_beside_the_recipe(tmp_path, tiny_model, monkeypatch):
    """`cache_dir: ~/x` is the user's home, a relative one sits beside the recipe (as every other recipe path);
    neither changes the run's hash (where embeddings are stored decides no result)."""
    from diverse_axolotl.recipe import load_recipe

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = load_recipe(recipe_file(tmp_path, tiny_model, name="a.yaml", embedding={"cache_dir": "~/emb"}))
    near = load_recipe(recipe_file(tmp_path, tiny_model, name="b.yaml", embedding={"cache_dir": "emb"}))
    assert home.selection.embedding.cache_dir == tmp_path / "home" / "emb"
    assert near.selection.embedding.cache_dir == tmp_path / "emb"
    assert home.hash == near.hash == load_recipe(recipe_file(tmp_path, tiny_model, name="c.yaml")).hash


def test_eval_cache_changes_no_result_and_no_hash(tmp_path, tiny_model):
    from diverse_axolotl.recipe import Recipe

    def recipe(**eval_block):
        return Recipe(
            path=tmp_path / "recipe.yaml",
            output_dir=tmp_path / "run",
            axolotl={"base_model": "/models/tiny", "adapter": "lora", "sequence_len": 128},
            selection={
                "pool": {"path": tmp_path / "none.json"},
                "selector": {"name": "random"},
                "seed_size": 4,
                "per_round": 4,
                "rounds": 2,
            },
            eval={"tasks": ["heldout_loss"], **eval_block},
        )

    assert recipe().hash == recipe(cache=False).hash == recipe(cache=True).hash != recipe(limit=3).hash
