"""Evaluations kept by what decides their numbers, so that an adapter met again is not evaluated again.

Recipes that share a seed round train byte-identical round-0 adapters (every iterative recipe with the same seed,
seed_size and pool does), and each would otherwise spend the whole evaluation again: 10-15 minutes per round on a
CPU in the quality benchmark. The key holds everything the numbers depend on:
- every file of the adapter folder by content (adapter_config.json as canonical JSON; not peft's model card or our
  training record), and every file of the base model folder by name, size and mtime
  (weights, config, tokenizer, chat template, remote code), with `trust_remote_code`;
- the whole `eval:` block, with the device and dtype that `auto` stands for on this machine;
- the held-out rows themselves when the loop carved or read them (their content, not their origin);
- the files our tasks and metrics read (names, sizes and mtimes of the `da_*` data files and the held-out sources);
- this package's own source (every .py and .yaml file, hashed: an editable install keeps its version number while
  its code changes) and the versions of lm-eval, transformers, peft and torch.
A task from lm-eval's own registry reads datasets we cannot fingerprint (the hub's cache), so an evaluation that
names one is never cached; `eval.cache: false` turns the cache off. Entries live in `<cache root>/evals/`
($DIVERSE_AXOLOTL_CACHE); an unreadable one counts as absent, and deleting the folder is always safe.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from ..data import file_sha256
from ..errors import UserError
from ..io import link_or_copy, write_json, write_text
from .heldout import SOURCES, default_data_root
from .lm_tasks import OUR_METRICS, _data_files, eval_data_dir, is_ours, parse_tasks
from .own_data import HeldoutSet
from .spec import EvalSpec

_VERSIONED = ("lm_eval", "transformers", "peft", "torch")


def _stat(path: Path) -> str | None:
    """A file's name, size and mtime (None if missing): its identity without reading it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def _folder_stats(folder: Path) -> list[str | None]:
    return [_stat(f) for f in sorted(folder.rglob("*")) if f.is_file()]


# In an adapter folder: peft's model card and our record of the training (timings), not what the model computes.
_NOT_THE_ADAPTER = ("README.md", "train_result.json")


def _canonical(obj: Any) -> Any:
    """JSON with its lists of names sorted: peft writes `target_modules` (a set) in a different order each run."""
    if isinstance(obj, dict):
        return {k: _canonical(v) for k, v in obj.items()}
    if isinstance(obj, list):
        items = [_canonical(v) for v in obj]
        return sorted(items) if all(isinstance(v, str) for v in items) else items
    return obj


def _adapter_identity(folder: Path) -> dict[str, str]:
    """Every file of the adapter folder by content (adapter_config.json as canonical JSON), but the model card and
    the training record: two trainings that produced the same weights and config are the same adapter."""
    out: dict[str, str] = {}
    for f in sorted(folder.rglob("*")):
        if not f.is_file() or f.name in _NOT_THE_ADAPTER:
            continue
        if f.name == "adapter_config.json":
            try:
                text = json.dumps(_canonical(json.loads(f.read_text(encoding="utf-8"))), sort_keys=True)
            except ValueError:
                text = f.read_text(encoding="utf-8", errors="replace")
            out[str(f.relative_to(folder))] = hashlib.sha256(text.encode()).hexdigest()
        else:
            out[str(f.relative_to(folder))] = file_sha256(f)
    return out


@functools.lru_cache(maxsize=1)
def _package_source_sha256() -> str:
    """This package's code and task YAMLs, as installed (one hash, computed once per process)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.suffix in (".py", ".yaml", ".yml", ".jinja") and f.is_file():
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"diverse_axolotl source": _package_source_sha256()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def eval_cache_key(
    spec: EvalSpec,
    base_model: str | Path,
    adapter: str | Path | None,
    own: HeldoutSet | None,
    trust_remote_code: bool = False,
) -> str | None:
    """The key of this evaluation (hex), or None when it cannot be cached (a task from lm-eval's registry, or
    data that cannot be found: the evaluation itself then says what is missing)."""
    from ..models import dtype_name, resolve_device

    requests = parse_tasks(spec.tasks)
    lm_tasks = [r.name for r in requests if r.name not in OUR_METRICS]
    ours = [r.name for r in requests if r.name in OUR_METRICS]
    if any(not is_ours(name) for name in lm_tasks):
        return None
    files: list[str | None] = []
    if lm_tasks:
        data = eval_data_dir(spec.data_dir)
        if data is None:
            return None
        files += [_stat(data / rel) for name in lm_tasks for rel in _data_files(name)]
    if ours and spec.heldout.file is not None:
        files.append(_stat(Path(spec.heldout.file)))
    if "t0_exact" in ours or (ours and own is None and not spec.heldout.own):  # the benchmark sources are read
        try:
            root = Path(spec.heldout.data_root) if spec.heldout.data_root else default_data_root()
        except UserError:
            return None
        files += [_stat(root / s.path) for s in SOURCES.values()]
    adapter_id = _adapter_identity(Path(adapter)) if adapter is not None else None
    payload = {
        "spec": spec.model_dump(mode="json", exclude={"cache"}),
        "device": str(resolve_device(spec.device)),
        "dtype": dtype_name(spec.dtype, spec.device),
        "model": _folder_stats(Path(base_model)),
        "trust_remote_code": trust_remote_code,
        "adapter": adapter_id,
        "own": None if own is None else {"fmt": own.fmt, "rows": [[r.group, r.row] for r in own.rows]},
        "files": files,
        "versions": _versions(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cache_dir() -> Path:
    from ..cache import cache_root

    return cache_root() / "evals"


def evaluate_spec_cached(
    spec: EvalSpec,
    base_model: str | Path,
    adapter: str | Path | None,
    out_file: Path,
    evaluate: Callable[[], Any],
    own: HeldoutSet | None = None,
    log: Callable[[str], None] = print,
    trust_remote_code: bool = False,
) -> bool:
    """Write `out_file` from the cache when this evaluation was done before (True), else run `evaluate()` (which
    writes `out_file`) and keep a copy (False). The copy's `meta.cached_from` names the adapter first evaluated,
    and its log file (out_file's .log) says where the result came from."""
    key = eval_cache_key(spec, base_model, adapter, own, trust_remote_code) if spec.cache else None
    kept = cache_dir() / f"{key}.json" if key else None
    result = None
    if kept is not None and kept.is_file():
        with contextlib.suppress(OSError, ValueError):  # an unreadable entry is a miss
            result = json.loads(kept.read_text(encoding="utf-8"))
    if isinstance(result, dict) and isinstance(result.get("metrics"), dict):
        meta = result.get("meta") or {}
        log_file = Path(out_file).with_suffix(".log")
        write_text(
            log_file,
            f"evaluation read from the cache: {kept}\nfirst evaluated for the adapter {meta.get('adapter')}"
            f" (its log: {meta.get('log_file')})\n",
        )
        result["meta"] = {
            **meta,
            "cached_from": meta.get("adapter"),
            "adapter": str(adapter) if adapter is not None else None,
            "log_file": str(log_file),
            "cache_key": key,
        }
        write_json(out_file, result)
        log(f"evaluation found in the cache ({kept}): same adapter, base model, eval block and data")
        return True
    evaluate()
    if kept is not None and Path(out_file).is_file():
        with contextlib.suppress(OSError):  # a cache that cannot be written costs a re-evaluation later
            link_or_copy(Path(out_file), kept)  # eval.json is replaced, never edited in place: a hard link is safe
    return False
