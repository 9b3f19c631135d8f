"""Plans the benchmark's runs, writes one recipe per run and runs each through `diverse-axolotl run`.

Every run is an ordinary run folder of the toolkit (`<work>/runs/<key>`), made by the toolkit's own CLI in a
subprocess: re-invoking the benchmark re-runs the CLI on the same recipe, which resumes at the first missing stage;
a run whose rounds are all done is skipped without starting the CLI at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from diverse_axolotl.data import atomic_path

from .config import REPO_ROOT, ArmConfig, QualityConfig, budget_label

CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}


@dataclass
class RunPlan:
    key: str  # folder and recipe name
    arm: str
    mode: str
    seed: int
    rows_at: dict[float, int]  # budget fraction -> training rows (full: {1.0: N})
    round_at: dict[float, int]  # budget fraction -> the round that trains on exactly those rows
    selection: dict[str, Any] = field(default_factory=dict)
    every_round: bool = False

    @property
    def last_round(self) -> int:
        return int(self.selection["rounds"])


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover
        return False


def plan_runs(
    cfg: QualityConfig, n_pool: int, arms: list[str] | None = None, budgets: list[float] | None = None
) -> list[RunPlan]:
    """Every run the config asks for (optionally only some arms / budgets), in the config's arm order."""
    unit = max(1, int(round(cfg.budget_unit * n_pool)))
    every = {b: cfg.budget_units(b) * unit for b in cfg.budgets}
    wanted = lambda b: budgets is None or any(abs(b - x) < 1e-9 for x in budgets)  # noqa: E731
    rows = {b: n for b, n in every.items() if wanted(b)}
    plans: list[RunPlan] = []
    for name, arm in cfg.arms.items():
        if arms is not None and name not in arms:
            continue
        if arm.mode == "full" and not wanted(1.0):
            continue
        if arm.mode == "iterative" and not rows:
            continue
        arm_rows = {b: n for b, n in rows.items() if arm.budgets is None or any(abs(b - x) < 1e-9 for x in arm.budgets)}
        for seed in cfg.arm_seeds(arm):
            # an iterative run always covers every budget: its recipe (and so its run folder) must not depend on
            # which budgets this invocation asked for
            plans.extend(_arm_plans(cfg, name, arm, seed, every if arm.mode == "iterative" else arm_rows, unit, n_pool))
    return plans


def _arm_plans(
    cfg: QualityConfig, name: str, arm: ArmConfig, seed: int, rows: dict[float, int], unit: int, n_pool: int
) -> list[RunPlan]:
    base = {"selector": dict(arm.selector), "seed": seed}
    if arm.scorer:
        base["scorer"] = dict(arm.scorer)
    if arm.mode == "full":
        sel = {**base, "seed_size": n_pool, "per_round": 1, "rounds": 0}
        return [RunPlan(f"{name}__s{seed}", name, arm.mode, seed, {1.0: n_pool}, {1.0: 0}, sel)]
    if arm.mode == "iterative":
        it = cfg.iterative
        max_units = max(cfg.budget_units(b) for b in rows)
        rounds = (max_units - it.seed_units) // it.step_units
        sel = {**base, "seed_size": it.seed_units * unit, "per_round": it.step_units * unit, "rounds": rounds}
        round_at = {b: (cfg.budget_units(b) - it.seed_units) // it.step_units for b in rows}
        return [RunPlan(f"{name}__s{seed}", name, arm.mode, seed, dict(rows), round_at, sel, every_round=True)]
    plans = []
    for b, n in rows.items():
        tag = f"{name}__b{budget_label(b).rstrip('%')}__s{seed}"
        if arm.mode == "fixed":
            sel = {**base, "seed_size": n, "per_round": 1, "rounds": 0}
            plans.append(RunPlan(tag, name, arm.mode, seed, {b: n}, {b: 0}, sel))
        elif arm.mode == "base":  # the selector on the base model's own embeddings: one training, nothing thrown away
            sel = {**base, "seed_size": n, "round0": "base", "per_round": 1, "rounds": 0}
            plans.append(RunPlan(tag, name, arm.mode, seed, {b: n}, {b: 0}, sel))
        else:  # oneshot
            seed_rows = cfg.oneshot_seed_rows
            if seed_rows >= n:
                raise ValueError(f"arm {name}: oneshot_seed_rows {seed_rows} is not below the budget of {n} rows")
            sel = {**base, "seed_size": seed_rows, "per_round": n - seed_rows, "rounds": 1}
            plans.append(RunPlan(tag, name, arm.mode, seed, {b: n}, {b: 1}, sel))
    return plans


def axolotl_keys(cfg: QualityConfig, model: Path, gpu: bool) -> dict[str, Any]:
    return {"base_model": str(model), **cfg.axolotl, **(cfg.gpu_axolotl if gpu else cfg.cpu_axolotl)}


def recipe_for(
    plan: RunPlan,
    cfg: QualityConfig,
    pool_file: Path,
    model: Path,
    runs_dir: Path,
    heldout: dict,
    gpu: bool,
    eval_data_dir: Path | None,
) -> dict[str, Any]:
    selection = {
        "pool": {"path": str(pool_file), "format": "alpaca"},
        **plan.selection,
        "retrain_from_base": True,
        "embedding": {**cfg.embedding, **cfg.arms[plan.arm].embedding},
    }
    ev = {**cfg.eval, "every_round": plan.every_round, "heldout": heldout}
    if eval_data_dir is not None:
        ev["data_dir"] = str(eval_data_dir)
    keys = {**axolotl_keys(cfg, model, gpu), **cfg.arms[plan.arm].axolotl}
    return {**keys, "selection": selection, "eval": ev, "output_dir": str(runs_dir / plan.key)}


def write_recipe(path: Path, recipe: dict[str, Any]) -> None:
    text = "# written by bench/quality (do not edit: re-running the benchmark rewrites it)\n" + yaml.safe_dump(
        recipe, sort_keys=False
    )
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def is_finished(recipe_file: Path, run_dir: Path, last_round: int) -> bool:
    """All rounds done by this very recipe (the toolkit's own hash), so the CLI need not even start."""
    info = run_dir / "run.json"
    if not info.is_file() or not (run_dir / "summary.json").is_file():
        return False
    if not all((run_dir / f"round_{k}" / "done.json").is_file() for k in range(last_round + 1)):
        return False
    from diverse_axolotl.recipe import load_recipe

    return json.loads(info.read_text()).get("recipe_hash") == load_recipe(recipe_file).hash


def run_cli(recipe_file: Path, log_file: Path, omp_threads: str | None) -> tuple[int, float]:
    """`diverse-axolotl run <recipe>` in a subprocess (output to log_file); returns (exit code, seconds)."""
    env = {**os.environ, **{k: v for k, v in CHILD_ENV.items() if k not in os.environ}}
    if omp_threads is not None:
        env.setdefault("OMP_NUM_THREADS", omp_threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_file, "a", encoding="utf-8") as fh:
        fh.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} diverse-axolotl run {recipe_file}\n")
        fh.flush()
        proc = subprocess.run(
            [sys.executable, "-m", "diverse_axolotl.cli", "run", str(recipe_file)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(REPO_ROOT),
        )
    return proc.returncode, time.perf_counter() - start


def last_lines(path: Path, n: int = 3) -> str:
    try:
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def execute(
    plans: list[RunPlan],
    recipes: dict[str, Path],
    runs_dir: Path,
    logs_dir: Path,
    gpu: bool,
    max_minutes: float | None,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Run (or resume, or skip) every plan; returns key -> {status, seconds, log}."""
    status: dict[str, dict] = {}
    started = time.perf_counter()
    for i, plan in enumerate(plans, 1):
        recipe, run_dir, log_file = recipes[plan.key], runs_dir / plan.key, logs_dir / f"{plan.key}.log"
        where = f"[{i}/{len(plans)}] {plan.key}"
        if is_finished(recipe, run_dir, plan.last_round):
            status[plan.key] = {"status": "done earlier", "seconds": 0.0, "log": str(log_file)}
            log(f"{where}: finished earlier, skipped")
            continue
        elapsed = (time.perf_counter() - started) / 60
        if max_minutes is not None and elapsed >= max_minutes:
            status[plan.key] = {"status": "not started (time limit)", "seconds": 0.0, "log": str(log_file)}
            log(f"{where}: not started, {elapsed:.1f} of --max-minutes {max_minutes} used; re-run to continue")
            continue
        log(f"{where}: running diverse-axolotl run (log: {log_file})")
        code, seconds = run_cli(recipe, log_file, None if gpu else "1")
        ok = code == 0
        status[plan.key] = {
            "status": "ran" if ok else f"failed (exit {code})",
            "seconds": round(seconds, 1),
            "log": str(log_file),
        }
        log(f"{where}: {'done' if ok else 'FAILED'} in {seconds:.0f} s" + ("" if ok else f": {last_lines(log_file)}"))
    return status
