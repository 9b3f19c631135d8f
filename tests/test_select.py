"""Issue 14: one-shot selection (`select` verb, Axolotl plugin) and the pool formats Axolotl users have."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import ROOT, alpaca_rows
from test_loop_integration import CPU_AXOLOTL

from diverse_axolotl.cli import main
from diverse_axolotl.oneshot import parse_budget, parse_params
from diverse_axolotl.selection import get_selector


def sharegpt(row: dict) -> dict:
    """An Alpaca row as a ShareGPT conversation."""
    question = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
    return {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": row["output"]}]}


def invoke(*args: str):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result, [line for line in result.output.splitlines() if line.strip()]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_budget_and_params_parse():
    assert [parse_budget(b, 200) for b in ("5%", "0.05", 0.05, "7", 7, "100%")] == [10, 10, 10, 7, 7, 200]
    for bad in ("0%", "0", "-3", "lots", "1.5"):
        with pytest.raises(Exception, match="budget"):
            parse_budget(bad, 200)
    with pytest.raises(Exception, match="only 200 usable rows"):
        parse_budget(201, 200)
    assert parse_params(["n_clusters=4", "device=cpu", "ratio=0.5", "flag=true"]) == {
        "n_clusters": 4,
        "device": "cpu",
        "ratio": 0.5,
        "flag": True,
    }


def test_select_embedding_text_overrides_the_selectors_own(tmp_path, tiny_model, pool_file):
    """`--embedding-text prompt_response`: k-center on prompt + answer, the paper's text, in one shot too."""
    from diverse_axolotl.embedding import embed_rows, pool_texts
    from diverse_axolotl.models import load_model, load_tokenizer
    from diverse_axolotl.recipe import EmbeddingSpec

    out = tmp_path / "subset.jsonl"
    args = ["--selector", "kcenter", "--param", "device=cpu", "--budget", "6", "--model", tiny_model, "--out", out]
    result, _ = invoke("select", pool_file, *args, "--embedding-text", "prompt_response")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "subset.manifest.json").read_text())
    tok, model = load_tokenizer(tiny_model), load_model(tiny_model, dtype="float32")
    pool = json.loads(pool_file.read_text())
    emb = embed_rows(model, tok, pool_texts(pool, "alpaca", tok), EmbeddingSpec(dtype="float32"))
    assert manifest["model"]["text"] == "prompt_response"
    assert manifest["indices"] == get_selector("kcenter", device="cpu").select(emb, 6).tolist()


def test_select_with_a_model_picks_what_the_selector_picks_on_its_embeddings(tmp_path, tiny_model, pool_file):
    from diverse_axolotl.embedding import embed_rows, pool_texts
    from diverse_axolotl.models import load_model, load_tokenizer
    from diverse_axolotl.recipe import EmbeddingSpec

    out = tmp_path / "subset.jsonl"
    result, lines = invoke(
        "select",
        pool_file,
        "--selector",
        "kcenter",
        "--param",
        "device=cpu",
        "--budget",
        "10%",
        "--model",
        tiny_model,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    pool = json.loads(pool_file.read_text())
    manifest = json.loads((tmp_path / "subset.manifest.json").read_text())
    assert len(manifest["indices"]) == 6 and read_jsonl(out) == [pool[i] for i in manifest["indices"]]
    # the loop's embedding of the base model, computed here independently: k-center embeds the prompt alone
    tok, model = load_tokenizer(tiny_model), load_model(tiny_model, dtype="float32")
    spec = EmbeddingSpec(dtype="float32", text="prompt")
    emb = embed_rows(model, tok, pool_texts(pool, "alpaca", tok, "prompt"), spec)
    assert manifest["indices"] == get_selector("kcenter", device="cpu").select(emb, 6).tolist()
    assert manifest["model"]["text"] == "prompt"
    assert manifest["selector"] == {
        "name": "kcenter",
        "params": get_selector("kcenter", device="cpu").params.model_dump(mode="json"),
    }
    assert manifest["model"]["kind"].startswith("causal LM") and manifest["embeddings"]["shape"] == [60, 32]
    assert manifest["pool"]["sha256"] and manifest["seed"] == 0
    assert lines[-1].endswith("subset.manifest.json") and "selected  6 rows with kcenter" in result.output
    # the second run reads the cache
    again, _ = invoke(
        "select",
        pool_file,
        "--selector",
        "kcenter",
        "--param",
        "device=cpu",
        "--budget",
        "6",
        "--model",
        tiny_model,
        "--out",
        tmp_path / "again.jsonl",
    )
    assert "reused from the cache" in again.output
    assert json.loads((tmp_path / "again.manifest.json").read_text())["indices"] == manifest["indices"]


def test_select_with_an_embeddings_file(tmp_path, pool_file):
    emb = np.random.default_rng(3).normal(size=(60, 8)).astype(np.float32)
    np.save(tmp_path / "emb.npy", emb)
    out = tmp_path / "picked.json"  # a JSON list, like the pool
    result, _ = invoke(
        "select",
        pool_file,
        "--selector",
        "kmq",
        "--param",
        "n_clusters=3",
        "--budget",
        "9",
        "--embeddings",
        tmp_path / "emb.npy",
        "--out",
        out,
        "--seed",
        "5",
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "picked.manifest.json").read_text())
    expected = get_selector("kmq", n_clusters=3).select(emb, 9, seed=5).tolist()
    assert manifest["indices"] == expected and manifest["seed"] == 5 and manifest["model"] is None
    assert json.loads(out.read_text()) == [json.loads(pool_file.read_text())[i] for i in expected]
    assert manifest["embeddings"]["file"] == str(tmp_path / "emb.npy")


@pytest.mark.parametrize(
    "array, fragment",
    [
        (np.zeros((59, 8), dtype=np.float32), "59 rows of embeddings, but the pool has 60 rows"),
        (np.zeros(60, dtype=np.float32), "expected a 2-D numeric array"),
        (np.where(np.arange(480).reshape(60, 8) == 100, np.nan, 1.0), "NaN or inf in 1 row(s), first: [12]"),
    ],
)
def test_a_bad_embeddings_file_is_one_line(tmp_path, pool_file, array, fragment):
    np.save(tmp_path / "emb.npy", array)
    result, lines = invoke(
        "select",
        pool_file,
        "--selector",
        "kcenter",
        "--budget",
        "5",
        "--embeddings",
        tmp_path / "emb.npy",
        "--out",
        tmp_path / "s.jsonl",
    )
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], (
        result.output
    )
    assert str(tmp_path / "emb.npy") in lines[0] and not (tmp_path / "s.jsonl").exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--selector", "kcentre", "--budget", "5"], "did you mean 'kcenter'"),
        (["--selector", "kcenter", "--param", "devise=cpu", "--budget", "5"], "no parameter 'devise'"),
        (["--selector", "kcenter", "--budget", "5"], "needs embeddings: pass --model DIR or --embeddings"),
        (["--selector", "random", "--budget", "500"], "only 60 usable rows"),
    ],
)
def test_select_mistakes_are_one_line(tmp_path, pool_file, args, fragment):
    result, lines = invoke("select", pool_file, *args, "--out", tmp_path / "s.jsonl")
    assert result.exit_code == 1 and len(lines) == 1 and fragment in lines[0], result.output


def test_select_with_a_local_encoder_is_mean_pooled_and_normalised(tmp_path, tiny_model, pool_file):
    """Any local HF encoder (here a tiny random BERT with the tiny tokenizer), sentence-transformers style."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    enc = tmp_path / "encoder"
    BertModel(
        BertConfig(
            vocab_size=len(AutoTokenizer.from_pretrained(tiny_model)),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    ).save_pretrained(enc)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(enc)
    result, _ = invoke(
        "select",
        pool_file,
        "--selector",
        "kcenter",
        "--param",
        "device=cpu",
        "--budget",
        "5",
        "--model",
        enc,
        "--out",
        tmp_path / "s.jsonl",
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "s.manifest.json").read_text())
    assert manifest["model"]["kind"].startswith("encoder") and manifest["embeddings"]["shape"] == [60, 16]
    emb = np.load(
        Path(os.environ["DIVERSE_AXOLOTL_CACHE"]) / "embeddings" / f"{manifest['embeddings']['cache_key']}.npy"
    )
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert manifest["indices"] == get_selector("kcenter", device="cpu").select(emb, 5).tolist()


# -- formats ----------------------------------------------------------------------------------------------------
def _recipe(folder: Path, model: Path, pool: dict, **selection) -> Path:
    recipe = {
        "base_model": str(model),
        **CPU_AXOLOTL,
        "selection": {
            "pool": pool,
            "selector": {"name": "kcenter", "device": "cpu"},
            "seed_size": 6,
            "per_round": 4,
            "rounds": 1,
            "embedding": {"max_length": 128, "batch_tokens": 2048},
            **selection,
        },
        "output_dir": "run",
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _save_to_disk(folder: Path, rows: list[dict], split: str | None = None) -> Path:
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_list(rows)
    (DatasetDict({split: ds}) if split else ds).save_to_disk(str(folder))
    return folder


FORMATS = {
    # name: (write the pool under tmp_path -> pool block of the recipe, verb arguments, rows in pool order)
    "sharegpt": lambda t, rows: (
        (t / "pool.jsonl").write_text("".join(json.dumps(sharegpt(r)) + "\n" for r in rows)),
        {"path": "pool.jsonl", "format": "sharegpt"},
        ["pool.jsonl"],
        [sharegpt(r) for r in rows],
    ),
    "save_to_disk": lambda t, rows: (
        _save_to_disk(t / "saved", rows, "train"),
        {"path": "saved", "split": "train"},
        ["saved", "--split", "train"],
        rows,
    ),
    "glob": lambda t, rows: (
        [
            (t / "parts").mkdir(),
            (t / "parts" / "a.json").write_text(json.dumps(rows[:25])),
            (t / "parts" / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[25:])),
        ],
        {"path": "parts/*.json*"},
        ["parts/a.json", "parts/b.jsonl"],
        rows,
    ),
    "axolotl_entry": lambda t, rows: (
        [
            (t / "data").mkdir(),
            (t / "data" / "train.jsonl").write_text("".join(json.dumps(sharegpt(r)) + "\n" for r in rows)),
        ],
        {
            "path": "data",
            "type": "chat_template",
            "data_files": ["train.jsonl"],
            "split": "train",
            "ds_type": "json",
            "field_messages": "conversations",
            "message_property_mappings": {"role": "from", "content": "value"},
        },
        ["data/train.jsonl"],
        [sharegpt(r) for r in rows],
    ),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_pool_format_validates_and_selects(tmp_path, tiny_model, name, monkeypatch):
    rows = alpaca_rows()[:40]
    _, pool_block, verb_pool, expected_rows = FORMATS[name](tmp_path, rows)
    result, _ = invoke("validate", _recipe(tmp_path, tiny_model, pool_block), "--skip-axolotl")
    assert result.exit_code == 0, result.output
    fmt = "sharegpt" if "sharegpt" in json.dumps(expected_rows[0]) or "conversations" in expected_rows[0] else "alpaca"
    assert f"(40 rows, format {fmt};" in result.output
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "subset.jsonl"
    result, _ = invoke(
        "select",
        *verb_pool,
        "--selector",
        "kcenter",
        "--param",
        "device=cpu",
        "--budget",
        "10%",
        "--model",
        tiny_model,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "subset.manifest.json").read_text())
    assert manifest["pool"]["format"] == fmt and manifest["pool"]["rows_read"] == 40
    assert read_jsonl(out) == [expected_rows[i] for i in manifest["indices"]] and len(manifest["indices"]) == 4


def test_the_round_dataset_entry_for_each_format(tmp_path):
    """Round files stay in the pool's format; the entry tells Axolotl how to read them."""
    from diverse_axolotl.training import axolotl_config

    def entry(fmt):
        return axolotl_config({}, tmp_path / "train.jsonl", fmt, tmp_path / "a", tmp_path / "p", 0)["datasets"][0]

    assert entry("sharegpt") == {
        "path": str(tmp_path / "train.jsonl"),
        "ds_type": "json",
        "type": "chat_template",
        "field_messages": "conversations",
        "message_property_mappings": {"role": "from", "content": "value"},
    }
    assert entry("chat")["field_messages"] == "messages" and entry("alpaca")["type"] == "alpaca"


def test_sharegpt_reads_as_chat_with_axolotls_role_mapping():
    from diverse_axolotl.data import prompt_and_response

    row = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "Q"},
            {"from": "gpt", "value": "A"},
        ]
    }
    chat = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"},
        ]
    }
    assert prompt_and_response(row, "sharegpt") == prompt_and_response(chat, "chat")
    assert prompt_and_response(row, "sharegpt")[1] == "A" and "<|user|>\nQ" in prompt_and_response(row, "sharegpt")[0]


@pytest.mark.slow
def test_a_run_over_a_sharegpt_pool_trains_on_sharegpt_round_files(tmp_path, tiny_model):
    rows = [sharegpt(r) for r in alpaca_rows()[:30]]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = _recipe(tmp_path, tiny_model, {"path": "pool.jsonl", "format": "sharegpt"})
    result, _ = invoke("run", recipe)
    assert result.exit_code == 0, result.output
    for k, n in ((0, 6), (1, 10)):
        round_dir = tmp_path / "run" / f"round_{k}"
        picks = json.loads((round_dir / "manifest.json").read_text())["indices"]
        assert read_jsonl(round_dir / "train.jsonl") == [rows[i] for i in picks] and len(picks) == n
        assert (round_dir / "adapter" / "adapter_model.safetensors").is_file()
        cfg = yaml.safe_load((round_dir / "axolotl.yaml").read_text())
        assert cfg["datasets"][0]["field_messages"] == "conversations"


# -- the Axolotl plugin ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_plugin_trains_exactly_the_selected_rows_through_axolotl_train(tmp_path, tiny_model):
    rows = alpaca_rows()[:50]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pool.json").write_text(json.dumps(rows))
    cfg = {
        "base_model": str(tiny_model),
        **CPU_AXOLOTL,
        "sequence_len": 512,
        "excess_length_strategy": "truncate",
        "datasets": [
            {"path": str(tmp_path / "data"), "data_files": ["pool.json"], "type": "alpaca", "ds_type": "json"}
        ],
        "dataset_prepared_path": str(tmp_path / "prepared"),
        "output_dir": str(tmp_path / "out"),
        "seed": 7,
        "plugins": ["diverse_axolotl.integrations.SelectionPlugin"],
        "diverse_selection": {"selector": "kcenter", "budget": 0.1, "embed_with": "base", "params": {"device": "cpu"}},
    }
    (tmp_path / "cfg.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "axolotl.cli.train", str(tmp_path / "cfg.yml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "out"
    manifest = json.loads((out / "diverse_selection.manifest.json").read_text())
    picks = manifest["indices"]
    assert len(picks) == 5 and manifest["selector"]["name"] == "kcenter" and manifest["seed"] == 7
    assert read_jsonl(out / "diverse_selection.jsonl") == [rows[i] for i in picks]
    assert (out / "adapter_model.safetensors").is_file()
    # what Axolotl tokenised and trained: exactly the selected rows' answers, each once
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prepared = [p for p in (tmp_path / "prepared").iterdir() if p.is_dir()]
    assert len(prepared) == 1
    trained = load_from_disk(str(prepared[0]))
    answers = sorted(
        tok.decode([t for t, lab in zip(r["input_ids"], r["labels"], strict=True) if lab != -100]).strip()
        for r in trained
    )
    expected = sorted(tok.decode(tok(rows[i]["output"], add_special_tokens=False)["input_ids"]).strip() for i in picks)
    assert len(answers) == 5 and all(a.startswith(e[:40]) for a, e in zip(answers, expected, strict=True)), (
        answers,
        expected,
    )
