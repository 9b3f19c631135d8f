"""Every kind of bad input gets one clear line naming the file (and key or line), exit code 1, no traceback."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from diverse_axolotl.cli import main

GOOD = {
    "base_model": "MODEL",
    "adapter": "lora",
    "sequence_len": 128,
    "selection": {
        "pool": {"path": "pool.json", "format": "alpaca"},
        "selector": {"name": "kcenter"},
        "seed_size": 4,
        "per_round": 4,
        "rounds": 2,
    },
    "output_dir": "run",
}


def _set(recipe: dict, dotted: str, value) -> dict:
    node = recipe
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return recipe


DELETE = object()
POOL_ROWS = [{"instruction": f"say {i}", "input": "", "output": f"{i}"} for i in range(20)]
SHAREGPT_ROWS = [
    {"conversations": [{"from": "human", "value": f"say {i}"}, {"from": "gpt", "value": f"{i}"}]} for i in range(20)
]
CHAT_ROWS = [
    {"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": f"{i}"}]} for i in range(20)
]

# (id, change to the recipe, raw pool file text or None for the good pool, expected fragments of the one line)
CASES = [
    ("not-yaml", "RAW:selection: [unclosed\n", None, ["recipe.yaml:", "not valid YAML"]),
    ("not-a-mapping", "RAW:- just\n- a list\n", None, ["recipe.yaml", "YAML mapping"]),
    (
        "misspelt-key",
        ("selection.seed_sise", 4),
        None,
        ["recipe.yaml", "unknown key 'selection.seed_sise'", "did you mean 'seed_size'"],
    ),
    ("wrong-type", ("selection.seed_size", "ten"), None, ["recipe.yaml", "selection.seed_size", "integer"]),
    (
        "missing-key",
        ("selection.per_round", DELETE),
        None,
        ["recipe.yaml", "missing required key 'selection.per_round'"],
    ),
    ("missing-block", ("selection", DELETE), None, ["recipe.yaml", "missing required key 'selection'"]),
    ("zero-size", ("selection.per_round", 0), None, ["recipe.yaml", "selection.per_round", "greater than 0"]),
    (
        "unknown-selector",
        ("selection.selector", {"name": "kcentre"}),
        None,
        ["unknown selector 'kcentre'", "did you mean 'kcenter'", "available:"],
    ),
    (
        "unknown-param",
        ("selection.selector", {"name": "kcenter", "devise": "cpu"}),
        None,
        ["no parameter 'devise'", "did you mean 'device'"],
    ),
    (
        "bad-param-value",
        ("selection.selector", {"name": "kcenter", "device": "tpu"}),
        None,
        ["parameter 'device'", "tpu"],
    ),
    (
        "unknown-scorer",
        ("selection.scorer", {"name": "perplexty"}),
        None,
        ["unknown scorer 'perplexty'", "did you mean 'perplexity'"],
    ),
    ("scorer-unused", ("selection.scorer", {"name": "perplexity"}), None, ["does not use scores"]),
    ("budget-too-big", ("selection.rounds", 10), None, ["4 + 10 * 4 = 44 rows", "only 20"]),
    ("missing-pool", ("selection.pool.path", "nowhere.json"), None, ["no such file", "nowhere.json"]),
    ("missing-model", ("base_model", "./no-such-model"), None, ["base_model", "no such model folder"]),
    ("missing-tokenizer", "NO_TOKENIZER", None, ["base_model", "holds no tokenizer"]),
    ("loop-owned-key", ("datasets", [{"path": "x"}]), None, ["the loop sets datasets itself"]),
    ("empty-pool", None, "", ["pool.json", "empty"]),
    (
        "malformed-jsonl",
        None,
        '{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": }\n',
        ["pool.json:2:", "malformed JSON"],
    ),
    (
        "malformed-json-list",
        None,
        '[\n {"instruction": "a",\n  "output": "b"},\n oops\n]',
        ["pool.json:4:", "malformed JSON"],
    ),
    ("row-missing-field", None, json.dumps([{"instruction": "a"}] * 20), ["pool.json", "row 0 has no 'output' field"]),
    ("row-not-object", None, json.dumps(["a string"] * 20), ["pool.json", "row 0 is a str"]),
    # issue 12, item 5: a key written twice is refused at any depth (YAML would keep the last one silently)
    (
        "duplicate-key",
        "RAW:base_model: m\nlearning_rate: 0.001\nlearning_rate: 0.5\n",
        None,
        ["recipe.yaml:3:", "duplicate key 'learning_rate'", "first on line 2"],
    ),
    (
        "duplicate-nested-key",
        "RAW:selection:\n  per_round: 4\n  per_round: 6\n",
        None,
        ["recipe.yaml:3:", "duplicate key 'per_round'"],
    ),
    (
        "duplicate-block",
        "RAW:selection:\n  seed_size: 4\noutput_dir: run\nselection:\n  seed_size: 5\n",
        None,
        ["recipe.yaml:4:", "duplicate key 'selection'", "first on line 1"],
    ),
    # item 6: field types, named by row and field (a number where text is meant would crash the tokenizer)
    (
        "field-not-text",
        None,
        json.dumps(POOL_ROWS[:5] + [{"instruction": "x", "input": "", "output": 42}] + POOL_ROWS[5:]),
        ["pool.json: row 5", "field 'output' is a number (42), expected text", "(rows counted from 0)"],
    ),
    (
        "chat-content-not-text",
        ("selection.pool.format", "chat"),
        json.dumps(
            CHAT_ROWS[:2]
            + [{"messages": [{"role": "user", "content": ["a", "list"]}, {"role": "assistant", "content": "b"}]}]
            + CHAT_ROWS[2:]
        ),
        ["pool.json: row 2", "messages[0].content is a list, expected text"],
    ),
    # item 7: strict types and clear rules
    ("bool-as-int", ("selection.seed", True), None, ["selection.seed", "valid integer", "True"]),
    ("string-as-int", ("selection.per_round", "6"), None, ["selection.per_round", "valid integer", "'6'"]),
    (
        "kmq-clusters-not-below-pool",
        ("selection.selector", {"name": "kmq", "n_clusters": 20}),
        None,
        ["selection.selector.n_clusters is 20", "only 20 rows", "file order"],
    ),
    (
        "chat-role-unknown",
        ("selection.pool.format", "chat"),
        json.dumps(
            CHAT_ROWS[:3]
            + [{"messages": [{"role": "robot", "content": "a"}, {"role": "assistant", "content": "b"}]}]
            + CHAT_ROWS[3:]
        ),
        ["pool.json: row 3", "messages[0].role is 'robot'", "one of system, user, assistant"],
    ),
    # item 8 (and item 1 at validate): output_dir problems are one line at validate already
    ("output-dir-is-a-file", ("output_dir", "pool.json"), None, ["output_dir", "pool.json is a file, not a folder"]),
    ("output-dir-under-a-file", ("output_dir", "pool.json/run"), None, ["lies under", "pool.json, which is a file"]),
    ("output-dir-read-only", "READ_ONLY", None, ["output_dir", "read-only"]),
    ("output-dir-holds-the-inputs", ("output_dir", "."), None, ["output_dir", "holds the recipe", "--force"]),
    ("output-dir-above-the-model", "MODEL_INSIDE", None, ["output_dir", "holds the base model"]),
    # item 8: row numbers say what they count: file lines for JSON lines, rows from 0 for a JSON list
    (
        "jsonl-names-the-line",
        None,
        '{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": "d"}\n{"instruction": "e"}\n',
        ["pool.json:4: the row on line 4 has no 'output' field"],
    ),
    # issue 14, item 2: the formats Axolotl users have; a missing field names the row (and its file) and the field
    (
        "sharegpt-row-without-conversations",
        ("selection.pool.format", "sharegpt"),
        None,
        ["pool.json: row 0 has no 'conversations' field, which format 'sharegpt' needs"],
    ),
    (
        "sharegpt-turn-without-value",
        ("selection.pool.format", "sharegpt"),
        json.dumps(
            SHAREGPT_ROWS[:3]
            + [{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt"}]}]
            + SHAREGPT_ROWS[3:]
        ),
        ["pool.json: row 3", "conversations[1] has no 'value' field"],
    ),
    (
        "sharegpt-unknown-speaker",
        ("selection.pool.format", "sharegpt"),
        json.dumps([{"conversations": [{"from": "bot", "value": "a"}, {"from": "gpt", "value": "b"}]}] + SHAREGPT_ROWS),
        ["pool.json: row 0", "conversations[0].from is 'bot'", "human"],
    ),
    (
        "glob-matches-nothing",
        ("selection.pool.path", "data/*.jsonl"),
        None,
        ["selection.pool.path", "matches no pool file"],
    ),
    (
        "several-files-name-the-file",
        {
            "set": [("selection.pool.path", "*.json*")],
            "files": {
                "b.jsonl": (
                    '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n{"instruction": "e"}\n'
                )
            },
        },
        None,
        ["b.jsonl:3: the row on line 3 has no 'output' field"],
    ),
    (
        "save-to-disk-row-without-field",
        {"set": [("selection.pool.path", "saved")], "saved": {"saved": [{"instruction": "a"}] * 20}},
        None,
        ["saved: row 0 has no 'output' field"],
    ),
    (
        "save-to-disk-no-such-split",
        {
            "set": [("selection.pool", {"path": "saved", "split": "validation"})],
            "saved": {"saved": {"train": POOL_ROWS}},
        },
        None,
        ["saved", "no split 'validation'", "train"],
    ),
    (
        "axolotl-entry-unknown-type",
        ("selection.pool", {"path": "pool.json", "type": "oasst"}),
        None,
        ["recipe.yaml", "dataset type 'oasst'", "alpaca, chat_template or completion"],
    ),
    (
        "axolotl-entry-sharegpt-row-without-field",
        (
            "selection.pool",
            {
                "path": "pool.json",
                "type": "chat_template",
                "field_messages": "conversations",
                "message_property_mappings": {"role": "from", "content": "value"},
            },
        ),
        None,
        ["pool.json: row 0 has no 'conversations' field"],
    ),
    (
        "axolotl-entry-data-files-missing",
        ("selection.pool", {"path": ".", "data_files": ["nowhere.jsonl"], "type": "alpaca"}),
        None,
        ["selection.pool.path", "no such file", "nowhere.jsonl"],
    ),
    (
        "format-contradicts-type",
        ("selection.pool", {"path": "pool.json", "type": "alpaca", "format": "chat"}),
        None,
        ["recipe.yaml", "format chat contradicts type alpaca"],
    ),
]


@pytest.mark.parametrize("case, change, pool_text, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(tmp_path, tiny_model, monkeypatch, case, change, pool_text, expected):
    (tmp_path / "pool.json").write_text(json.dumps(POOL_ROWS) if pool_text is None else pool_text)
    recipe = json.loads(json.dumps(GOOD))
    recipe["base_model"] = str(tiny_model)
    if change == "READ_ONLY":
        _read_only_folder(tmp_path / "ro", monkeypatch)
        change = ("output_dir", "ro/run")
    if change == "MODEL_INSIDE":
        shutil.copytree(tiny_model, tmp_path / "work" / "model")
        recipe["base_model"] = str(tmp_path / "work" / "model")
        change = ("output_dir", "work")
    if change == "NO_TOKENIZER":
        bare = tmp_path / "bare-model"
        bare.mkdir()
        (bare / "config.json").write_text((tiny_model / "config.json").read_text())
        recipe["base_model"] = str(bare)
        change = None
    if isinstance(change, dict):  # several changes, and files beside the pool (issue 14's pool sources)
        for name, text in change.get("files", {}).items():
            (tmp_path / name).write_text(text)
        for name, rows in change.get("saved", {}).items():
            from datasets import Dataset, DatasetDict

            split = {k: Dataset.from_list(v) for k, v in rows.items()} if isinstance(rows, dict) else None
            (DatasetDict(split) if split else Dataset.from_list(rows)).save_to_disk(str(tmp_path / name))
        for dotted, value in change.get("set", []):
            _set(recipe, dotted, value)
        change = None
    if isinstance(change, str) and change.startswith("RAW:"):
        (tmp_path / "recipe.yaml").write_text(change[4:])
    else:
        if change is not None:
            _set(recipe, *change)
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "recipe.yaml"), "--skip-axolotl"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for fragment in expected:
        assert fragment in lines[0], lines[0]
    assert not (tmp_path / "run").exists()  # nothing written


def _read_only_folder(folder, monkeypatch) -> None:
    """A folder nobody may write in; root ignores permission bits, so there the check is told so."""
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode, **kw: False if Path(p) == folder else real_access(p, mode, **kw)
        )


@pytest.mark.slow
def test_axolotl_keys_are_checked_by_axolotl(tmp_path, tiny_model):
    (tmp_path / "pool.json").write_text(json.dumps(POOL_ROWS))
    for change, fragment in [
        (("lora_rr", 8), "unknown key 'lora_rr' (did you mean 'lora_r'?)"),
        (("micro_batch_size", "many"), "key 'micro_batch_size'"),
    ]:
        recipe = json.loads(json.dumps(GOOD))
        recipe["base_model"] = str(tiny_model)
        recipe["learning_rate"] = 1e-4  # Axolotl's only other complaint about GOOD: every problem is a line of its own
        _set(recipe, *change)
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        result = CliRunner().invoke(main, ["validate", str(tmp_path / "recipe.yaml")])
        assert result.exit_code == 1
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and fragment in lines[0] and str(tmp_path / "recipe.yaml") in lines[0], result.output
    # two problems (no learning_rate, a bad micro_batch_size): both at once, one line each, each naming the file
    recipe = json.loads(json.dumps(GOOD))
    recipe.update(base_model=str(tiny_model), micro_batch_size="many")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "recipe.yaml")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 2, result.output
    assert all(str(tmp_path / "recipe.yaml") in line for line in lines), result.output
    assert any("micro_batch_size" in line for line in lines) and any("learning_rate" in line for line in lines)


def test_debug_shows_the_traceback(tmp_path):
    """--debug lets the original exception surface with its traceback (SystemExit would pass a weaker check)."""
    import traceback

    from diverse_axolotl.errors import UserError

    missing = tmp_path / "missing.yaml"
    result = CliRunner().invoke(main, ["--debug", "validate", str(missing)])
    assert isinstance(result.exception, UserError), repr(result.exception)
    assert str(result.exception) == f"{missing}: no such recipe file"
    assert "read_yaml" in [frame.name for frame in traceback.extract_tb(result.exc_info[2])]
    plain = CliRunner().invoke(main, ["validate", str(missing)])
    assert isinstance(plain.exception, SystemExit) and plain.exit_code == 1


def test_a_good_recipe_validates_and_prints_the_plan(tmp_path, tiny_model):
    (tmp_path / "pool.json").write_text(json.dumps(POOL_ROWS))
    recipe = {**GOOD, "base_model": str(tiny_model)}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "recipe.yaml"), "--skip-axolotl"])
    assert result.exit_code == 0, result.output
    assert "20 rows" in result.output and "kcenter" in result.output and "12 rows (60.0% of the pool)" in result.output


def test_empty_rows_are_skipped_and_counted_or_fail_on_request(tmp_path, tiny_model):
    rows = POOL_ROWS + [
        {"instruction": "  ", "input": "", "output": "x"},
        {"instruction": "y", "input": "", "output": ""},
    ]
    rows += [POOL_ROWS[0], POOL_ROWS[1]]  # two exact duplicates
    (tmp_path / "pool.json").write_text(json.dumps(rows))
    recipe = json.loads(json.dumps(GOOD))
    recipe["base_model"] = str(tiny_model)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    ok = CliRunner().invoke(main, ["validate", str(tmp_path / "recipe.yaml"), "--skip-axolotl"])
    assert ok.exit_code == 0, ok.output
    assert "22 rows" in ok.output and "2 empty skipped, 2 duplicate(s)" in ok.output
    recipe["selection"]["pool"]["dedup"] = True
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    deduped = CliRunner().invoke(main, ["validate", str(tmp_path / "recipe.yaml"), "--skip-axolotl"])
    assert "20 rows" in deduped.output and "2 duplicate(s) removed" in deduped.output
    recipe["selection"]["pool"]["empty_rows"] = "fail"
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    failed = CliRunner().invoke(main, ["validate", str(tmp_path / "recipe.yaml"), "--skip-axolotl"])
    assert failed.exit_code == 1 and "2 row(s) have an empty instruction or answer, first: row 20" in failed.output
