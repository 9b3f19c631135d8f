"""Reading instruction pools and writing each round's training file, in the pool's own format.

A pool is a list of rows (dicts). Four formats, each one Axolotl reads natively:
  alpaca      {instruction, input, output}           -> Axolotl `type: alpaca`
  chat        {messages: [{role, content}, ...]}     -> Axolotl `type: chat_template`
  sharegpt    {conversations: [{from, value}, ...]}  -> Axolotl `type: chat_template` (field_messages: conversations)
  completion  {text}                                 -> Axolotl `type: completion`
Files: a JSON list, JSON lines (optionally .gz / .xz), or parquet; several files, a glob, a `save_to_disk` folder
or an Axolotl-style `datasets:` entry are read as one pool by `pools`. Errors name the file and line.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import time
from pathlib import Path
from typing import Any

from .errors import UserError
from .io import atomic_path, save_npy, write_json, write_jsonl  # noqa: F401  (re-exported: their old home)

REQUIRED_FIELDS = {
    "alpaca": ("instruction", "output"),
    "chat": ("messages",),
    "sharegpt": ("conversations",),
    "completion": ("text",),
}
AXOLOTL_TYPE = {"alpaca": "alpaca", "chat": "chat_template", "sharegpt": "chat_template", "completion": "completion"}
#: ShareGPT speakers and the chat role each stands for: Axolotl's default `roles` mapping for chat_template.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _json_error(path: Path, exc: json.JSONDecodeError, line_offset: int = 0) -> UserError:
    return UserError(f"{path}:{exc.lineno + line_offset}: malformed JSON ({exc.msg}, column {exc.colno})")


class Rows(list):
    """A pool's rows plus, for JSON lines, the file line of each row, so that errors can name the line a user
    opens in an editor; for a JSON list or parquet they name the row counted from 0."""

    lines: list[int] | None = None
    #: For a pool read from several files: each row's file and its row number there (None: one file).
    files: list[Path] | None = None
    index: list[int] | None = None  # type: ignore[assignment]

    def where(self, path: Path, i: int) -> tuple[str, str]:
        """(start, end) of a message about row i: `pool.jsonl:7: the row on line 7` or `pool.json: row 6` with
        `(rows counted from 0)` at the end; for a pool of several files, the row's own file."""
        if self.files is not None:
            path = self.files[i]
        if self.lines is not None and self.lines[i] is not None:
            return f"{path}:{self.lines[i]}: the row on line {self.lines[i]}", ""
        return f"{path}: row {self.index[i] if self.index is not None else i}", " (rows counted from 0)"


def _rows(items: list, lines: list[int] | None = None) -> Rows:
    out = Rows(items)
    out.lines = lines
    return out


def read_rows(path: Path) -> Rows:
    """All rows of a pool file, whatever its container; one-line errors naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such pool file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return _rows(pq.read_table(path).to_pylist())
    try:
        with _open_text(path) as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError, EOFError, lzma.LZMAError) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    if not text.strip():
        raise UserError(f"{path}: the pool file is empty")
    if text.lstrip().startswith("["):
        try:
            rows = _rows(json.loads(text))
        except json.JSONDecodeError as exc:
            raise _json_error(path, exc) from None
    else:
        rows = _rows([], [])
        for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit inside a string
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise _json_error(path, exc, lineno - 1) from None
            rows.lines.append(lineno)  # type: ignore[union-attr]
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            start, end = rows.where(path, i)
            raise UserError(f"{start} is a {type(row).__name__}, expected a JSON object{end}")
    return rows


#: Roles a chat row may use: what chat templates and Axolotl's default role mapping understand.
CHAT_ROLES = ("system", "user", "assistant")


def _json_kind(value: Any) -> str:
    """How a JSON value reads to the person who wrote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "an object"
    return type(value).__name__


def _sharegpt_problem(turns: Any) -> str | None:
    """What is wrong with a ShareGPT row's `conversations`, or None (the roles Axolotl's default mapping knows)."""
    if not (isinstance(turns, list) and turns and all(isinstance(t, dict) for t in turns)):
        return "'conversations' must be a non-empty list of {from, value}"
    for j, t in enumerate(turns):
        for key in ("from", "value"):
            if key not in t:
                return f"conversations[{j}] has no '{key}' field (a turn is {{from, value}})"
        if t["from"] not in SHAREGPT_ROLES:
            return f"conversations[{j}].from is {t['from']!r}; a speaker is one of {', '.join(SHAREGPT_ROLES)}"
        if not isinstance(t["value"], str):
            return f"conversations[{j}].value is {_json_kind(t['value'])}, expected text"
    if SHAREGPT_ROLES[turns[-1]["from"]] != "assistant":
        return "the last turn must be the assistant's answer (from: gpt)"
    return None


def sharegpt_messages(row: dict) -> list[dict]:
    """A ShareGPT row's turns as chat messages, roles mapped as Axolotl maps them (human -> user, gpt -> assistant)."""
    return [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in row["conversations"]]


def _field_problem(row: dict, fmt: str) -> str | None:
    """What is wrong with the types of one row's fields, or None: a number where text is meant passes a
    presence check and then fails deep inside the tokenizer, so it is caught here with the field named."""
    if fmt == "sharegpt":
        return _sharegpt_problem(row["conversations"])
    if fmt == "chat":
        msgs = row["messages"]
        if not (
            isinstance(msgs, list)
            and msgs
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs)
        ):
            return "'messages' must be a non-empty list of {role, content}"
        for j, m in enumerate(msgs):
            if m["role"] not in CHAT_ROLES:
                return f"messages[{j}].role is {m['role']!r}; a role is one of {', '.join(CHAT_ROLES)}"
            if not isinstance(m["content"], str):
                return f"messages[{j}].content is {_json_kind(m['content'])}, expected text"
        if msgs[-1]["role"] != "assistant":
            return "the last message must be the assistant's answer"
        return None
    fields = {"alpaca": ("instruction", "input", "output"), "completion": ("text",)}[fmt]
    for field in fields:
        value = row.get(field)
        if field == "input" and value is None:  # an absent or null input means "no input"
            continue
        if not isinstance(value, str):
            return f"field '{field}' is {_json_kind(value)}, expected text"
    return None


def check_rows(rows: list[dict], fmt: str, path: Path) -> None:
    """Every row carries the fields its format needs, as text."""
    if not rows:
        raise UserError(f"{path}: the pool holds no rows")
    rows = rows if isinstance(rows, Rows) else _rows(rows)
    for i, row in enumerate(rows):
        start, end = rows.where(path, i)
        for field in REQUIRED_FIELDS[fmt]:
            if field not in row:
                raise UserError(
                    f"{start} has no '{field}' field, which format '{fmt}' needs"
                    f" (fields: {', '.join(REQUIRED_FIELDS[fmt])}; the row has: {', '.join(row)}){end}"
                )
        problem = _field_problem(row, fmt)
        if problem:
            raise UserError(f"{start}: {problem}{end}")


def _texts(row: dict, fmt: str) -> list[str]:
    if fmt == "alpaca":
        return [str(row.get("instruction") or ""), str(row.get("output") or "")]
    if fmt == "chat":
        return [str(m.get("content") or "") for m in row["messages"]]
    if fmt == "sharegpt":
        return [str(t.get("value") or "") for t in row["conversations"]]
    return [str(row.get("text") or "")]


def clean_pool(
    rows: list[dict], fmt: str, empty_rows: str, dedup: bool, path: Path
) -> tuple[list[dict], list[int], dict]:
    """Drop rows with an empty instruction/answer (or fail, per `empty_rows`) and, if asked, exact duplicates.

    Returns the kept rows, their row numbers in the file, and counts for the run's records. Duplicates are
    always counted (a pool full of them skews any selector), removed only with `dedup`.
    """
    empty = [i for i, row in enumerate(rows) if any(not t.strip() for t in _texts(row, fmt))]
    if empty and empty_rows == "fail":
        lines = getattr(rows, "lines", None)
        first = (
            f"the row on line {lines[empty[0]]}"
            if lines and lines[empty[0]] is not None
            else f"row {empty[0]} (rows counted from 0)"
        )
        raise UserError(
            f"{path}: {len(empty)} row(s) have an empty instruction or answer, first: {first}"
            " (set selection.pool.empty_rows: skip to leave them out)"
        )
    empty_set = set(empty)
    seen: set[str] = set()
    kept, duplicates = [], 0
    for i, row in enumerate(rows):
        if i in empty_set:
            continue
        key = json.dumps(row, sort_keys=True, ensure_ascii=False)
        if key in seen:
            duplicates += 1
            if dedup:
                continue
        seen.add(key)
        kept.append(i)
    if not kept:
        raise UserError(f"{path}: no usable rows left after skipping {len(empty)} empty one(s)")
    stats = {"rows_in_file": len(rows), "empty_skipped": len(empty), "duplicates": duplicates,
             "duplicates_removed": duplicates if dedup else 0, "rows": len(kept)}
    return [rows[i] for i in kept], kept, stats


def prompt_and_response(row: dict, fmt: str, tokenizer=None) -> tuple[str, str]:
    """The text a model reads (prompt) and the text it should produce (response) for one row.

    alpaca uses Axolotl's alpaca template; chat uses the tokenizer's chat template when it has one; completion has
    no prompt; sharegpt reads as chat with Axolotl's role mapping. Embedding uses prompt + response; scorers
    need them apart.
    """
    if fmt == "sharegpt":
        return prompt_and_response({"messages": sharegpt_messages(row)}, "chat", tokenizer)
    if fmt == "alpaca":
        inp = row.get("input") or ""
        template = ALPACA_PROMPT if inp.strip() else ALPACA_PROMPT_NO_INPUT
        return template.format(instruction=row["instruction"], input=inp), str(row["output"])
    if fmt == "chat":
        history, answer = row["messages"][:-1], row["messages"][-1]["content"]
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        else:
            prompt = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in history) + "<|assistant|>\n"
        return prompt, str(answer)
    return "", str(row["text"])


def file_sha256(path: Path, reuse: bool = True) -> str:
    """The file's sha256. With `reuse`, an answer is kept per version of the file (inode, size, modification time):
    a run hashes its round's adapter for the embedding, score and evaluation caches. A file modified in the last
    two seconds is always read (git's "racy" rule: a rewrite within the clock's granularity keeps its mtime);
    `reuse=False` always reads (integrity checks)."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        version = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
        if reuse and version in _SHA256_BY_VERSION:
            return _SHA256_BY_VERSION[version]
        h = hashlib.sha256()
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if time.time_ns() - st.st_mtime_ns > 2_000_000_000:
        if len(_SHA256_BY_VERSION) >= 256:
            _SHA256_BY_VERSION.pop(next(iter(_SHA256_BY_VERSION)))
        _SHA256_BY_VERSION[version] = digest
    return digest


_SHA256_BY_VERSION: dict[tuple, str] = {}
