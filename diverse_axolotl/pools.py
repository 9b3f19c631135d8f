"""Where a pool's rows come from: one file, several files or a glob, a `datasets` `save_to_disk` folder, or an
entry written like one of Axolotl's own `datasets:` entries (`path`, `type`, `data_files`, `split`).

Whatever the source, the result is one list of rows in file order, each row remembering its file and row number
so that an error names the file a user opens. Rows are never converted: the round files keep the pool's format.
"""

from __future__ import annotations

import glob as globlib
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .data import REQUIRED_FIELDS, Rows, _rows, check_rows, file_sha256, read_rows
from .errors import UserError

#: Files read as pool files when a folder (not a `save_to_disk` one) is given.
DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".gz", ".xz")


def is_glob(path: str | Path) -> bool:
    return any(ch in str(path) for ch in "*?[")


def is_saved_dataset(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def _as_list(value: str | Path | Iterable | None) -> list[str]:
    if value is None:
        return []
    return [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value]


def _expand(pattern: str, base: Path | None) -> list[Path]:
    """One path or glob pattern -> the files it names, sorted (a pattern matching nothing is an error)."""
    path = Path(pattern)
    if base is not None and not path.is_absolute():
        path = base / path
    if is_glob(path):
        found = sorted(Path(p) for p in globlib.glob(str(path), recursive=True) if Path(p).is_file())
        if not found:
            raise UserError(f"{path}: the pattern matches no pool file")
        return found
    if is_saved_dataset(path):
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(DATA_SUFFIXES))
        if not found:
            raise UserError(
                f"{path}: the folder holds no pool file ({', '.join(DATA_SUFFIXES)}) and is not a save_to_disk dataset"
            )
        return found
    if not path.exists():
        raise UserError(f"no such file {path}")
    return [path]


def pool_sources(path: str | Path, data_files=None) -> list[Path]:
    """The files (or `save_to_disk` folders) a pool reads, in order. As in Axolotl, `data_files` name files
    inside the folder `path` (or, when `path` is not a folder, relative to where they are written)."""
    if not data_files:
        return _expand(str(path), None)
    base = Path(path) if Path(path).is_dir() else None
    return [f for pattern in _as_list(data_files) for f in _expand(pattern, base)]


def _read_saved(path: Path, split: str | None) -> Rows:
    """Rows of a `save_to_disk` folder; for a DatasetDict, the `split` (default: train)."""
    from datasets import load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, pyarrow errors
        raise UserError(f"{path}: cannot read the saved dataset ({str(exc).splitlines()[0]})") from None
    if hasattr(ds, "keys"):  # a DatasetDict
        name = split or "train"
        if name not in ds:
            raise UserError(f"{path}: the saved dataset has no split '{name}'; its splits: {', '.join(ds)} (set split)")
        ds = ds[name]
    rows = Rows(ds.to_list())
    if not rows:
        raise UserError(f"{path}: the saved dataset holds no rows")
    return rows


def read_source(path: Path, split: str | None = None) -> Rows:
    return _read_saved(path, split) if is_saved_dataset(path) else read_rows(path)


def concat(parts: list[tuple[Path, Rows]]) -> Rows:
    """Several files' rows as one pool; each row keeps its file, line and row number there."""
    if len(parts) == 1:
        return parts[0][1]
    out = Rows()
    out.lines, out.files, out.index = [], [], []
    for path, rows in parts:
        out.extend(rows)
        out.files += [path] * len(rows)
        out.index += list(range(len(rows)))
        out.lines += rows.lines if rows.lines is not None else [None] * len(rows)  # type: ignore[list-item]
    if all(line is None for line in out.lines):
        out.lines = None
    return out


def read_pool(path: str | Path, data_files=None, split: str | None = None) -> Rows:
    """Every row of a pool, from whatever source (see the module docstring), in file order."""
    return concat([(src, read_source(src, split)) for src in pool_sources(path, data_files)])


def pool_sha256(path: str | Path, data_files=None) -> str:
    """The pool's content hash: a single file's sha256 (as before), else one over every file's name and sha256."""
    sources = pool_sources(path, data_files)
    if len(sources) == 1 and sources[0].is_file():
        return file_sha256(sources[0])
    h = hashlib.sha256()
    for src in sources:
        files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
        for f in files:
            h.update(f"{f.relative_to(src) if src.is_dir() else f.name}:{file_sha256(f)}\n".encode())
    return h.hexdigest()


# -- formats --------------------------------------------------------------------------------------------------
SHAREGPT_MAPPING = {"role": "from", "content": "value"}


def format_from_axolotl(type_: str, field_messages: str | None = None, mappings: dict[str, str] | None = None) -> str:
    """Our pool format for an Axolotl dataset entry's `type` (and chat_template's field names)."""
    if type_ in ("alpaca", "completion"):
        return type_
    if type_ == "sharegpt":  # Axolotl's old name for it
        return "sharegpt"
    if type_ == "chat_template":
        field = field_messages or "messages"
        mapping = {"role": "role", "content": "content", **(mappings or {})}
        if field == "messages" and mapping == {"role": "role", "content": "content"}:
            return "chat"
        if field == "conversations" and mapping == SHAREGPT_MAPPING:
            return "sharegpt"
        raise UserError(
            f"type chat_template with field_messages {field!r} and message_property_mappings {mapping} is not a pool"
            " format we read: use messages with {role, content} or conversations with {from, value}"
        )
    raise UserError(f"dataset type {type_!r} is not a pool format we read: alpaca, chat_template or completion")


def detect_format(rows: list[dict], where: str) -> str:
    """The pool format its first row's fields say (for the `select` verb without --format)."""
    row = rows[0] if rows else {}
    for fmt in ("sharegpt", "chat", "alpaca", "completion"):
        if all(field in row for field in REQUIRED_FIELDS[fmt]):
            return fmt
    raise UserError(
        f"{where}: cannot tell the pool's format from its first row (fields: {', '.join(row) or 'none'});"
        " expected instruction/output (alpaca), messages (chat), conversations (sharegpt) or text (completion)"
    )


def axolotl_entry(entry: dict[str, Any]) -> tuple[str, Any, str | None, str]:
    """(path, data_files, split, format) of one of Axolotl's `datasets:` entries."""
    if not entry.get("path"):
        raise UserError("an Axolotl dataset entry needs a path")
    fmt = format_from_axolotl(
        str(entry.get("type") or "alpaca"), entry.get("field_messages"), entry.get("message_property_mappings")
    )
    return str(entry["path"]), entry.get("data_files"), entry.get("split"), fmt


def head(rows: Rows, limit: int) -> Rows:
    """The first `limit` rows, keeping where each came from."""
    out = _rows(rows[:limit], rows.lines[:limit] if rows.lines is not None else None)
    out.files = rows.files[:limit] if rows.files is not None else None
    out.index = rows.index[:limit] if rows.index is not None else None
    return out


def load_pool(path: Path, fmt: str, limit: int | None = None, data_files=None, split: str | None = None) -> Rows:
    """A pool's rows, checked: a file, several files or a glob, a `save_to_disk` folder (see `read_pool`)."""
    rows = read_pool(path, data_files, split)
    if limit is not None:
        rows = head(rows, limit)
    check_rows(rows, fmt, path)
    return rows
