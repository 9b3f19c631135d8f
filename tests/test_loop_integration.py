"""End to end through the CLI with real Axolotl on the tiny model: artefacts, formats, k-center picks, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from diverse_axolotl.cli import main
from diverse_axolotl.selection import get_selector

CPU_AXOLOTL = {
    "adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_target_linear": True,
    "sequence_len": 128, "micro_batch_size": 4, "gradient_accumulation_steps": 1, "num_epochs": 1,
    "learning_rate": 0.001, "optimizer": "adamw_torch", "lr_scheduler": "constant", "train_on_inputs": False,
    "lora_mlp_kernel": False, "lora_qkv_kernel": False, "lora_o_kernel": False, "lora_embedding_kernel": False,
    "bf16": False, "fp16": False, "tf32": False, "attn_implementation": "sdpa", "dataset_num_proc": 1,
    "dataloader_num_workers": 0,
}


def write_recipe(folder, model, pool, selection=None, **axolotl):
    recipe = {
        "base_model": str(model), **CPU_AXOLOTL, **axolotl,
        "selection": {
            "pool": {"path": str(pool), "format": "alpaca"},
            "selector": {"name": "kcenter"},
            "seed_size": 8, "per_round": 6, "rounds": 2,
            "embedding": {"max_length": 128, "batch_tokens": 2048},
            **(selection or {}),
        },
        "output_dir": "run",
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.slow
def test_two_rounds_of_kcenter_through_the_cli(tmp_path, tiny_model, pool_file):
    recipe = write_recipe(tmp_path, tiny_model, pool_file)
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    pool = json.loads(pool_file.read_text())
    for k in range(3):
        assert (run / f"round_{k}" / "adapter" / "adapter_model.safetensors").is_file()
        rows = [json.loads(line) for line in (run / f"round_{k}" / "train.jsonl").read_text().splitlines()]
        assert len(rows) == 8 + 6 * k
        assert all(set(r) == {"instruction", "input", "output"} for r in rows)
        manifest = json.loads((run / f"round_{k}" / "manifest.json").read_text())
        assert len(set(manifest["indices"])) == len(rows)
        assert [pool[i] for i in manifest["indices"]] == rows
        assert manifest["entered_round"] == sorted(manifest["entered_round"])
    for k in range(2):
        emb = np.load(run / f"round_{k}" / "embeddings.npy")
        assert emb.shape == (len(pool), 32) and np.isfinite(emb).all()
        before = json.loads((run / f"round_{k}" / "manifest.json").read_text())["indices"]
        after = json.loads((run / f"round_{k + 1}" / "manifest.json").read_text())
        expected = get_selector("kcenter", device="cpu").select(emb, 6, already_selected=before)
        assert after["indices"][len(before):] == expected.tolist()
        assert after["selector"]["name"] == "kcenter"
    # The adapter changes the embeddings: round 0 and round 1 models embed differently.
    assert not np.allclose(np.load(run / "round_0" / "embeddings.npy"), np.load(run / "round_1" / "embeddings.npy"))
    summary = json.loads((run / "summary.json").read_text())
    assert [r["rows"] for r in summary] == [8, 14, 20]

    # Re-running the same recipe reuses every finished round (no retraining: adapters untouched).
    stamp = (run / "round_2" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    again = CliRunner().invoke(main, ["run", str(recipe), "--resume"])
    assert again.exit_code == 0, again.output
    assert (run / "round_2" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert "finished earlier" in again.output


@pytest.mark.slow
def test_a_different_recipe_in_the_same_folder_is_refused(tmp_path, tiny_model, pool_file):
    recipe = write_recipe(tmp_path, tiny_model, pool_file, selection={"rounds": 0})
    assert CliRunner().invoke(main, ["run", str(recipe)]).exit_code == 0
    recipe = write_recipe(tmp_path, tiny_model, pool_file, selection={"rounds": 0, "seed": 1})
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 1
    assert "different recipe" in result.output and "--force" in result.output


@pytest.mark.slow
@pytest.mark.parametrize(
    "selector, scored",
    [
        ({"name": "random"}, False),
        ({"name": "kmq", "n_clusters": 3}, False),
        ({"name": "iterative_kmq", "n_clusters": 3}, True),  # default scorer: perplexity of the trained rows
        ({"name": "least_confidence"}, True),
    ],
)
def test_swapping_the_selector_is_one_line(tmp_path, tiny_model, pool_file, selector, scored):
    recipe = write_recipe(tmp_path, tiny_model, pool_file, selection={"selector": selector, "rounds": 1})
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "run" / "round_1" / "manifest.json").read_text())
    assert manifest["selector"]["name"] == selector["name"]
    assert len(set(manifest["indices"])) == 8 + 6
    assert (tmp_path / "run" / "round_0" / "scores.npy").is_file() == scored
    if selector["name"] == "kmq":  # the clustering's objective is recorded with the picks
        assert manifest["selector_info"]["kmeans"]["objective"] > 0
    if selector["name"] == "least_confidence":
        scores = np.load(tmp_path / "run" / "round_0" / "scores.npy")
        new = manifest["indices"][8:]
        rest = np.setdiff1d(np.arange(len(scores)), manifest["indices"])
        # DiverseEvol's least confidence: the lowest mean max-logit is the least confident row
        assert scores[new].max() <= scores[rest].min()


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "eval" / "arc").is_dir(), reason="../shared/data is not here")
def test_every_round_is_evaluated_with_lm_eval(tmp_path, tiny_model, pool_file):
    recipe = write_recipe(tmp_path, tiny_model, pool_file, selection={"rounds": 1})
    text = recipe.read_text() + yaml.safe_dump({"eval": {
        "tasks": ["da_arc_easy", "heldout_loss"], "limit": 2, "batch_size": 2,
        "heldout": {"sources": ["alpaca"], "n_per_source": 2, "max_length": 128},
    }})
    recipe.write_text(text)
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    for k in range(2):
        report = json.loads((tmp_path / "run" / f"round_{k}" / "eval.json").read_text())
        assert "da_arc_easy" in report["lm_eval"]["results"]
        assert np.isfinite(report["metrics"]["heldout_loss"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert all("heldout_loss" in row["metrics"] for row in summary)


@pytest.mark.slow
def test_embeddings_are_reused_across_runs_only_for_the_same_adapter(tmp_path, tiny_model, pool_file):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    write_recipe(tmp_path / "a", tiny_model, pool_file, selection={"rounds": 1})
    write_recipe(tmp_path / "b", tiny_model, pool_file, selection={"rounds": 1})
    write_recipe(tmp_path / "c", tiny_model, pool_file, selection={"rounds": 1}, learning_rate=0.01)
    outputs = {}
    for name in ("a", "b", "c"):
        result = CliRunner().invoke(main, ["run", str(tmp_path / name / "recipe.yaml")])
        assert result.exit_code == 0, result.output
        outputs[name] = result.output
    assert "reused from the cache" not in outputs["a"]
    assert "round 0: embeddings reused from the cache" in outputs["b"]  # same data, seed, model: same adapter
    assert "reused from the cache" not in outputs["c"]  # another learning rate trains another adapter
    emb = {n: np.load(tmp_path / n / "run" / "round_0" / "embeddings.npy") for n in "abc"}
    assert np.array_equal(emb["a"], emb["b"]) and not np.allclose(emb["a"], emb["c"])
