"""Held-out evaluation on the user's own rows: a split carved from the pool before round 0 (never selected), or a
file in any pool format; heldout_loss and heldout_exact per label group, in eval.json, the summary and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import alpaca_rows
from test_evaluation import hand_loss
from test_loop_integration import write_recipe

from diverse_axolotl.cli import main
from diverse_axolotl.errors import UserError
from diverse_axolotl.evaluation import EvalSpec, HeldoutSpec, SplitSpec, carve_split, evaluate


def labelled_rows(n: int) -> list[dict]:
    """Alpaca rows with a `topic` label in three unequal groups (a: half, b: a third, c: the rest)."""
    topics = ["a", "a", "a", "b", "b", "c"]
    return [{**row, "topic": topics[i % 6]} for i, row in enumerate(alpaca_rows()[:n])]


def test_carve_is_seeded_stratified_and_disjoint():
    rows = labelled_rows(60)
    numbers = list(range(100, 160))  # pool row numbers differ from positions (as after skipped empty rows)
    keep, held = carve_split(
        rows, numbers, SplitSpec(rows=12, seed=3, stratify="topic"), None, "alpaca", Path("p.json")
    )
    again_keep, again = carve_split(
        rows, numbers, SplitSpec(rows=12, seed=3, stratify="topic"), None, "alpaca", Path("p.json")
    )
    assert keep == again_keep and held.rows == again.rows
    other = carve_split(rows, numbers, SplitSpec(rows=12, seed=4, stratify="topic"), None, "alpaca", Path("p.json"))[1]
    assert [r.index for r in other.rows] != [r.index for r in held.rows]
    carved = {r.index for r in held.rows}
    assert len(carved) == 12 and not carved & {numbers[i] for i in keep} and len(keep) == 48
    assert held.record()["groups"] == {"a": 6, "b": 4, "c": 2}  # 30:20:10 of the pool -> 6:4:2 of 12
    assert all(rows[r.index - 100] == r.row and r.group == r.row["topic"] for r in held.rows)
    plain = carve_split(rows, numbers, SplitSpec(rows=5), None, "alpaca", Path("p.json"))[1]
    assert {r.group for r in plain.rows} == {"all"} and len(plain.rows) == 5


def test_carve_and_spec_refuse_mistakes():
    rows = alpaca_rows()[:10]
    with pytest.raises(UserError, match="has no 'topic' field"):
        carve_split(rows, list(range(10)), SplitSpec(rows=2, stratify="topic"), None, "alpaca", Path("p.json"))
    with pytest.raises(UserError, match="only 10 usable rows"):
        carve_split(rows, list(range(10)), SplitSpec(rows=10), None, "alpaca", Path("p.json"))
    with pytest.raises(ValueError, match="one of file, split, sources"):
        HeldoutSpec(split={"rows": 5}, sources=["alpaca"])
    with pytest.raises(ValueError, match="label and format go with file or split"):
        HeldoutSpec(label="topic")
    assert HeldoutSpec().sources and HeldoutSpec(split={"rows": 5}).sources is None
    assert EvalSpec(tasks=["heldout_exact"], heldout={"file": "x.jsonl", "label": "topic"}).heldout.own
    with pytest.raises(UserError, match="carved from the pool by `diverse-axolotl run`"):
        HeldoutSpec(split={"rows": 5}).own_set()


def test_a_heldout_file_is_scored_per_label(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from diverse_axolotl.data import prompt_and_response
    from diverse_axolotl.models import load_tokenizer

    rows = labelled_rows(9)
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = HeldoutSpec(file=path, label="topic", max_new_tokens=4)
    result = evaluate(tiny_model, None, ["heldout_loss", "heldout_exact"], batch_size=2, heldout=spec)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tok = load_tokenizer(tiny_model)
    expected = {}
    for topic in ("a", "b", "c"):
        expected[topic] = np.mean(
            [hand_loss(model, tok, *prompt_and_response(r, "alpaca")) for r in rows if r["topic"] == topic]
        )
        assert result["metrics"][f"heldout_loss/{topic}"] == pytest.approx(expected[topic], rel=1e-4)
        size = sum(r["topic"] == topic for r in rows)
        assert result["metrics"][f"heldout_exact/{topic}"] * size == pytest.approx(
            round(result["metrics"][f"heldout_exact/{topic}"] * size)
        )
    assert result["metrics"]["heldout_loss"] == pytest.approx(np.mean(list(expected.values())), rel=1e-4)
    assert result["ours"]["heldout_set"]["groups"] == {"a": 6, "b": 2, "c": 1}


@pytest.mark.slow
def test_a_carved_split_is_never_selected_and_reported_per_group(tmp_path, tiny_model):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in labelled_rows(60)))
    recipe = write_recipe(tmp_path, tiny_model, pool, selection={"rounds": 2})
    recipe.write_text(
        recipe.read_text()
        + yaml.safe_dump(
            {
                "eval": {
                    "tasks": ["heldout_loss", "heldout_exact"],
                    "batch_size": 2,
                    "heldout": {
                        "split": {"rows": 12, "seed": 1, "stratify": "topic"},
                        "max_length": 128,
                        "max_new_tokens": 4,
                    },
                }
            }
        )
    )
    assert CliRunner().invoke(main, ["validate", str(recipe), "--skip-axolotl"]).exit_code == 0
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    info = json.loads((run / "run.json").read_text())
    carved = set(info["heldout"]["file_rows"])
    assert len(carved) == 12 and info["heldout"]["groups"] == {"a": 6, "b": 4, "c": 2}
    pool_rows = [json.loads(line) for line in pool.read_text().splitlines()]
    held_texts = {json.dumps(pool_rows[i], sort_keys=True) for i in carved}
    for k in range(3):
        manifest = json.loads((run / f"round_{k}" / "manifest.json").read_text())
        assert len(manifest["file_rows"]) == 8 + 6 * k and not carved & set(manifest["file_rows"])
        trained = [json.loads(line) for line in (run / f"round_{k}" / "train.jsonl").read_text().splitlines()]
        assert trained == [pool_rows[i] for i in manifest["file_rows"]]  # file_rows are the pool's row numbers
        assert not held_texts & {json.dumps(r, sort_keys=True) for r in trained}
        if k < 2:  # selectors see the 48 rows left after the split, not the 60 of the file
            assert np.load(run / f"round_{k}" / "embeddings.npy").shape[0] == 48
    summary = json.loads((run / "summary.json").read_text())
    per_group = [f"{m}/{g}" for m in ("heldout_loss", "heldout_exact") for g in "abc"]
    for row in summary:
        assert {"heldout_loss", "heldout_exact", *per_group} <= set(row["metrics"])
        assert np.isfinite(row["metrics"]["heldout_loss/c"])
    report = CliRunner().invoke(main, ["report", str(run), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert all(name in markdown for name in per_group)


def test_rows_that_say_what_a_heldout_row_says_are_found_across_formats():
    from diverse_axolotl.evaluation import HeldoutSet, rows_in_heldout
    from diverse_axolotl.evaluation.own_data import HeldoutRow

    pool = alpaca_rows()[:10]
    chat = {
        "messages": [
            {"role": "user", "content": f" {pool[5]['instruction']}\n"},
            {"role": "assistant", "content": pool[5]["output"]},
        ]
    }
    assert not pool[5]["input"]  # an alpaca row without input reads as one user turn
    held = HeldoutSet(
        [
            HeldoutRow(0, "x", chat),
            HeldoutRow(
                1,
                "x",
                {
                    "messages": [
                        {"role": "user", "content": "nothing in the pool"},
                        {"role": "assistant", "content": "no"},
                    ]
                },
            ),
        ],
        "chat",
        "f",
    )
    assert rows_in_heldout(pool, "alpaca", held) == [5]
    same_format = HeldoutSet(
        [HeldoutRow(0, "x", pool[7]), HeldoutRow(1, "x", {**pool[2], "output": "other"})], "alpaca", "f"
    )
    assert rows_in_heldout(pool, "alpaca", same_format) == [7]
    with_input = pool[3]  # instruction and input become one user turn on two lines
    assert with_input["input"]
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": f"{with_input['instruction']}\n{with_input['input']}"},
        {"role": "assistant", "content": with_input["output"]},
    ]
    assert rows_in_heldout(pool, "alpaca", HeldoutSet([HeldoutRow(0, "x", {"messages": turns})], "chat", "f")) == [3]


def test_pool_rows_also_in_the_heldout_file_are_never_selected(tmp_path, tiny_model):
    from diverse_axolotl.loop import Loop
    from diverse_axolotl.recipe import load_recipe

    rows = labelled_rows(30)
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held = tmp_path / "heldout.jsonl"
    held.write_text("".join(json.dumps(rows[i]) + "\n" for i in (4, 11, 25)))
    recipe = write_recipe(tmp_path, tiny_model, pool)
    recipe.write_text(
        recipe.read_text()
        + yaml.safe_dump({"eval": {"tasks": ["heldout_loss"], "heldout": {"file": str(held), "label": "topic"}}})
    )
    said: list[str] = []
    loop = Loop(load_recipe(recipe), log=said.append)
    assert loop.file_rows == [i for i in range(30) if i not in (4, 11, 25)]
    assert loop.rows == [rows[i] for i in loop.file_rows]
    assert loop.pool_stats["heldout_overlap_removed"] == 3 and loop.pool_stats["rows"] == 27
    assert len(said) == 1 and "3 row(s) also in the held-out file" in said[0] and str(held) in said[0]


def test_a_resume_whose_heldout_rows_changed_is_refused(tmp_path, tiny_model):
    """The rounds' manifests count positions in the rows left for selection: if a held-out file's edit changes
    which pool rows are left out, resuming under the same recipe hash would read other rows."""
    from diverse_axolotl.loop import Loop
    from diverse_axolotl.recipe import load_recipe

    rows = labelled_rows(30)
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held = tmp_path / "heldout.jsonl"
    held.write_text(json.dumps(rows[4]) + "\n")
    recipe = write_recipe(tmp_path, tiny_model, pool)
    recipe.write_text(
        recipe.read_text()
        + yaml.safe_dump({"eval": {"tasks": ["heldout_loss"], "heldout": {"file": str(held), "label": "topic"}}})
    )
    first = Loop(load_recipe(recipe), log=lambda m: None)
    first.prepare()
    adapter = first.paths.adapter(0)  # round 0 trained, as far as the folder tells
    adapter.mkdir(parents=True)
    for name in ("adapter_model.safetensors", "adapter_config.json", "train_result.json"):
        (adapter / name).write_text("{}")
    Loop(load_recipe(recipe), log=lambda m: None).prepare(resume=True)  # nothing changed: resumes
    held.write_text(json.dumps(rows[4]) + "\n" + json.dumps(rows[9]) + "\n")
    with pytest.raises(UserError, match="selected from 29 pool rows, this recipe leaves 28"):
        Loop(load_recipe(recipe), log=lambda m: None).prepare(resume=True)
    said: list[str] = []
    Loop(load_recipe(recipe), log=said.append).prepare(force=True)
    assert any("--force: deleted the earlier run" in m for m in said)
