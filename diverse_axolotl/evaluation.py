"""Evaluating a base model + LoRA adapter: lm-eval tasks on local files, plus two metrics of our own.

lm-eval tasks live as YAMLs in the repository's `eval/` folder (ARC-Easy/Challenge, GSM8K, MMLU, IFEval, and
HumanEval/MBPP behind code-execution consent). Their data paths hold a `${DATA_DIR}` placeholder: `evaluate` copies
the folder into a temporary include path with the evaluation data folder substituted, and runs lm-eval's
`simple_evaluate` with `HFLM(pretrained=base, peft=adapter)` there. The data folder is `../shared/data/eval`
relative to the repository root unless `DIVERSE_AXOLOTL_EVAL_DATA` (or `data_dir=`) says otherwise.

Our metrics, on held-out rows of the instruction pools (`../shared/data` or `DIVERSE_AXOLOTL_DATA`):
  heldout_loss  mean NLL of the answer tokens given the prompt (the same pass as the perplexity scorer), averaged
                over each source's held-out rows, then macro-averaged over sources (lower is better)
  t0_exact      greedy answers to held-out rows of each T0 template, exact match after strip/lower (and without
                `<|endoftext|>`), averaged per template, then macro-averaged over templates
Held-out rows are fixed by (source, seed): `heldout_rows` / `HeldoutSpec.excluded_ids()` name them so a benchmark
can keep them out of its training pool. Rows are shown to the model in Alpaca format (`prompt_and_response`).

Result file (`out_file`, written atomically):
  {"lm_eval": <lm-eval's results dict, JSON-safe>, "ours": {...}, "metrics": {"<task>/<metric>": value, ...},
   "meta": {...}}
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Optional, Union

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .data import _open_text, prompt_and_response, write_json
from .logs import logs_to
from .errors import UserError, did_you_mean

REPO_ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = REPO_ROOT / "eval"
DATA_ENV = "DIVERSE_AXOLOTL_DATA"
EVAL_DATA_ENV = "DIVERSE_AXOLOTL_EVAL_DATA"
PLACEHOLDER = "${DATA_DIR}"
OUR_METRICS = ("heldout_loss", "t0_exact")
UNSAFE_TASKS = ("da_humaneval", "da_mbpp")
CPU_BATCH_SIZE = 4
EOT = "<|endoftext|>"


# ------------------------------------------------------------------------------------------------- data folders
def default_data_root() -> Path:
    """The shared data folder holding `pools/` and `eval/`: $DIVERSE_AXOLOTL_DATA, else ../shared/data."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser().resolve()
    beside_repo = REPO_ROOT.parent / "shared" / "data"
    return beside_repo if beside_repo.is_dir() else (Path.cwd().parent / "shared" / "data").resolve()


def eval_data_dir(override: str | Path | None = None) -> Path:
    """The folder of evaluation sets (arc/, gsm8k/, mmlu/, ifeval/, ...)."""
    if override is not None:
        return Path(override).expanduser().resolve()
    if os.environ.get(EVAL_DATA_ENV):
        return Path(os.environ[EVAL_DATA_ENV]).expanduser().resolve()
    return default_data_root() / "eval"


# -------------------------------------------------------------------------------------------- held-out sources
@dataclass(frozen=True)
class HeldoutSource:
    """One pool file and how its fields become an Alpaca row {instruction, input, output}."""

    name: str
    path: str  # relative to the data root
    fields: dict[str, str]  # alpaca field -> field of the file's rows
    group_by: Optional[str] = None  # held-out rows are drawn per value of this field (T0: the template)
    strip_suffix: str = ""  # removed from the answer (T0 completions end in <|endoftext|>)
    skip_if: Optional[str] = None  # rows where this field is non-empty are never held out (LIMA's multi-turn rows)

    def to_alpaca(self, raw: dict) -> dict:
        out = str(raw[self.fields["output"]])
        if self.strip_suffix and out.endswith(self.strip_suffix):
            out = out[: -len(self.strip_suffix)]
        inp = raw.get(self.fields["input"]) if "input" in self.fields else ""
        return {"instruction": str(raw[self.fields["instruction"]]), "input": str(inp or ""), "output": out}

    def eligible(self, raw: dict) -> bool:
        return not (self.skip_if and raw.get(self.skip_if))


_ALPACA_FIELDS = {"instruction": "instruction", "input": "input", "output": "output"}
SOURCES: dict[str, HeldoutSource] = {
    s.name: s
    for s in (
        HeldoutSource("alpaca", "pools/alpaca/alpaca_5000.json", _ALPACA_FIELDS),
        HeldoutSource("code_alpaca", "pools/code_alpaca/code_alpaca_2k.json", _ALPACA_FIELDS),
        HeldoutSource("lima", "pools/lima/lima_llamafactory.json", _ALPACA_FIELDS, skip_if="history"),
        HeldoutSource("gsm8k", "pools/gsm8k_train.jsonl", {"instruction": "question", "output": "answer"}),
        HeldoutSource(
            "t0", "pools/t0_train_50k.jsonl.xz", {"instruction": "prompt", "output": "completion"},
            group_by="template", strip_suffix=EOT,
        ),
    )
}
T0_SOURCE = "t0"
HELDOUT_FORMAT = "alpaca"


class HeldoutRow(NamedTuple):
    index: int  # row number in the source file
    group: str  # the T0 template, or the source name
    row: dict  # Alpaca format


@functools.lru_cache(maxsize=8)
def _read_source(path: str) -> tuple[dict, ...]:
    """Rows of a pool file (JSON list or JSON lines, optionally .gz/.xz), cached for the process.

    Lines are split on '\\n' only: T0 prompts hold raw U+2028 characters, which str.splitlines() would split on.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: held-out source file not found (set {DATA_ENV} or heldout.data_root)")
    with _open_text(p) as fh:
        text = fh.read()
    if text.lstrip().startswith("["):
        try:
            return tuple(json.loads(text))
        except json.JSONDecodeError as exc:
            raise UserError(f"{p}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    rows = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{p}:{lineno}: malformed JSON ({exc.msg})") from None
    return tuple(rows)


def _stable_rng(seed: int, *keys: str) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF] + [zlib.crc32(k.encode("utf-8")) for k in keys])


def heldout_rows(
    source: str,
    n: int,
    seed: int = 0,
    data_root: str | Path | None = None,
    max_groups: int | None = None,
) -> list[HeldoutRow]:
    """n held-out rows of a source (n per template for T0), in file order; deterministic in (source, seed).

    Each group's rows are a seeded permutation's first n, so a smaller n picks a subset of a larger one's rows (and
    `max_groups` keeps a prefix of a seeded permutation of the sorted groups). Excluding `heldout_ids(...)` with the
    largest n used keeps every evaluated row out of training.
    """
    if source not in SOURCES:
        raise UserError(f"unknown held-out source '{source}'{did_you_mean(source, SOURCES)}; sources: {', '.join(SOURCES)}")
    src = SOURCES[source]
    root = Path(data_root) if data_root is not None else default_data_root()
    raws = _read_source(str((root / src.path).resolve()))
    groups: dict[str, list[int]] = {}
    for i, raw in enumerate(raws):
        if src.eligible(raw):
            key = str(raw[src.group_by]) if src.group_by else source
            groups.setdefault(key, []).append(i)
    names = sorted(groups)
    if max_groups is not None and max_groups < len(names):
        order = _stable_rng(seed, source, "groups").permutation(len(names))
        names = sorted(names[j] for j in order[:max_groups])
    picked: list[HeldoutRow] = []
    for name in names:
        candidates = np.asarray(groups[name])
        chosen = candidates[_stable_rng(seed, source, name).permutation(len(candidates))[:n]]
        picked.extend(HeldoutRow(int(i), name, src.to_alpaca(raws[int(i)])) for i in chosen)
    picked.sort(key=lambda r: r.index)
    return picked


def heldout_ids(source: str, n: int, seed: int = 0, data_root: str | Path | None = None) -> list[int]:
    """Row numbers (in the source file) of `heldout_rows(source, n, seed)`: what a training pool should leave out."""
    return [r.index for r in heldout_rows(source, n, seed, data_root)]


class HeldoutSpec(BaseModel):
    """Which held-out rows our metrics use, and how they are scored."""

    model_config = ConfigDict(extra="forbid")
    sources: list[str] = Field(default_factory=lambda: list(SOURCES), description="sources averaged by heldout_loss")
    n_per_source: int = Field(64, gt=0, description="held-out rows per source (not T0)")
    n_per_template: int = Field(2, gt=0, description="held-out rows per T0 template (heldout_loss and t0_exact)")
    max_templates: Optional[int] = Field(None, gt=0, description="use only this many T0 templates (seeded choice)")
    seed: int = Field(0, description="fixes which rows are held out")
    max_length: int = Field(512, gt=8, description="tokens of prompt + answer; the prompt is cut from the left")
    batch_tokens: int = Field(8192, gt=0, description="padded tokens per batch")
    max_new_tokens: int = Field(128, gt=0, description="t0_exact: at most this many generated tokens per answer")
    data_root: Optional[Path] = Field(None, description="folder holding pools/ (default: ../shared/data)")

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one source")
        for name in value:
            if name not in SOURCES:
                raise ValueError(f"unknown source '{name}'{did_you_mean(name, SOURCES)}; sources: {', '.join(SOURCES)}")
        return value

    def n_for(self, source: str, limit: int | None = None) -> int:
        n = self.n_per_template if SOURCES[source].group_by else self.n_per_source
        return min(n, limit) if limit else n

    def groups_for(self, source: str, limit: int | None = None) -> int | None:
        if not SOURCES[source].group_by:
            return None
        caps = [c for c in (self.max_templates, limit) if c]
        return min(caps) if caps else None

    def rows(self, source: str, limit: int | None = None) -> list[HeldoutRow]:
        return heldout_rows(source, self.n_for(source, limit), self.seed, self.data_root, self.groups_for(source, limit))

    def excluded_ids(self, sources: Iterable[str] | None = None) -> dict[str, list[int]]:
        """Per source, the row numbers our metrics may evaluate (the full held-out slice, whatever `limit`)."""
        names = list(sources) if sources is not None else sorted(set(self.sources) | {T0_SOURCE})
        return {name: [r.index for r in self.rows(name)] for name in names}


# ------------------------------------------------------------------------------------------------ our metrics
def _fit_length(model, wanted: int) -> int:
    """`wanted`, or less when the model has fewer positions."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(wanted, int(positions)) if isinstance(positions, int) and positions > 0 else wanted


def heldout_loss(model, tokenizer, spec: HeldoutSpec, limit: int | None = None) -> dict[str, Any]:
    """Mean answer-token NLL per source's held-out rows, and their macro average over sources."""
    from .scoring.token_stats import response_token_stats

    per_source = {}
    for name in spec.sources:
        rows = spec.rows(name, limit)
        pairs = [prompt_and_response(r.row, HELDOUT_FORMAT, tokenizer) for r in rows]
        stats = response_token_stats(
            model, tokenizer, pairs, _fit_length(model, spec.max_length), spec.batch_tokens, desc=f"held-out loss: {name}"
        )
        per_source[name] = {"loss": float(np.mean(stats["nll"])), "rows": len(rows)}
    return {
        "value": float(np.mean([s["loss"] for s in per_source.values()])),
        "per_source": per_source,
        "higher_is_better": False,
    }


def normalise_answer(text: str) -> str:
    return text.replace(EOT, "").strip().lower()


def exact_match(prediction: str, gold: str) -> bool:
    return normalise_answer(prediction) == normalise_answer(gold)


def greedy_generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: list[int],
    max_length: int = 512,
    batch_tokens: int = 8192,
    desc: str = "generating",
) -> list[str]:
    """Greedy continuations of each prompt (left-padded batches; the prompt cut from the left to fit max_length)."""
    import torch
    from transformers import GenerationConfig

    from .embedding import token_budget_batches
    from .models import decoder_body
    from .progress import progress_bar

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    encoded = []
    for prompt, new in zip(prompts, max_new_tokens):
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if not ids and tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id]
        encoded.append(ids)
    device = next(decoder_body(model).parameters()).device
    outputs = [""] * len(prompts)
    lengths = [min(len(ids) + new, max_length) for ids, new in zip(encoded, max_new_tokens)]
    with torch.inference_mode(), progress_bar(desc, total=len(prompts)) as advance:
        for batch in token_budget_batches(lengths, batch_tokens):
            batch_new = max(max_new_tokens[i] for i in batch)
            keep = max(max_length - batch_new, 1)  # prompt + generation stay within max_length
            prompt_ids = {i: encoded[i][-keep:] for i in batch}
            width = max(len(prompt_ids[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(batch):
                n = len(prompt_ids[i])
                ids[row, width - n:] = torch.as_tensor(prompt_ids[i])
                mask[row, width - n:] = 1
            config = GenerationConfig(
                max_new_tokens=batch_new, do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=eos
            )
            generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
            for row, i in enumerate(batch):
                new_ids = generated[row, width:].tolist()[: max_new_tokens[i]]
                if eos is not None and eos in new_ids:
                    new_ids = new_ids[: new_ids.index(eos)]
                outputs[i] = tokenizer.decode(new_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            advance(len(batch))
    return outputs


def t0_exact(model, tokenizer, spec: HeldoutSpec, limit: int | None = None, slack_tokens: int = 8) -> dict[str, Any]:
    """Exact match of greedy answers on held-out rows of each T0 template, macro-averaged over templates.

    Each row may generate its gold answer's token count + `slack_tokens` (at most `spec.max_new_tokens`): a longer
    answer cannot match, so generating further only costs time. Gold answers longer than max_new_tokens count as
    misses.
    """
    rows = spec.rows(T0_SOURCE, limit)
    pairs = [prompt_and_response(r.row, HELDOUT_FORMAT, tokenizer) for r in rows]
    budgets = [
        min(len(tokenizer(gold, add_special_tokens=False)["input_ids"]) + slack_tokens, spec.max_new_tokens)
        for _, gold in pairs
    ]
    predictions = greedy_generate(
        model, tokenizer, [p for p, _ in pairs], budgets, _fit_length(model, spec.max_length), spec.batch_tokens,
        desc="t0 exact match",
    )
    hits: dict[str, list[bool]] = {}
    for r, (_, gold), pred in zip(rows, pairs, predictions):
        hits.setdefault(r.group, []).append(exact_match(pred, gold))
    per_template = {name: float(np.mean(v)) for name, v in sorted(hits.items())}
    return {
        "value": float(np.mean(list(per_template.values()))) if per_template else float("nan"),
        "per_template": per_template,
        "templates": len(per_template),
        "rows": len(rows),
        "higher_is_better": True,
    }


# ------------------------------------------------------------------------------------------------ task index
class _IgnoreTags(yaml.SafeLoader):
    pass


_IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: None)


@functools.lru_cache(maxsize=4)
def _task_index(tasks_dir: str) -> dict[str, dict]:
    """Our lm-eval task and group names -> {yaml, type}, read from the YAMLs (tags such as !function ignored)."""
    index = {}
    for path in sorted(Path(tasks_dir).rglob("*.yaml")):
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_IgnoreTags) or {}
        if isinstance(cfg.get("group"), str):
            index[cfg["group"]] = {"yaml": str(path), "type": "group"}
        elif isinstance(cfg.get("task"), str):
            index[cfg["task"]] = {"yaml": str(path), "type": "task"}
    return index


def lm_eval_tasks() -> list[str]:
    return sorted(_task_index(str(TASKS_DIR)))


def _main_task_names() -> list[str]:
    """The names worth listing: every task/group except the 57 MMLU subjects and 4 categories."""
    return [t for t in lm_eval_tasks() if not t.startswith("da_mmlu_")]


def known_task_listing() -> str:
    return ", ".join(_main_task_names() + ["da_mmlu_<subject>", *OUR_METRICS])


class TaskRequest(NamedTuple):
    name: str  # as lm-eval / our metrics know it
    num_fewshot: int | None  # `name:N`


def parse_tasks(tasks: Iterable[str] | str) -> list[TaskRequest]:
    """'arc_easy,da_mmlu:5,heldout_loss' -> requests; names without the `da_` prefix are accepted; unknown -> UserError."""
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    known = set(lm_eval_tasks())
    requests, seen = [], set()
    for raw in tasks:
        raw = raw.strip()
        if not raw:
            continue
        name, _, shots = raw.partition(":")
        name = name.strip()
        if name not in known and name not in OUR_METRICS and f"da_{name}" in known:
            name = f"da_{name}"
        if name not in known and name not in OUR_METRICS:
            hint = did_you_mean(name, [*known, *OUR_METRICS])
            raise UserError(f"unknown evaluation task '{name}'{hint}; ours: {known_task_listing()}")
        if shots and (not shots.strip().isdigit() or name in OUR_METRICS):
            raise UserError(f"'{raw}': write few-shot counts as TASK:N with N a whole number, for lm-eval tasks only")
        if name in seen:
            raise UserError(f"evaluation task '{name}' is named twice")
        seen.add(name)
        requests.append(TaskRequest(name, int(shots) if shots else None))
    if not requests:
        raise UserError(f"no evaluation task given; ours: {known_task_listing()}")
    return requests


# ----------------------------------------------------------------------------------------------- the spec
class EvalSpec(BaseModel):
    """The recipe's optional `eval:` block."""

    model_config = ConfigDict(extra="forbid")
    tasks: list[str] = Field(
        min_length=1,
        description="lm-eval tasks from eval/ (da_arc_easy, da_arc_challenge, da_gsm8k, da_mmlu, da_ifeval, "
        "da_humaneval, da_mbpp; `da_` may be left out; `TASK:N` sets N shots) and heldout_loss, t0_exact",
    )
    limit: Optional[int] = Field(None, gt=0, description="at most this many rows per task (and per held-out source/template)")
    every_round: bool = Field(True, description="evaluate after every round (else only after the last)")
    batch_size: Union[int, str] = Field("auto", description="lm-eval batch size; 'auto' is 4 on CPU")
    max_gen_toks: Optional[int] = Field(None, gt=0, description="cap on generated tokens for generation tasks")
    apply_chat_template: bool = Field(False, description="lm-eval prompts through the tokenizer's chat template")
    allow_code_execution: bool = Field(False, description="consent to run generated code (da_humaneval, da_mbpp)")
    data_dir: Optional[Path] = Field(None, description="evaluation data folder (default ../shared/data/eval)")
    heldout: HeldoutSpec = Field(default_factory=HeldoutSpec)

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: list[str]) -> list[str]:
        try:
            parse_tasks(value)
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, value):
        if isinstance(value, str) and value != "auto" and not re.fullmatch(r"auto:\d+", value):
            raise ValueError("batch_size is a positive whole number or 'auto'")
        if isinstance(value, int) and value <= 0:
            raise ValueError("batch_size must be positive")
        return value


# ------------------------------------------------------------------------------------------------ running
@contextlib.contextmanager
def staged_tasks(data_dir: Path):
    """A temporary copy of eval/ with `${DATA_DIR}` replaced by the absolute evaluation data folder."""
    data_dir = Path(data_dir).resolve()
    text_path = data_dir.as_posix()
    if any(bad in text_path for bad in (": ", " #", "\n", "'", '"')):
        raise UserError(f"evaluation data folder {data_dir}: its path holds characters a YAML path cannot carry plainly")
    with tempfile.TemporaryDirectory(prefix="da-tasks-") as tmp:
        dest = Path(tmp) / "tasks"
        shutil.copytree(TASKS_DIR, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.md"))
        for path in dest.rglob("*"):
            if path.is_file() and (path.suffix == ".yaml" or path.name.endswith("_yaml")):
                text = path.read_text(encoding="utf-8")
                if PLACEHOLDER in text:
                    path.write_text(text.replace(PLACEHOLDER, text_path), encoding="utf-8")
        yield dest


def _check_task_data(names: list[str], data_dir: Path) -> None:
    """Every data file a requested task names exists (one clear line instead of a datasets traceback)."""
    index = _task_index(str(TASKS_DIR))
    if not data_dir.is_dir():
        raise UserError(f"evaluation data folder {data_dir} not found (set {EVAL_DATA_ENV} or data_dir)")
    for name in names:
        yaml_path = Path(index[name]["yaml"])
        files = yaml_path.parent.glob("*.yaml") if index[name]["type"] == "group" else [yaml_path]
        for f in files:
            for rel in re.findall(re.escape(PLACEHOLDER) + r"(/[^\s'\"]+)", f.read_text(encoding="utf-8")):
                if not (data_dir / rel.lstrip("/")).is_file():
                    raise UserError(f"task {name} needs {data_dir / rel.lstrip('/')}, which does not exist")


@contextlib.contextmanager
def logs_to_file(log_file: Path | None):
    """lm-eval's (and its libraries') logs, warnings, prints and progress bars go to `log_file`, not the terminal."""
    if log_file is None:
        yield
        return
    lm_eval_logger = logging.getLogger("lm_eval")
    level = lm_eval_logger.level
    lm_eval_logger.setLevel(logging.INFO)  # its progress notes are INFO; another library may have raised the level
    try:
        with logs_to(Path(log_file)):
            yield
    finally:
        lm_eval_logger.setLevel(level)


def json_safe(obj: Any) -> Any:
    """lm-eval's results as plain JSON: numpy scalars -> numbers, NaN/inf -> null, callables and others -> text."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if callable(obj):
        return f"<function {getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}>"
    return str(obj)


def _merge_results(parts: list[dict]) -> dict:
    merged: dict = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key].update(value)
            else:
                merged.setdefault(key, value)
    return merged


def flat_metrics(result: dict, tasks: Iterable[str] | None = None) -> dict[str, float]:
    """{'da_arc_easy/acc': 0.5, 'da_gsm8k/exact_match/strict-match': 0.0, 'heldout_loss': 2.1, ...} of an eval
    result (stderr values left out); `tasks` defaults to the tasks the run asked for."""
    if tasks is None:
        tasks = result.get("meta", {}).get("tasks") or []
    lm = result.get("lm_eval") or {}
    out: dict[str, float] = {}
    for name in tasks:
        name = name.split(":")[0]
        if name in OUR_METRICS:
            value = (result.get("ours") or {}).get(name, {}).get("value")
            if isinstance(value, (int, float)):
                out[name] = float(value)
            continue
        entry = (lm.get("results") or {}).get(name) or (lm.get("groups") or {}).get(name) or {}
        for key, value in entry.items():
            metric, _, filt = key.partition(",")
            if key == "alias" or metric.endswith("_stderr") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            out[f"{name}/{metric}" + (f"/{filt}" if filt and filt != "none" else "")] = float(value)
    return out


def _resolve_batch_size(batch_size: int | str, device) -> int | str:
    if isinstance(batch_size, str) and batch_size.startswith("auto") and device.type == "cpu":
        return CPU_BATCH_SIZE  # lm-eval's search doubles the batch until it runs out of memory: fine on a GPU only
    return batch_size


def evaluate(
    base_model: str | Path,
    adapter: str | Path | None = None,
    tasks: Iterable[str] | str = ("da_arc_easy", "heldout_loss"),
    limit: int | None = None,
    batch_size: int | str = "auto",
    out_file: str | Path | None = None,
    *,
    heldout: HeldoutSpec | None = None,
    max_gen_toks: int | None = None,
    apply_chat_template: bool = False,
    allow_code_execution: bool = False,
    data_dir: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    log_file: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Evaluate base_model (+ the LoRA adapter) on `tasks`; write `out_file` (JSON, atomic) and return its content.

    lm-eval tasks run through `simple_evaluate` with HFLM(pretrained=base_model, peft=adapter) on our task YAMLs;
    its logs go to `log_file` (default: out_file with suffix .log; none written when both are None).
    `heldout_loss` and `t0_exact` reuse the same model object. `limit` caps rows per lm-eval task and, for our
    metrics, rows per source and per T0 template plus the number of T0 templates.
    """
    from .models import all_cpu_threads, check_model_dir, load_model, load_tokenizer, resolve_device, resolve_dtype

    say = log or (lambda msg: None)
    requests = parse_tasks(tasks)
    heldout = heldout or HeldoutSpec()
    lm_requests = [r for r in requests if r.name not in OUR_METRICS]
    ours_requested = [r.name for r in requests if r.name in OUR_METRICS]
    unsafe = [r.name for r in lm_requests if r.name in UNSAFE_TASKS]
    if unsafe and not allow_code_execution:
        raise UserError(
            f"{', '.join(unsafe)}: runs model-written code on this machine; allow it with allow_code_execution "
            "(CLI: --allow-code-execution) or leave the task out"
        )
    check_model_dir(base_model)
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise UserError(f"adapter folder {adapter} has no adapter_config.json")
    data = eval_data_dir(data_dir)
    if lm_requests:
        _check_task_data([r.name for r in lm_requests], data)
    if ours_requested:  # read the held-out rows now: a missing pool file fails before lm-eval's long run
        needed = set(heldout.sources) if "heldout_loss" in ours_requested else set()
        if "t0_exact" in ours_requested:
            needed.add(T0_SOURCE)
        for source in sorted(needed):
            heldout.rows(source, limit)
    if out_file is not None and log_file is None:
        log_file = Path(out_file).with_suffix(".log")
    dev = resolve_device(device)
    started = time.time()
    lm_results: dict = {}
    ours: dict[str, Any] = {}
    with all_cpu_threads():
        model = None
        if lm_requests:
            say(f"lm-eval: {', '.join(r.name for r in lm_requests)}" + (f" (log: {log_file})" if log_file else ""))
            with logs_to_file(Path(log_file) if log_file else None):
                lm_results, model = _run_lm_eval(
                    base_model, adapter, lm_requests, limit, _resolve_batch_size(batch_size, dev), data, dev,
                    resolve_dtype(dtype, dev), max_gen_toks, apply_chat_template, allow_code_execution, trust_remote_code,
                )
        if ours_requested:
            tokenizer = load_tokenizer(base_model, trust_remote_code)
            if model is None:
                model = load_model(base_model, adapter, device, dtype, trust_remote_code)
            model.eval()
            if "heldout_loss" in ours_requested:
                say("held-out loss: " + ", ".join(heldout.sources))
                ours["heldout_loss"] = heldout_loss(model, tokenizer, heldout, limit)
            if "t0_exact" in ours_requested:
                say("t0 exact match")
                ours["t0_exact"] = t0_exact(model, tokenizer, heldout, limit)
            ours["heldout"] = heldout.model_dump(mode="json")
    result = {
        "lm_eval": json_safe(lm_results),
        "ours": json_safe(ours),
        "meta": {
            "base_model": str(base_model),
            "adapter": str(adapter) if adapter is not None else None,
            "tasks": [r.name for r in requests],
            "num_fewshot": {r.name: r.num_fewshot for r in lm_requests if r.num_fewshot is not None},
            "limit": limit,
            "data_dir": str(data) if lm_requests else None,
            "log_file": str(log_file) if log_file else None,
            "seconds": round(time.time() - started, 2),
        },
    }
    result["metrics"] = flat_metrics(result)
    if out_file is not None:
        write_json(Path(out_file), result)
    return result


def _run_lm_eval(
    base_model, adapter, requests: list[TaskRequest], limit, batch_size, data_dir: Path, dev, torch_dtype,
    max_gen_toks, apply_chat_template, allow_code_execution, trust_remote_code,
) -> tuple[dict, Any]:
    """simple_evaluate once per distinct few-shot setting (one HFLM, loaded once); results merged."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(
        pretrained=str(base_model),
        peft=str(adapter) if adapter is not None else None,
        device=str(dev),
        dtype={torch.float32: "float32", torch.bfloat16: "bfloat16"}.get(torch_dtype, "auto"),
        batch_size=batch_size,
        trust_remote_code=trust_remote_code,
    )
    by_shots: dict[int | None, list[str]] = {}
    for r in requests:
        by_shots.setdefault(r.num_fewshot, []).append(r.name)
    parts = []
    with staged_tasks(data_dir) as include:
        manager = TaskManager(include_path=str(include), include_defaults=False)
        for shots, names in by_shots.items():
            part = simple_evaluate(
                model=lm,
                tasks=names,
                num_fewshot=shots,
                limit=limit,
                task_manager=manager,
                log_samples=False,
                gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
                apply_chat_template=apply_chat_template,
                confirm_run_unsafe_code=allow_code_execution,
            )
            if part:
                parts.append(part)
    return _merge_results(parts), lm.model


def evaluate_spec(
    spec: EvalSpec,
    base_model: str | Path,
    adapter: str | Path | None,
    out_file: str | Path,
    *,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict:
    """`evaluate` with the settings of a recipe's `eval:` block."""
    return evaluate(
        base_model, adapter, spec.tasks, spec.limit, spec.batch_size, out_file,
        heldout=spec.heldout, max_gen_toks=spec.max_gen_toks, apply_chat_template=spec.apply_chat_template,
        allow_code_execution=spec.allow_code_execution, data_dir=spec.data_dir, device=device, dtype=dtype,
        trust_remote_code=trust_remote_code, log=log,
    )
