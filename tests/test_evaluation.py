"""Evaluation (lm-eval task YAMLs on local files, our held-out metrics) and the report, on the tiny random Llama."""

from __future__ import annotations

import json
import lzma
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, alpaca_rows
from fakes import fake_run

from diverse_axolotl.errors import UserError
from diverse_axolotl.evaluation import (
    EvalSpec,
    HeldoutSpec,
    evaluate,
    exact_match,
    flat_metrics,
    greedy_generate,
    heldout_ids,
    heldout_loss,
    heldout_rows,
    json_safe,
    lm_eval_tasks,
    parse_tasks,
    tasks_dir,
)
from diverse_axolotl.report import coverage_radius, mean_nn_distance, vendi_score, write_report

EVAL_DATA = ROOT.parent / "shared" / "data" / "eval"
needs_eval_data = pytest.mark.skipif(not (EVAL_DATA / "arc").is_dir(), reason="../shared/data/eval is not here")


def strict_json(path: Path):
    """json.loads that refuses NaN/Infinity (what other JSON readers do)."""

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


# ------------------------------------------------------------------------------------------- task names, YAMLs
def test_task_index_names_and_parsing():
    names = lm_eval_tasks()
    for task in ("da_arc_easy", "da_arc_challenge", "da_gsm8k", "da_ifeval", "da_mmlu", "da_humaneval", "da_mbpp"):
        assert task in names
    assert sum(n.startswith("da_mmlu_") for n in names) == 57 + 4  # subjects + categories
    parsed = parse_tasks("da_arc_easy, da_mmlu:5,heldout_loss")
    assert [(r.name, r.num_fewshot) for r in parsed] == [("da_arc_easy", None), ("da_mmlu", 5), ("heldout_loss", None)]
    # Names without our prefix are lm-eval's own tasks, from its registry.
    assert [r.name for r in parse_tasks("arc_easy,hellaswag,mmlu")] == ["arc_easy", "hellaswag", "mmlu"]
    with pytest.raises(
        UserError, match=r"unknown evaluation task 'arc_eazy'.*did you mean.*ours: .*da_arc_easy.*t0_exact"
    ):
        parse_tasks(["arc_eazy"])
    with pytest.raises(UserError, match="named twice"):
        parse_tasks("da_arc_easy,da_arc_easy")
    with pytest.raises(UserError, match="TASK:N"):
        parse_tasks("heldout_loss:3")


def test_eval_spec_validation():
    spec = EvalSpec(tasks=["da_arc_easy", "heldout_loss"], limit=5, batch_size=2)
    assert spec.every_round and spec.heldout.n_per_source == 64
    with pytest.raises(ValueError, match="unknown evaluation task"):
        EvalSpec(tasks=["hellaswagg"])
    with pytest.raises(ValueError, match="extra"):
        EvalSpec(tasks=["da_arc_easy"], bogus=1)
    with pytest.raises(ValueError, match="unknown source"):
        HeldoutSpec(sources=["alpacca"])


def test_shipped_yamls_read_the_data_dir_given_as_metadata(tmp_path):
    """No placeholder, no copy: lm-eval's TaskManager loads our YAML from the package and the data folder arrives
    as task metadata (custom_dataset hook)."""
    from lm_eval.tasks import get_task_dict

    from diverse_axolotl.evaluation.lm_tasks import task_manager

    texts = "".join(p.read_text() for p in tasks_dir().rglob("*.yaml"))
    assert "${DATA_DIR}" not in texts and "../shared" not in texts
    data = tmp_path / "my eval data"
    (data / "arc").mkdir(parents=True)
    row = {
        "id": "q1",
        "question": {"stem": "2+2?", "choices": [{"text": "4", "label": "A"}, {"text": "5", "label": "B"}]},
        "answerKey": "A",
    }
    for split in ("Train", "Dev", "Test"):
        (data / "arc" / f"ARC-Easy-{split}.jsonl").write_text(json.dumps(row) + "\n")
    task = get_task_dict(["da_arc_easy"], task_manager(["da_arc_easy"], data))["da_arc_easy"]
    docs = list(task.test_docs())
    assert len(docs) == 1 and docs[0]["question"] == "2+2?" and docs[0]["choices"]["text"] == ["4", "5"]


def test_unknown_task_and_missing_data_are_user_errors(tiny_model, tmp_path):
    with pytest.raises(UserError, match="unknown evaluation task"):
        evaluate(tiny_model, None, "hellaswagg", out_file=tmp_path / "e.json")
    with pytest.raises(UserError, match="evaluation data folder .* not found"):
        evaluate(tiny_model, None, "da_arc_easy", data_dir=tmp_path / "nowhere")
    with pytest.raises(UserError, match="allow_code_execution"):
        evaluate(tiny_model, None, "da_humaneval", data_dir=tmp_path)
    assert not (tmp_path / "e.json").exists()


def test_ifeval_checks_need_no_nltk_data():
    import importlib.util

    spec = importlib.util.spec_from_file_location("da_eval_utils", tasks_dir() / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = {
        "key": 1,
        "prompt": "Answer in at least 3 sentences, with at least 2 words in capitals.",
        "instruction_id_list": ["length_constraints:number_sentences", "change_case:capital_word_frequency"],
        "kwargs": [
            {"num_sentences": 3, "relation": "at least"},
            {"capital_frequency": 2, "capital_relation": "at least"},
        ],
    }
    ok = utils.process_ifeval(doc, ["The SUN rose. Dr. Smith woke up. It was a GOOD day!"])
    assert ok["prompt_level_strict_acc"] is True and ok["inst_level_strict_acc"] == [True, True]
    bad = utils.process_ifeval(doc, ["One sentence only."])
    assert bad["inst_level_strict_acc"] == [False, False]


# --------------------------------------------------------------------------------- lm-eval tasks, tiny model
@needs_eval_data
def test_lm_eval_tasks_score_the_tiny_model(tiny_model, tmp_path):
    out = tmp_path / "round_0" / "eval.json"
    result = evaluate(
        tiny_model, None, "da_arc_easy,da_gsm8k,da_ifeval", limit=2, batch_size=2, out_file=out, max_gen_toks=8
    )
    saved = strict_json(out)
    assert saved["metrics"] == result["metrics"]
    lm = saved["lm_eval"]
    assert set(lm["results"]) == {"da_arc_easy", "da_gsm8k", "da_ifeval"}
    assert lm["n-shot"]["da_gsm8k"] == 5 and lm["n-samples"]["da_arc_easy"]["effective"] == 2
    m = saved["metrics"]
    for key in (
        "da_arc_easy/acc",
        "da_arc_easy/acc_norm",
        "da_gsm8k/exact_match/strict-match",
        "da_gsm8k/exact_match/flexible-extract",
        "da_ifeval/prompt_level_strict_acc",
        "da_ifeval/inst_level_loose_acc",
    ):
        assert 0.0 <= m[key] <= 1.0, key
    log = out.with_suffix(".log").read_text()
    assert "lm_eval" in log and "Running loglikelihood requests" in log


# -------------------------------------------------------------------------------------- held-out metrics
def fake_data_root(root: Path) -> Path:
    """pools/alpaca (12 rows), pools/code_alpaca (2 rows with over-long prompts), pools/t0 (3 templates x 4 rows)."""
    (root / "pools" / "alpaca").mkdir(parents=True)
    (root / "pools" / "alpaca" / "alpaca_5000.json").write_text(json.dumps(alpaca_rows()[:12]))
    (root / "pools" / "code_alpaca").mkdir(parents=True)
    long_rows = [
        {
            "instruction": " ".join(r["instruction"] for r in alpaca_rows()[i : i + 40]),
            "input": "",
            "output": alpaca_rows()[i]["output"][:40],
        }
        for i in (0, 50)
    ]
    (root / "pools" / "code_alpaca" / "code_alpaca_2k.json").write_text(json.dumps(long_rows))
    t0 = []
    for template in ("tpl_a", "tpl_b", "tpl_c"):
        for j in range(4):
            r = alpaca_rows()[len(t0)]
            # a raw U+2028 inside a prompt: JSON-legal, and a line break to str.splitlines()
            t0.append(
                {
                    "template": template,
                    "prompt": r["instruction"] + "\u2028" + str(j),
                    "completion": " yes<|endoftext|>",
                }
            )
    with lzma.open(root / "pools" / "t0_train_50k.jsonl.xz", "wt", encoding="utf-8") as fh:
        fh.write("\n".join(json.dumps(row, ensure_ascii=False) for row in t0) + "\n")
    return root


def hand_loss(model, tok, prompt: str, response: str, max_length: int = 10_000) -> float:
    """Mean NLL of the response tokens (+EOS) given the prompt, prompt cut from the left, with plain labels."""
    import torch

    p_ids = tok(prompt)["input_ids"]
    r_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    p_ids = p_ids[-(max_length - len(r_ids)) :]
    ids = torch.tensor([p_ids + r_ids])
    labels = torch.tensor([[-100] * len(p_ids) + r_ids])
    with torch.no_grad():
        return float(model(input_ids=ids, labels=labels).loss)


def test_heldout_rows_are_deterministic_and_nested(tmp_path):
    root = fake_data_root(tmp_path / "data")
    a = heldout_rows("alpaca", 5, seed=3, data_root=root)
    assert [r.index for r in a] == [r.index for r in heldout_rows("alpaca", 5, seed=3, data_root=root)]
    assert [r.index for r in a] != [r.index for r in heldout_rows("alpaca", 5, seed=4, data_root=root)]
    assert {r.index for r in heldout_rows("alpaca", 2, seed=3, data_root=root)} <= {r.index for r in a}
    t0 = heldout_rows("t0", 2, seed=0, data_root=root)
    assert len(t0) == 6 and {r.group for r in t0} == {"tpl_a", "tpl_b", "tpl_c"}
    assert all(r.row["output"] == " yes" and "\u2028" in r.row["instruction"] for r in t0)
    assert heldout_ids("t0", 2, 0, root) == [r.index for r in t0]
    spec = HeldoutSpec(sources=["alpaca"], n_per_source=4, data_root=root)
    excluded = spec.excluded_ids()
    assert set(excluded) == {"alpaca", "t0"} and len(excluded["alpaca"]) == 4 and len(excluded["t0"]) == 6


def test_heldout_loss_and_t0_exact_match_a_hand_computation(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from diverse_axolotl.data import prompt_and_response
    from diverse_axolotl.models import load_tokenizer

    root = fake_data_root(tmp_path / "data")
    spec = HeldoutSpec(sources=["alpaca", "t0"], n_per_source=3, n_per_template=2, data_root=root)
    out = tmp_path / "eval.json"
    result = evaluate(tiny_model, None, ["heldout_loss", "t0_exact"], batch_size=2, out_file=out, heldout=spec)
    assert strict_json(out)["ours"]["heldout_loss"]["value"] == pytest.approx(result["ours"]["heldout_loss"]["value"])

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tok = load_tokenizer(tiny_model)
    per_source = {}
    for source in ("alpaca", "t0"):
        rows = spec.rows(source)
        per_source[source] = np.mean([hand_loss(model, tok, *prompt_and_response(r.row, "alpaca")) for r in rows])
    ours = result["ours"]["heldout_loss"]
    for source, value in per_source.items():
        assert ours["per_source"][source]["loss"] == pytest.approx(value, rel=1e-4)
    assert ours["value"] == pytest.approx(np.mean(list(per_source.values())), rel=1e-4)
    assert result["metrics"]["heldout_loss"] == pytest.approx(ours["value"])

    exact = result["ours"]["t0_exact"]
    assert exact["templates"] == 3 and exact["rows"] == 6
    assert all(v in (0.0, 0.5, 1.0) for v in exact["per_template"].values())
    assert exact["value"] == pytest.approx(np.mean(list(exact["per_template"].values())))


@needs_eval_data
def test_adapter_reaches_lm_eval_and_our_metrics(tiny_model, tmp_path):
    """lm-eval and heldout_loss share one model: base + adapter merged; it must equal load_model(base, adapter)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from diverse_axolotl.models import load_model, load_tokenizer

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    lora = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)
    root = fake_data_root(tmp_path / "data")
    spec = HeldoutSpec(sources=["alpaca"], n_per_source=3, data_root=root)
    result = evaluate(tiny_model, adapter, "da_arc_easy,heldout_loss", limit=2, batch_size=2, heldout=spec)
    assert 0.0 <= result["metrics"]["da_arc_easy/acc"] <= 1.0
    tok = load_tokenizer(tiny_model)
    with_adapter = heldout_loss(load_model(tiny_model, adapter, device="cpu"), tok, spec, limit=2)["value"]
    without = heldout_loss(load_model(tiny_model, None, device="cpu"), tok, spec, limit=2)["value"]
    assert result["ours"]["heldout_loss"]["per_source"]["alpaca"]["rows"] == 2  # limit caps held-out rows too
    assert result["metrics"]["heldout_loss"] == pytest.approx(with_adapter, rel=1e-5)
    assert abs(with_adapter - without) > 1e-4


def test_left_truncation_keeps_the_answer(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from diverse_axolotl.data import prompt_and_response
    from diverse_axolotl.models import load_tokenizer

    root = fake_data_root(tmp_path / "data")
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tok = load_tokenizer(tiny_model)
    spec = HeldoutSpec(sources=["code_alpaca"], n_per_source=2, max_length=48, data_root=root)
    rows = spec.rows("code_alpaca")
    assert all(len(tok(prompt_and_response(r.row, "alpaca")[0])["input_ids"]) > 300 for r in rows)
    result = heldout_loss(model, tok, spec)
    assert math.isfinite(result["value"])
    expected = np.mean([hand_loss(model, tok, *prompt_and_response(r.row, "alpaca"), max_length=48) for r in rows])
    assert result["value"] == pytest.approx(expected, rel=1e-4)


def test_batched_greedy_generation_matches_one_by_one(tiny_model):
    from transformers import AutoModelForCausalLM

    from diverse_axolotl.models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tok = load_tokenizer(tiny_model)
    prompts = [r["instruction"] for r in alpaca_rows()[:4]]
    batched = greedy_generate(model, tok, prompts, [6, 3, 6, 5], max_length=128)
    single = [
        greedy_generate(model, tok, [p], [n], max_length=128)[0] for p, n in zip(prompts, [6, 3, 6, 5], strict=True)
    ]
    assert batched == single


def test_exact_match_normalisation():
    assert exact_match(" Yes<|endoftext|>\n", "yes")
    assert exact_match("Paris", " paris<|endoftext|>")
    assert not exact_match("yes, it is", "yes")


def test_json_safe_and_flat_metrics():
    raw = {"a": np.float32(0.5), "b": float("nan"), "c": (1, np.int64(2)), "f": len, 3: {"x": np.array([1.0])}}
    safe = json_safe(raw)
    assert safe == {"a": 0.5, "b": None, "c": [1, 2], "f": "<function builtins.len>", "3": {"x": [1.0]}}
    result = {
        "lm_eval": {
            "results": {
                "da_gsm8k": {"alias": "x", "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.1},
                "da_arc_easy": {"acc,none": 0.5, "acc_stderr,none": "N/A"},
            }
        },
        "ours": {"heldout_loss": {"value": 2.5}},
        "meta": {"tasks": ["da_arc_easy", "da_gsm8k", "heldout_loss"]},
    }
    assert flat_metrics(result) == {
        "da_arc_easy/acc": 0.5,
        "da_gsm8k/exact_match/strict-match": 0.25,
        "heldout_loss": 2.5,
    }


# --------------------------------------------------------------------------------------------------- report
def test_vendi_score_bounds():
    rng = np.random.default_rng(0)
    row = rng.standard_normal(16)
    assert vendi_score(np.tile(row, (5, 1))) == pytest.approx(1.0)
    assert vendi_score(np.tile(row, (5, 1)) * np.arange(1, 6)[:, None]) == pytest.approx(1.0)  # cosine: scale-free
    assert vendi_score(np.eye(7, 16)) == pytest.approx(7.0)
    # two identical pairs of orthogonal rows: eigenvalues (1/2, 1/2) -> 2
    assert vendi_score(np.array([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])) == pytest.approx(2.0)
    many = rng.standard_normal((50, 8))
    assert 1.0 <= vendi_score(many) <= 8.0 + 1e-9  # at most the rank


def test_distances_by_hand():
    pts = np.array([[0.0, 0.0], [3.0, 0.0], [3.0, 4.0]])
    # nearest others: 0 -> 1 (3), 1 -> 0 (3), 2 -> 1 (4)
    assert mean_nn_distance(pts) == pytest.approx(10.0 / 3.0)
    pool = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [0.0, 2.0]])
    assert coverage_radius(pool, pool[[0]]) == pytest.approx(10.0)
    assert coverage_radius(pool, pool[[0, 2]]) == pytest.approx(2.0)
    assert coverage_radius(pool, pool) == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(mean_nn_distance(pts[:1]))


def test_report_renders_for_fake_runs(tmp_path):
    from matplotlib.image import imread

    rng = np.random.default_rng(0)
    runs = [
        fake_run(tmp_path / "runs" / "kc0", "kcenter", 0, 0.0, rng),
        fake_run(tmp_path / "runs" / "kc1", "kcenter", 1, 0.1, rng),
        fake_run(tmp_path / "runs" / "rand", "random", 0, -0.1, rng),
    ]
    out = tmp_path / "report"
    written = write_report(runs, out)
    names = {p.name for p in written["pngs"]}
    assert {
        "metric_train_loss.png",
        "metric_da_arc_easy_acc.png",
        "metric_heldout_loss.png",
        "diversity_vendi.png",
        "diversity_nn_distance.png",
        "diversity_coverage.png",
        "embedding_map_kcenter_seed_0.png",
        "timings_random_seed_0.png",
    } <= names
    for png in written["pngs"]:
        image = imread(png)
        assert image.shape[:2] == (480, 800), png.name
        assert image[..., :3].std() > 0.01, png.name  # something was drawn
    md = (out / "report.md").read_text()
    assert "| rows | kcenter seed 0 | kcenter seed 1 | random seed 0 | kcenter mean [min, max] |" in md
    assert "| 16 | 0.35 | 0.45 | 0.25 | 0.4 [0.35, 0.45] |" in md  # da_arc_easy/acc at round 1
    assert "![diversity_vendi" not in md and "(diversity_vendi.png)" in md
    page = (out / "report.html").read_text()
    assert page.count("<img") == len(written["pngs"]) and "<table>" in page


def test_report_rejects_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(UserError, match="not a run folder"):
        write_report([tmp_path], tmp_path / "out")


def test_cli_eval_and_report(tiny_model, tmp_path):
    from click.testing import CliRunner

    from diverse_axolotl.cli import main

    runner = CliRunner()
    bad = runner.invoke(main, ["eval", "--model", str(tiny_model), "--tasks", "arc_eesy"])
    assert bad.exit_code == 1 and "error: unknown evaluation task 'arc_eesy'" in bad.output
    run = fake_run(tmp_path / "run", "kcenter", 0, 0.0, np.random.default_rng(1))
    ok = runner.invoke(main, ["report", str(run), "--out", str(tmp_path / "rep")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "rep" / "report.html").is_file()


def test_coverage_of_sources_and_templates_by_hand(tmp_path):
    from diverse_axolotl.report import label_coverage, pool_labels

    labels = ["a", "a", "b", "c", None]
    share, table = label_coverage(labels, [0, 1, 3])
    assert share == pytest.approx(2 / 3) and table == {"a": (2, 2), "b": (0, 1), "c": (1, 1)}
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps([{"instruction": "x", "output": "y"}] * 3))
    (tmp_path / "pool_meta.json").write_text(
        json.dumps({"rows": [{"source": "s1"}, {"source": "s2", "template": "t"}, {"source": "s1"}]})
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"recipe": {"selection": {"pool": {"path": str(pool)}}}}))
    assert pool_labels(run) == {"source": ["s1", "s2", "s1"], "template": [None, "t", None]}


def test_report_shows_source_coverage(tmp_path):
    rng = np.random.default_rng(0)
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps([{"instruction": "x", "output": "y", "source": "abc"[i % 3]} for i in range(40)]))
    runs = [fake_run(tmp_path / name, name, 0, 0.0, rng) for name in ("kcenter", "random")]
    for run in runs:
        info = json.loads((run / "run.json").read_text())
        info["recipe"]["selection"]["pool"] = {"path": str(pool)}
        (run / "run.json").write_text(json.dumps(info))
    written = write_report(runs, tmp_path / "report")
    assert (tmp_path / "report" / "coverage_source.png").is_file()
    md = written["markdown"].read_text()
    assert "Coverage of sources and templates" in md and "Selected rows per source" in md


def test_an_lm_eval_builtin_task_runs_by_its_registry_name(tiny_model, tmp_path, monkeypatch):
    """`arc_easy` is lm-eval's own task: its registry config (prompt, choices, metrics) runs unchanged. Offline,
    its hub dataset is served here from a tiny local copy, as the Hugging Face datasets cache would serve it."""
    import datasets
    import lm_eval.api.task

    rows = [
        {
            "id": f"q{i}",
            "question": f"What is {i} + 1?",
            "choices": {"text": [str(i + 1), "7"], "label": ["A", "B"]},
            "answerKey": "A",
        }
        for i in range(3)
    ]
    asked = []

    def local_hub_copy(path=None, name=None, **kwargs):
        asked.append((path, name))
        split = datasets.Dataset.from_list(rows)
        return datasets.DatasetDict({"train": split, "validation": split, "test": split})

    monkeypatch.setattr(lm_eval.api.task.datasets, "load_dataset", local_hub_copy)
    result = evaluate(tiny_model, None, "arc_easy", limit=3, batch_size=2, out_file=tmp_path / "eval.json")
    assert asked == [("allenai/ai2_arc", "ARC-Easy")]  # lm-eval's own config named the dataset
    assert result["lm_eval"]["n-samples"]["arc_easy"]["effective"] == 3
    assert 0.0 <= result["metrics"]["arc_easy/acc"] <= 1.0
