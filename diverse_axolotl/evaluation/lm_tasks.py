"""Which evaluation tasks exist: lm-eval's whole registry, our offline `da_*` variants beside it, our metrics.

Our task YAMLs ship inside the package (`tasks/`, found with importlib.resources) and are handed to lm-eval's
own `TaskManager` as an extra include path. They read local files relative to an evaluation data folder, which
reaches them as task metadata (`TaskManager(metadata={"data_dir": ...})`, consumed by `tasks/utils.local_files`
through lm-eval's `custom_dataset` hook), so nothing is copied or rewritten. Any other name is looked up in
lm-eval's registry (`arc_easy`, `hellaswag`, `mmlu`, `ifeval`, ...): lm-eval fetches those datasets itself, from
the hub when online and from the Hugging Face datasets cache when offline.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import yaml

from ..errors import UserError, did_you_mean

EVAL_DATA_ENV = "DIVERSE_AXOLOTL_EVAL_DATA"
OUR_METRICS = ("heldout_loss", "heldout_exact", "t0_exact")
UNSAFE_TASKS = ("da_humaneval", "da_mbpp")
OUR_PREFIX = "da_"


def tasks_dir() -> Path:
    """The folder of our task YAMLs, inside the installed package."""
    return Path(str(resources.files("diverse_axolotl.evaluation") / "tasks"))


class _IgnoreTags(yaml.SafeLoader):
    pass


_IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: None)


@functools.lru_cache(maxsize=4)
def _task_index(folder: str) -> dict[str, dict]:
    """Our lm-eval task and group names -> {yaml, type, config}, read from the YAMLs (!function tags ignored)."""
    index = {}
    for path in sorted(Path(folder).rglob("*.yaml")):
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_IgnoreTags) or {}
        if isinstance(cfg.get("group"), str):
            index[cfg["group"]] = {"yaml": str(path), "type": "group", "config": cfg}
        elif isinstance(cfg.get("task"), str):
            index[cfg["task"]] = {"yaml": str(path), "type": "task", "config": cfg}
    return index


def lm_eval_tasks() -> list[str]:
    """Our offline tasks and groups (the `da_` ones)."""
    return sorted(_task_index(str(tasks_dir())))


@functools.lru_cache(maxsize=1)
def registry_names() -> frozenset[str]:
    """Every task, group and tag lm-eval's own registry knows. Indexing it parses thousands of YAMLs (about 15-30 s
    on a small CPU), so the names are kept per lm-eval version in the cache folder."""
    from importlib import metadata

    from ..cache import cache_root
    from ..data import write_json

    version = metadata.version("lm_eval")
    cached = cache_root() / f"lm_eval-{version}-tasks.json"
    if cached.is_file():
        with contextlib.suppress(ValueError, OSError):
            return frozenset(json.loads(cached.read_text(encoding="utf-8")))
    from lm_eval.tasks import TaskManager

    names = sorted(TaskManager().all_tasks)
    with contextlib.suppress(OSError):  # a read-only cache folder costs time, not correctness
        write_json(cached, names)
    return frozenset(names)


def _main_task_names() -> list[str]:
    """The names worth listing: every task/group of ours except the 57 MMLU subjects and 4 categories."""
    return [t for t in lm_eval_tasks() if not t.startswith("da_mmlu_")]


def known_task_listing() -> str:
    return ", ".join(_main_task_names() + ["da_mmlu_<subject>", *OUR_METRICS]) + ", or any lm-eval task"


class TaskRequest(NamedTuple):
    name: str  # as lm-eval / our metrics know it
    num_fewshot: int | None  # `name:N`


def is_ours(name: str) -> bool:
    return name in _task_index(str(tasks_dir()))


def parse_tasks(tasks: Iterable[str] | str) -> list[TaskRequest]:
    """'arc_easy,da_mmlu:5,heldout_loss' -> requests. `da_*` names are our offline tasks, our metrics are ours,
    anything else must be in lm-eval's registry; unknown names -> UserError with a did-you-mean."""
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    requests, seen = [], set()
    for raw in tasks:
        raw = raw.strip()
        if not raw:
            continue
        name, _, shots = raw.partition(":")
        name = name.strip()
        if not (is_ours(name) or name in OUR_METRICS or name in registry_names()):
            hint = did_you_mean(name, [*lm_eval_tasks(), *OUR_METRICS, *registry_names()])
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


def eval_data_dir(override: str | Path | None = None) -> Path | None:
    """The folder our `da_*` tasks read (arc/, gsm8k/, mmlu/, ...): the argument, else $DIVERSE_AXOLOTL_EVAL_DATA,
    else None (the library has no default: the data are the user's)."""
    if override is not None:
        return Path(override).expanduser().resolve()
    if os.environ.get(EVAL_DATA_ENV):
        return Path(os.environ[EVAL_DATA_ENV]).expanduser().resolve()
    return None


def _data_files(name: str) -> list[str]:
    """Files (relative to the data folder) that our task or group `name` reads."""
    entry = _task_index(str(tasks_dir()))[name]
    configs = [entry["config"]]
    if entry["type"] == "group":
        configs = [e["config"] for e in _task_index(str(tasks_dir())).values()
                   if Path(e["yaml"]).parent == Path(entry["yaml"]).parent and e["type"] == "task"]
    return [rel for cfg in configs for rel in ((cfg.get("dataset_kwargs") or {}).get("data_files") or {}).values()]


def check_task_data(names: list[str], data_dir: Path | None) -> None:
    """Every data file our requested tasks read exists (one clear line instead of a datasets traceback)."""
    ours = [n for n in names if is_ours(n)]
    if not ours:
        return
    if data_dir is None:
        raise UserError(
            f"{', '.join(ours)} read local files: name the evaluation data folder (eval.data_dir, --data-dir or"
            f" ${EVAL_DATA_ENV})"
        )
    if not data_dir.is_dir():
        raise UserError(f"evaluation data folder {data_dir} not found (set {EVAL_DATA_ENV} or data_dir)")
    for name in ours:
        for rel in _data_files(name):
            if not (data_dir / rel).is_file():
                raise UserError(f"task {name} needs {data_dir / rel}, which does not exist")


def task_manager(names: list[str], data_dir: Path | None):
    """lm-eval's TaskManager with our tasks as an extra include path; lm-eval's own tasks are indexed only when a
    requested name needs them (indexing them costs seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(
        include_path=str(tasks_dir()),
        include_defaults=any(not is_ours(n) for n in names),
        metadata={"data_dir": str(data_dir)} if data_dir is not None else None,
    )
