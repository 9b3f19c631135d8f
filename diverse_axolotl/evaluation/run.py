"""Running an evaluation: lm-eval's `simple_evaluate` with an HFLM around base + adapter (merged by
`models.load_model`), then our metrics on the same model object; one JSON result file per call.

Result file (`out_file`, written atomically):
  {"lm_eval": <lm-eval's results dict, JSON-safe>, "ours": {...}, "metrics": {"<task>/<metric>": value, ...},
   "meta": {...}}
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..data import write_json
from ..errors import UserError
from ..logs import logs_to
from .heldout import T0_SOURCE, HeldoutSpec, heldout_exact, heldout_loss, t0_exact
from .lm_tasks import OUR_METRICS, UNSAFE_TASKS, TaskRequest, check_task_data, eval_data_dir, parse_tasks, task_manager
from .own_data import HeldoutSet
from .spec import EvalSpec

CPU_BATCH_SIZE = 4


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
            out.update(_our_flat(name, (result.get("ours") or {}).get(name) or {}))
            continue
        entry = (lm.get("results") or {}).get(name) or (lm.get("groups") or {}).get(name) or {}
        for key, value in entry.items():
            metric, _, filt = key.partition(",")
            if (
                key == "alias"
                or metric.endswith("_stderr")
                or not isinstance(value, (int, float))
                or isinstance(value, bool)
            ):
                continue
            out[f"{name}/{metric}" + (f"/{filt}" if filt and filt != "none" else "")] = float(value)
    return out


def _our_flat(name: str, entry: dict) -> dict[str, float]:
    """`heldout_loss` and, when there is more than one group, `heldout_loss/<group>` (T0's templates stay in the
    result file only: there are hundreds)."""
    out = {name: float(entry["value"])} if isinstance(entry.get("value"), (int, float)) else {}
    groups = entry.get("per_group") or {}
    if name != "t0_exact" and len(groups) > 1:
        for group, value in groups.items():
            value = value.get("loss") if isinstance(value, dict) else value
            if isinstance(value, (int, float)):
                out[f"{name}/{group}"] = float(value)
    return out


def _check_heldout(
    requested: list[str], heldout: HeldoutSpec, own: HeldoutSet | None, limit: int | None
) -> HeldoutSet | None:
    """Read the held-out rows before lm-eval's long run, so a missing file fails first; returns the user's set."""
    if heldout.own:
        return own or heldout.own_set()
    needed = set(heldout.sources) if {"heldout_loss", "heldout_exact"} & set(requested) else set()  # type: ignore[arg-type]
    if "t0_exact" in requested:
        needed.add(T0_SOURCE)
    for source in sorted(needed):
        heldout.rows(source, limit)
    return None


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
    own: HeldoutSet | None = None,
) -> dict:
    """Evaluate base_model (+ the LoRA adapter) on `tasks`; write `out_file` (JSON, atomic) and return its content.

    lm-eval tasks run through `simple_evaluate` with an HFLM around base_model + adapter (merged) on our task YAMLs;
    its logs go to `log_file` (default: out_file with suffix .log; none written when both are None).
    `heldout_loss`, `heldout_exact` and `t0_exact` reuse the same model object, on `own` (a split the loop carved)
    or the rows `heldout` names. `limit` caps rows per lm-eval task and, for our metrics, rows per group (source,
    label, T0 template) plus the number of T0 templates.
    """
    from ..models import all_cpu_threads, check_model_dir, load_model, load_tokenizer, resolve_device

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
        check_task_data([r.name for r in lm_requests], data)
    if ours_requested:
        own = _check_heldout(ours_requested, heldout, own, limit)
    if out_file is not None and log_file is None:
        log_file = Path(out_file).with_suffix(".log")
    dev = resolve_device(device)
    started = time.time()
    lm_results: dict = {}
    ours: dict[str, Any] = {}
    with all_cpu_threads():
        # one model for lm-eval and our metrics: base + adapter merged (models.load_model), handed to HFLM as is;
        # what loading says (peft, transformers) goes to the evaluation's log with lm-eval's own output
        with logs_to_file(Path(log_file) if log_file else None):
            model = load_model(base_model, adapter, device, dtype, trust_remote_code)
            tokenizer = load_tokenizer(base_model, trust_remote_code)
        if lm_requests:
            say(f"lm-eval: {', '.join(r.name for r in lm_requests)}" + (f" (log: {log_file})" if log_file else ""))
            with logs_to_file(Path(log_file) if log_file else None):
                lm_results = _run_lm_eval(
                    model,
                    tokenizer,
                    lm_requests,
                    limit,
                    _resolve_batch_size(batch_size, dev),
                    data,
                    max_gen_toks,
                    apply_chat_template,
                    allow_code_execution,
                )
        if ours_requested:
            model.eval()
            if "heldout_loss" in ours_requested:
                say("held-out loss: " + (own.origin if own else ", ".join(heldout.sources)))  # type: ignore[arg-type]
                ours["heldout_loss"] = heldout_loss(model, tokenizer, heldout, limit, own)
            if "heldout_exact" in ours_requested:
                say("held-out exact match: " + (own.origin if own else ", ".join(heldout.sources)))  # type: ignore[arg-type]
                ours["heldout_exact"] = heldout_exact(model, tokenizer, heldout, limit, own)
            if "t0_exact" in ours_requested:
                say("t0 exact match")
                ours["t0_exact"] = t0_exact(model, tokenizer, heldout, limit)
            ours["heldout"] = heldout.model_dump(mode="json")
            if own is not None:
                ours["heldout_set"] = {k: v for k, v in own.record().items() if k != "file_rows"}
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
    model, tokenizer, requests: list[TaskRequest], limit, batch_size, data_dir: Path | None, max_gen_toks,
    apply_chat_template, allow_code_execution,
) -> dict:
    """simple_evaluate once per distinct few-shot setting (one HFLM around our loaded model); results merged."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    # HFLM(peft=...) would keep the LoRA layers unmerged: three matmuls per adapted layer instead of one
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    by_shots: dict[int | None, list[str]] = {}
    for r in requests:
        by_shots.setdefault(r.num_fewshot, []).append(r.name)
    parts = []
    manager = task_manager([r.name for r in requests], data_dir)
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
    return _merge_results(parts)


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
    own: HeldoutSet | None = None,
) -> dict:
    """`evaluate` with the settings of a recipe's `eval:` block (`own`: the held-out split the loop carved)."""
    return evaluate(
        base_model, adapter, spec.tasks, spec.limit, spec.batch_size, out_file,
        heldout=spec.heldout, max_gen_toks=spec.max_gen_toks, apply_chat_template=spec.apply_chat_template,
        allow_code_execution=spec.allow_code_execution, data_dir=spec.data_dir, device=device, dtype=dtype,
        trust_remote_code=trust_remote_code, log=log, own=own,
    )
