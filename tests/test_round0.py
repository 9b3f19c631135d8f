"""`selection.round0: base`: round 0 chosen by the recipe's selector on the base model's embeddings (no adapter,
nothing trained before it), and the selector state that iterative_kmq carries from round to round."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_loop_integration import write_recipe

from diverse_axolotl.cli import main
from diverse_axolotl.errors import UserError
from diverse_axolotl.loop import RunPaths, read_selector_state, save_selector_state
from diverse_axolotl.recipe import load_recipe
from diverse_axolotl.selection import get_selector
from diverse_axolotl.selection.iterative_kmq import cluster_means, update_weights


# -- the recipe option ----------------------------------------------------------------------------------------
def test_round0_defaults_to_random_and_base_is_a_different_run(tmp_path, tiny_model, pool_file):
    random_run = load_recipe(write_recipe(tmp_path, tiny_model, pool_file))
    assert random_run.selection.round0 == "random"
    base_run = load_recipe(write_recipe(tmp_path, tiny_model, pool_file, {"round0": "base"}))
    assert base_run.selection.round0 == "base" and base_run.hash != random_run.hash


def test_a_bad_round0_is_one_line(tmp_path, tiny_model, pool_file):
    result = CliRunner().invoke(
        main, ["validate", str(write_recipe(tmp_path, tiny_model, pool_file, {"round0": "trained"}))]
    )
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "selection.round0" in result.output, result.output


# -- the state between rounds ---------------------------------------------------------------------------------
def _manifest_with(paths: RunPaths, k: int, fields: dict) -> None:
    paths.round_dir(k).mkdir(parents=True, exist_ok=True)
    paths.manifest(k).write_text(json.dumps({"round": k, "indices": [], "entered_round": [], "selector_state": fields}))


def test_the_selector_state_round_trips_through_the_round_files(tmp_path):
    paths = RunPaths(tmp_path)
    state = {
        "update": "eq6",
        "weights": [0.1 / 3, 0.7, 1 - 0.7 - 0.1 / 3],
        "shift": 0.0,
        "assignment": np.arange(9) % 3,
    }
    _manifest_with(paths, 1, save_selector_state(paths, 1, state))
    back = read_selector_state(paths, 1)
    assert back["weights"] == state["weights"]  # floats survive JSON exactly
    assert np.array_equal(back["assignment"], state["assignment"]) and back["assignment"].dtype == np.int64
    paths.manifest(2).parent.mkdir()
    paths.manifest(2).write_text(json.dumps({"round": 2, "indices": [], "entered_round": []}))
    assert read_selector_state(paths, 2) is None  # a selector without state
    np.savez(paths.selector_state(1), assignment=np.zeros(9, dtype=np.int64))  # changed behind the run's back
    with pytest.raises(UserError, match="cannot continue exactly"):
        read_selector_state(paths, 1)


# -- end to end with Axolotl ----------------------------------------------------------------------------------
def base_embeddings(model_dir, pool_file, prompt_only: bool = False) -> np.ndarray:
    """The pool embedded by the base model alone, recomputed here as the recipe's `embedding` block says
    (`prompt_only`: the prompt without its answer, what k-center embeds by default)."""
    from diverse_axolotl.data import prompt_and_response
    from diverse_axolotl.embedding import embed_rows
    from diverse_axolotl.models import load_model, load_tokenizer
    from diverse_axolotl.recipe import EmbeddingSpec

    tok = load_tokenizer(model_dir)
    parts = [prompt_and_response(r, "alpaca", tok) for r in json.loads(pool_file.read_text())]
    texts = [prompt if prompt_only else prompt + response for prompt, response in parts]
    spec = EmbeddingSpec(max_length=128, batch_tokens=2048)
    return np.asarray(embed_rows(load_model(model_dir, None, "cpu"), tok, texts, spec))


def count_pool_embeddings(monkeypatch) -> list[str]:
    """The progress label of every pool embedding the loop makes from now on (embedding.embed_rows wrapped)."""
    import diverse_axolotl.embedding as embedding

    calls: list[str] = []
    real = embedding.embed_rows

    def counting(*args, **kwargs):
        calls.append(kwargs.get("desc", ""))
        return real(*args, **kwargs)

    monkeypatch.setattr(embedding, "embed_rows", counting)
    return calls


def manifest(run, k) -> dict:
    return json.loads((run / f"round_{k}" / "manifest.json").read_text())


@pytest.mark.slow
def test_round0_base_is_kcenter_on_the_base_embeddings(tmp_path, tiny_model, pool_file):
    recipe = write_recipe(
        tmp_path,
        tiny_model,
        pool_file,
        {"round0": "base", "rounds": 0, "seed_size": 8, "selector": {"name": "kcenter", "device": "cpu"}},
    )
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    emb = base_embeddings(tiny_model, pool_file, prompt_only=True)
    np.testing.assert_allclose(np.load(run / "round_0" / "base_embeddings.npy"), emb, rtol=1e-5, atol=1e-6)
    expected = get_selector("kcenter", device="cpu").select(emb, 8, seed=0)
    m = manifest(run, 0)
    assert m["indices"] == expected.tolist()
    assert m["round0"] == "base" and m["selector"]["name"] == "kcenter"
    assert (run / "round_0" / "adapter" / "adapter_model.safetensors").is_file()  # and round 0 trained on them
    pool = json.loads(pool_file.read_text())
    rows = [json.loads(line) for line in (run / "round_0" / "train.jsonl").read_text().splitlines()]
    assert rows == [pool[i] for i in expected]

    # A second base run on the same pool and model finds the base embeddings in the cache before its round_0
    # folder exists (the CPU quality benchmark's second one-shot arm died there: FileNotFoundError).
    second = tmp_path / "second"
    second.mkdir()
    again = write_recipe(
        second,
        tiny_model,
        pool_file,
        {"round0": "base", "rounds": 0, "seed_size": 6, "selector": {"name": "kcenter", "device": "cpu"}},
    )
    result = CliRunner().invoke(main, ["run", str(again)])
    assert result.exit_code == 0, result.output
    assert "base model embeddings reused from the cache" in result.output
    assert manifest(second / "run", 0)["indices"] == expected[:6].tolist()  # farthest-first: a prefix


@pytest.mark.slow
def test_iterative_kmq_is_algorithm_1_from_a_kmq_draw_on_the_base_model(tmp_path, tiny_model, pool_file, monkeypatch):
    selector = {"name": "iterative_kmq", "n_clusters": 4}
    recipe = write_recipe(tmp_path, tiny_model, pool_file, {"round0": "base", "rounds": 1, "selector": selector})
    embedded = count_pool_embeddings(monkeypatch)
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    assert embedded == ["round 0: embedding with the base model"]  # clustered once, never re-embedded
    run = tmp_path / "run"
    emb = base_embeddings(tiny_model, pool_file)
    # round 0: a kMQ draw on the base model's embeddings
    m0 = manifest(run, 0)
    kmq = get_selector("kmq", n_clusters=4).select(emb, 8, seed=0)
    assert m0["indices"] == kmq.tolist()
    state0 = read_selector_state(RunPaths(run), 0)
    _, expected0 = get_selector("iterative_kmq", n_clusters=4).select_with_state(emb, 8, seed=0)
    assert np.array_equal(state0["assignment"], expected0["assignment"])
    # round 1: the same clusters, weights updated by Eq. 6 from the round-0 model's perplexities of its trained rows
    state1 = read_selector_state(RunPaths(run), 1)
    assert np.array_equal(state1["assignment"], state0["assignment"])
    selected = np.asarray(m0["indices"])
    scores = np.load(run / "round_0" / "scores.npy")
    means = cluster_means(state0["assignment"], 4, selected, scores)
    weights, _ = update_weights(state0["weights"], means, "eq6")
    np.testing.assert_allclose(state1["weights"], weights, rtol=1e-12)
    assert not (run / "round_0" / "embeddings.npy").exists()  # the clusters are in the state
    new, _ = get_selector("iterative_kmq", n_clusters=4).select_with_state(
        None, 6, selected, scores, seed=1, state=state0, n_rows=len(emb)
    )
    assert manifest(run, 1)["indices"][8:] == new.tolist()


@pytest.mark.slow
def test_iterative_kmq_from_a_random_round0_embeds_the_pool_once(tmp_path, tiny_model, pool_file, monkeypatch):
    """Round 0 is random; the first selection clusters round 0's adapter's embeddings; later rounds draw from
    those clusters (the state) without embedding the pool again: the picks are those the state alone gives."""
    selector = {"name": "iterative_kmq", "n_clusters": 3}
    recipe = write_recipe(tmp_path, tiny_model, pool_file, {"rounds": 2, "selector": selector})
    embedded = count_pool_embeddings(monkeypatch)
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    assert embedded == ["round 0: embedding"]
    assert (run / "round_0" / "embeddings.npy").is_file() and not (run / "round_1" / "embeddings.npy").exists()
    state1 = read_selector_state(RunPaths(run), 1)
    selected = np.asarray(manifest(run, 1)["indices"])
    new, _ = get_selector("iterative_kmq", n_clusters=3).select_with_state(
        None,
        6,
        selected,
        np.load(run / "round_1" / "scores.npy"),
        seed=2,
        state=state1,
        n_rows=len(state1["assignment"]),
    )
    assert manifest(run, 2)["indices"][len(selected) :] == new.tolist()
    # a re-run finds every round complete (no embeddings promised after round 0) and redoes none of them
    before = {p: p.stat().st_mtime_ns for p in run.glob("round_*/**/*") if p.is_file()}
    again = CliRunner().invoke(main, ["run", str(recipe)])
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in run.glob("round_*/**/*") if p.is_file()} == before
