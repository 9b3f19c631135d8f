"""`python -m bench.quality`: build the pool, write one recipe per run, run each through the toolkit's CLI
(resuming what exists), then aggregate into RESULTS.md, results.json and plots."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from diverse_axolotl.data import atomic_path
from diverse_axolotl.errors import UserError

from .config import HERE, REPO_ROOT, QualityConfig, budget_label, load_config
from .pool import build_pool, heldout_spec
from .results import aggregate, cell, collect, fmt, lower_is_better, plot_bars, plot_composition, plot_metric, table
from .runner import axolotl_keys, cuda_available, execute, plan_runs, recipe_for, write_recipe

DEFAULT_CONFIG = HERE / "default.yaml"
SMOKE_CONFIG = HERE / "smoke.yaml"
SMALL_SUFFIXES = {".json", ".jsonl", ".yaml", ".md", ".png", ".log"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__)
    p.add_argument(
        "--config", type=Path, default=None, help=f"benchmark config (default {DEFAULT_CONFIG.relative_to(REPO_ROOT)})"
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="two arms on a tiny random model (bench/quality/smoke.yaml), a few minutes on CPU",
    )
    p.add_argument(
        "--arms", default=None, help="comma-separated arms to run (default: all); the report covers every arm found"
    )
    p.add_argument("--budgets", default=None, help="comma-separated budget fractions to run (default: the config's)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds to run (default: each arm's); two invocations"
                   " can then run one arm's seeds side by side")
    p.add_argument("--out", type=Path, default=None, help="write RESULTS.md and plots here, run folders under OUT/work")
    p.add_argument(
        "--work", type=Path, default=None, help="folder for the pool, recipes and run folders (overrides the config)"
    )
    p.add_argument(
        "--max-minutes", type=float, default=None, help="start no new run after this many minutes (then report)"
    )
    p.add_argument("--dry-run", action="store_true", help="build the pool and recipes, print the plan, run nothing")
    p.add_argument("--report-only", action="store_true", help="run nothing; aggregate what the run folders hold")
    p.add_argument(
        "--validation",
        action="store_true",
        help="with --report-only: also score finished runs on the validation split (else only cached scores)",
    )
    p.add_argument(
        "--pack",
        type=Path,
        default=None,
        help="also write a .tar.gz of the work folder's small files (no adapters or embeddings), to carry results back",
    )
    return p.parse_args(argv)


def device_description() -> str:
    if cuda_available():
        import torch

        return f"GPU: {torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"CPU: {model}, {os.cpu_count()} cores (load average {load:.1f} at the start; shared machine)"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "diverse_axolotl", "bench"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return (
            out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
            if out.returncode == 0
            else "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "axolotl", "lm_eval", "faiss-cpu"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def command_line(args_list: list[str], gpu: bool) -> str:
    env = "" if gpu else "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 "
    return env + "python -m bench.quality " + shlex.join(args_list)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        return run(args, argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace, argv: list[str]) -> int:
    t0 = time.perf_counter()
    if args.smoke and args.config is not None:
        raise UserError("--smoke uses bench/quality/smoke.yaml; give either --smoke or --config")
    cfg = load_config(SMOKE_CONFIG if args.smoke else (args.config or DEFAULT_CONFIG))
    results_dir = args.out.resolve() if args.out else cfg.resolve(cfg.results)
    work = args.work.resolve() if args.work else (results_dir / "work" if args.out else cfg.resolve(cfg.output))
    arms = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else None
    for a in arms or []:
        if a not in cfg.arms:
            from diverse_axolotl.errors import did_you_mean

            raise UserError(f"--arms: unknown arm '{a}'{did_you_mean(a, cfg.arms)}; arms: {', '.join(cfg.arms)}")
    budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else None
    gpu = cuda_available()
    device = device_description()
    print(f"benchmark {cfg.name}: {device}; work folder {work}; results {results_dir}", flush=True)

    model, data_root = prepare_inputs(cfg, work)
    meta = build_pool(cfg, data_root, work)
    pool_file = work / "pool.json"
    pool_rows = json.loads(pool_file.read_text(encoding="utf-8"))
    heldout = heldout_spec(cfg, data_root).model_dump(mode="json")
    eval_dir = cfg.resolve(cfg.eval_data_dir) if cfg.eval_data_dir else None
    every_plan = plan_runs(cfg, len(pool_rows))
    recipes = {}
    for plan in every_plan:
        path = work / "recipes" / f"{plan.key}.yaml"
        write_recipe(path, recipe_for(plan, cfg, pool_file, model, work / "runs", heldout, gpu, eval_dir))
        recipes[plan.key] = path
    todo = plan_runs(cfg, len(pool_rows), arms, budgets)
    if args.seeds:
        todo = [plan for plan in todo if plan.seed in {int(x) for x in args.seeds.split(",")}]
    for plan in todo:
        rows = ", ".join(f"{budget_label(b)}={n}" for b, n in plan.rows_at.items())
        print(
            f"  plan {plan.key}: {plan.mode}, seed_size {plan.selection['seed_size']}, per_round "
            f"{plan.selection['per_round']}, rounds {plan.selection['rounds']} ({rows} rows)",
            flush=True,
        )
    status: dict[str, dict] = {}
    if args.dry_run:
        from diverse_axolotl.recipe import load_recipe

        for plan in todo:
            load_recipe(recipes[plan.key])  # our block and files (Axolotl's own check runs with `run`)
        print(f"dry run: {len(todo)} runs planned, recipes in {work / 'recipes'}")
        return 0
    if not args.report_only:
        status = execute(todo, recipes, work / "runs", work / "logs", gpu, args.max_minutes)
    invocation = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": command_line(argv, gpu),
        "device": device,
        "runs": status,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    with open(work / "invocations.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(invocation) + "\n")
    validation: list[str] = []
    if cfg.validation is not None:
        from .validation import score_runs, validation_rows, validation_section

        rows = validation_rows(cfg, data_root, meta)
        scored = score_runs(cfg, every_plan, work, model, rows, compute=args.validation or not args.report_only)
        validation = validation_section(cfg, scored, len(rows))
    written = write_results(
        cfg, every_plan, work, results_dir, pool_rows, meta, status, invocation, model, gpu, validation
    )
    print(f"results: {written} ({time.perf_counter() - t0:.0f} s)")
    if args.pack:
        pack(work, args.pack)
        print(f"packed the small files into {args.pack}")
    failed = [k for k, s in status.items() if s["status"].startswith("failed")]
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)} (see their logs in {work / 'logs'})", file=sys.stderr)
    return 1 if failed else 0


def prepare_inputs(cfg: QualityConfig, work: Path) -> tuple[Path, Path]:
    from diverse_axolotl.evaluation import default_data_root

    from .smoke import build_tiny_model, fixture_data_root

    work.mkdir(parents=True, exist_ok=True)
    if cfg.model == "tiny":
        model = build_tiny_model(work / "tiny_model")
    else:
        model = cfg.resolve(cfg.model)
        if not (model / "config.json").is_file():
            raise UserError(f"model folder {model} not found (for SmolLM2 run `diverse-axolotl prepare-model`)")
    if cfg.data_root == "fixture":
        data_root = fixture_data_root(work / "data")
    elif cfg.data_root:
        data_root = cfg.resolve(cfg.data_root)
    else:
        data_root = default_data_root()
    return model, data_root


def pack(work: Path, target: Path) -> None:
    """The work folder's small files (json, yaml, logs; no adapters, embeddings, training files or the pool, which
    is rebuilt identically), as a .tar.gz to unpack into the same work folder elsewhere:
    `tar xzf FILE -C <work>` then `--report-only`. A selector's state between rounds (`selector_state.npz`, one
    int per pool row) goes too: unlike an adapter it cannot be rebuilt, and without it an unpacked iterative run
    cannot continue (the loop refuses)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            rel = path.relative_to(work)
            if (
                path.is_file()
                and (path.suffix in SMALL_SUFFIXES or path.name == "selector_state.npz")
                and rel.parts[0] not in ("tiny_model", "data")
                and not any(part.startswith("adapter") or part == "prepared" for part in rel.parts)
                and path.name != "train.jsonl"
                and path.stat().st_size < 8 << 20
            ):
                tar.add(path, arcname=str(rel))


# ------------------------------------------------------------------------------------------------ RESULTS.md
def write_results(
    cfg: QualityConfig,
    plans,
    work: Path,
    results_dir: Path,
    pool_rows: list[dict],
    meta: dict,
    status: dict,
    invocation: dict,
    model: Path,
    gpu: bool,
    validation: list[str] | None = None,
) -> Path:
    collected = collect(cfg, plans, work, pool_rows, meta, status)
    records = collected["records"]
    found = sorted({m for r in records for m in r["metrics"]})
    headline = [m for m in cfg.report_metrics if m in found] or [
        m for m in found if "/" not in m or m.startswith("da_")
    ]
    per_source = sorted(m for m in found if m.startswith("heldout_loss/"))
    metrics = list(dict.fromkeys(headline + per_source))
    agg = aggregate(records, metrics)
    arms = list(cfg.arms)
    modes = {a: c.mode for a, c in cfg.arms.items()}
    budgets = list(cfg.budgets)
    plots = results_dir / "plots"
    results_dir.mkdir(parents=True, exist_ok=True)
    n = len(pool_rows)

    md: list[str] = [f"# Selection-quality benchmark: `{cfg.name}`", ""]
    if cfg.description:
        md += [cfg.description.strip(), ""]
    finished = {r["key"] for r in records}
    md += [
        *_command_lines(work, invocation),
        f"- **Config**: `{_rel(cfg.path)}`; work folder `{_rel(work)}`",
        f"- **Code**: commit {git_commit()}; " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        f"- **Runs**: {len(finished)} of {len(plans)} planned run folders have results"
        + (f"; {len(collected['missing'])} (run, budget) results missing" if collected["missing"] else ""),
        "",
    ]
    md += _setup_section(cfg, meta, plans, n, model, gpu)
    md += [
        "## Results",
        "",
        "Each cell: mean ± standard deviation over seeds (n = seeds). Against `random` at the same budget, "
        "**win** / *loss* means the arm's mean is better / worse than random's mean by more than random's spread "
        "(max - min over its seeds); (tie) means inside it. `full` trains on every pool row (the ceiling).",
        "",
    ]
    cols = [budget_label(b) for b in budgets] + ["100%"]
    for m in headline:
        png = plots / f"metric_{_safe(m)}.png"
        plot_metric(records, arms, modes, m, png)
        rows = []
        for a in arms:
            cells = [cell(agg[(a, b)][m]) if (a, b) in agg else "-" for b in budgets]
            cells.append(cell(agg[(a, 1.0)][m]) if (a, 1.0) in agg else "-")
            if any(c != "-" for c in cells):
                rows.append([a] + cells)
        md += [
            f"### {m} ({'lower' if lower_is_better(m) else 'higher'} is better)",
            "",
            f"![{m}](plots/{png.name})",
            "",
            table(["arm"] + cols, rows),
            "",
        ]
    if per_source:
        md += ["### Held-out answer loss per source (lower is better)", ""]
        rows = [
            [a, budget_label(b)] + [cell(agg[(a, b)][m], 3) for m in per_source]
            for a in arms
            for b in [*budgets, 1.0]
            if (a, b) in agg
        ]
        md += [table(["arm", "budget"] + [m.split("/", 1)[1] for m in per_source], rows), ""]
    md += _verdict_summary(agg, arms, budgets, metrics)
    md += _diversity_section(agg, arms, budgets, meta, collected, plots)
    md += _time_section(agg, arms, budgets, plots)
    md += _precision_section(records)
    md += validation or []
    if collected["missing"]:
        md += [
            "## Missing results",
            "",
            table(
                ["run", "round", "budget", "status"],
                [[x["key"], str(x["round"]), budget_label(x["budget"]), x["status"]] for x in collected["missing"]],
            ),
            "",
        ]
    reading = results_dir / "READING.md"
    md += ["## Reading", ""]
    if reading.is_file():
        md += [reading.read_text(encoding="utf-8").strip(), ""]
    else:
        md += [
            "_Not written yet: after looking at the numbers above, write READING.md beside this file (it is "
            "copied here on every regeneration): where the papers' claims hold in this setting, where they do not, "
            "why we think so (checked by an ablation where possible), and how noisy the numbers are._",
            "",
        ]
    md += [
        "## Reproduce",
        "",
        f"From the repository root: `{_producing_command(work, invocation)}`. "
        "Re-invoking resumes: finished runs are skipped, an "
        "interrupted one continues at its first missing stage (`diverse-axolotl run` on the same recipe). "
        "`--arms a,b` runs only some arms, `--max-minutes M` starts no new run after M minutes; the report always "
        "covers every run folder present. See bench/quality/README.md for the full GPU run split across calls.",
        "",
    ]
    lines = _invocations(work)
    if lines:
        md += ["Invocations on this work folder:", ""]
        md += [
            f"- {x['date']}, {x['seconds']:.0f} s, {x['device'].split(' (')[0]}: `{x['command']}`" for x in lines[-20:]
        ]
        md.append("")
    out = results_dir / "RESULTS.md"
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(md), encoding="utf-8")
        os.chmod(tmp, 0o644)
    summary = {
        "config": _rel(cfg.path),
        "pool_rows": n,
        "metrics": metrics,
        "space": collected["space"],
        "records": records,
        "missing": collected["missing"],
        "aggregate": [{"arm": a, "budget": b, **v} for (a, b), v in agg.items()],
    }
    with atomic_path(results_dir / "results.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1, default=_json_default), encoding="utf-8")
        os.chmod(tmp, 0o644)
    return out


def _invocations(work: Path) -> list[dict]:
    path = work / "invocations.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _producing(work: Path, invocation: dict) -> list[dict]:
    """The invocations that trained something (a report-only regeneration is not how the numbers were made)."""
    ran = [x for x in _invocations(work) if any(r.get("status") == "ran" for r in x.get("runs", {}).values())]
    return ran or [invocation]


def _producing_command(work: Path, invocation: dict) -> str:
    return _producing(work, invocation)[-1]["command"]


def _command_lines(work: Path, invocation: dict) -> list[str]:
    ran = _producing(work, invocation)
    last = ran[-1]
    lines = [
        "- **Date**: run invocation(s) finished "
        + ", ".join(f"{x['date']} (after {x['seconds'] / 60:.0f} min)" for x in ran[-5:])
        + f"; this report {invocation['date']}",
        f"- **Device**: {last['device']}",
        f"- **Command**: `{last['command']}` (from the repository root)",
    ]
    if last["command"] != invocation["command"]:
        lines.append(f"- **Report regenerated** with `{invocation['command']}`")
    return lines


def _json_default(obj):
    if isinstance(obj, float):
        return None
    return str(obj)


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _safe(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _setup_section(cfg: QualityConfig, meta: dict, plans, n: int, model: Path, gpu: bool) -> list[str]:
    md = [
        "## Setup",
        "",
        f"**Pool**: {n} rows in Alpaca format (`pool.json` in the work folder; each row's source "
        "and T0 template in `pool_meta.json`). Every row that `heldout_loss` / `t0_exact` evaluates was removed first "
        "(`HeldoutSpec.excluded_ids()`).",
        "",
    ]
    rows = []
    for name, c in meta["sources"].items():
        rows.append(
            [
                name,
                c["file"],
                str(c["file_rows"]),
                str(c["heldout_excluded"]),
                str(c["ineligible"] + c["empty"]),
                str(c["rows"]),
                f"{100 * c['rows'] / max(n, 1):.1f}%",
                "-" if c["templates"] is None else str(c["templates"]),
            ]
        )
    md += [
        table(
            [
                "source",
                "file",
                "rows in file",
                "held out",
                "dropped (multi-turn/empty)",
                "in pool",
                "share",
                "T0 templates",
            ],
            rows,
        ),
        "",
    ]
    unit = max(1, int(round(cfg.budget_unit * n)))
    md += [
        "**Budgets**: "
        + ", ".join(f"{budget_label(b)} = {cfg.budget_units(b) * unit} rows" for b in cfg.budgets)
        + f" (multiples of a unit of {unit} rows = {budget_label(cfg.budget_unit)} of the pool,"
        " identical for every arm).",
        "",
    ]
    arm_rows = []
    for name, arm in cfg.arms.items():
        example = next((p for p in plans if p.arm == name), None)
        sel = ", ".join(
            [f"{k}={v}" for k, v in arm.selector.items() if k != "name"]
            + [f"embedding.{k}={v}" for k, v in arm.embedding.items()]
        )
        how = {
            "fixed": "round 0 only: the budget drawn at random",
            "base": "the selector on the base model's embeddings (no adapter) fills the budget; one training",
            "oneshot": f"{cfg.oneshot_seed_rows} random rows trained once, pool embedded with that adapter, one "
            "selection round fills the budget",
            "iterative": f"{cfg.iterative.seed_units} unit(s) random, "
            f"then +{cfg.iterative.step_units} unit(s) per round, "
            + (
                "k-means once on round 0's adapter's embeddings, then each round's adapter (retrained from the base)"
                " scores the trained rows"
                if arm.selector.get("name") == "iterative_kmq"
                else "re-embedding with each round's adapter (retrained from the base)"
            ),
            "full": "every pool row",
        }[arm.mode]
        arm_rows.append(
            [
                name,
                arm.mode,
                f"{arm.selector.get('name')}" + (f" ({sel})" if sel else ""),
                arm.scorer.get("name") if arm.scorer else "-",
                ", ".join(map(str, cfg.arm_seeds(arm))),
                how,
                str(example.last_round + 1) if example else "-",
            ]
        )
    md += [
        "**Arms**:",
        "",
        table(["arm", "mode", "selector", "scorer", "seeds", "how the subset is made", "trainings per run"], arm_rows),
        "",
    ]
    keys = axolotl_keys(cfg, model, gpu)
    keys["base_model"] = _rel(Path(keys["base_model"]))
    ev = {k: v for k, v in cfg.eval.items()}
    md += [
        "**Training** (identical for every arm; Axolotl keys as written into each recipe, "
        f"{'GPU' if gpu else 'CPU'} keys included):",
        "",
        "```yaml",
        _yaml(keys).strip(),
        "```",
        "",
        "**Embedding** (`selection.embedding`): `"
        + json.dumps(cfg.embedding)
        + "`. **Evaluation** (`eval:` block, every "
        "arm): `" + json.dumps(ev) + "`; held-out slice: `" + json.dumps(cfg.heldout) + "`.",
        "",
    ]
    return md


def _yaml(obj) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


def _verdict_summary(agg, arms, budgets, metrics) -> list[str]:
    rows = []
    for a in arms:
        if a == "random":
            continue
        cells = []
        for b in budgets:
            e = agg.get((a, b))
            if not e:
                cells.append("-")
                continue
            vs = [e[m]["verdict"] for m in metrics]
            if all(v == "n/a" for v in vs):
                cells.append("n/a")
                continue
            wins = [m for m in metrics if e[m]["verdict"] == "win"]
            losses = [m for m in metrics if e[m]["verdict"] == "loss"]
            ties = sum(v == "tie" for v in vs)
            cells.append(
                f"{len(wins)} win / {len(losses)} loss / {ties} tie"
                + (f"; wins: {', '.join(wins)}" if wins else "")
                + (f"; losses: {', '.join(losses)}" if losses else "")
            )
        if any(c != "-" for c in cells):
            rows.append([a] + cells)
    if not rows:
        return []
    return [
        "### Verdicts against random at a glance",
        "",
        "Over every metric above (headline and per-source). n/a: random has fewer than two seeds at that budget.",
        "",
        table(["arm"] + [budget_label(b) for b in budgets], rows),
        "",
    ]


def _diversity_section(agg, arms, budgets, meta, collected, plots: Path) -> list[str]:
    md = ["## Diversity and coverage of the subsets", ""]
    sources = list(meta["sources"])
    if collected["space"]:
        md += [
            "Diversity measured for every arm in one embedding space: "
            + (
                "the base model's own (a `base` run's `round_0/base_embeddings.npy`, no adapter). "
                if collected["space"] == "base model"
                else f"`{collected['space']}/embeddings.npy` (base model + that run's round-0 adapter). "
            )
            + "Vendi: cosine kernel, 1..rows; nn distance: mean Euclidean distance "
            "to the nearest other selected row; coverage radius: largest distance from a pool row to the subset "
            "(what k-center minimises; lower = better covered). Means over seeds.",
            "",
        ]
    else:
        md += ["No saved embeddings yet: diversity not measured.", ""]
    rows = []
    for a in arms:
        for b in [*budgets, 1.0]:
            e = agg.get((a, b))
            if not e:
                continue
            c = e.get("composition") or {}
            share = " · ".join(f"{s} {100 * c['source_share'].get(s, 0):.0f}%" for s in sources) if c else "-"
            tpl = f"{c['templates_covered']:.0f}/{c['templates_in_pool']}" if c and c["templates_in_pool"] else "-"
            d = e["diversity"]
            rows.append(
                [
                    a,
                    budget_label(b),
                    str(e["rows"]),
                    fmt(d["vendi"], 2),
                    fmt(d["nn_distance"], 3),
                    fmt(d["coverage"], 3),
                    share,
                    tpl,
                    fmt(e["mean_chars"], 0),
                ]
            )
    md += [
        table(
            [
                "arm",
                "budget",
                "rows",
                "Vendi",
                "nn distance",
                "coverage radius",
                "source mix",
                "T0 templates covered",
                "mean characters per row",
            ],
            rows,
        ),
        "",
    ]
    if collected["space"]:
        png = plots / "diversity_vendi.png"
        plot_bars(
            agg,
            arms,
            budgets,
            lambda e: e["diversity"]["vendi"],
            "Vendi score",
            "subset diversity (Vendi, cosine kernel)",
            png,
        )
        md += [f"![Vendi](plots/{png.name})", ""]
    if budgets:
        png = plots / "source_mix.png"
        total = sum(c["rows"] for c in meta["sources"].values()) or 1
        # the largest budget that has subsets (a partial grid may have none at the largest yet)
        shown = next((b for b in reversed(budgets) if any((a, b) in agg for a in arms)), budgets[-1])
        plot_composition(agg, arms, shown, sources, png, {s: c["rows"] / total for s, c in meta["sources"].items()})
        md += [f"![source mix](plots/{png.name})", ""]
    return md


def _precision_section(records: list[dict]) -> list[str]:
    """Which runs trained in which dtype: on a CPU the loop decides bf16 per machine, so sittings on different
    machines can differ (bench/quality/README.md, "Precision on a CPU is the machine's")."""
    by: dict[str, list[str]] = {}
    for r in records:
        by.setdefault(r.get("precision") or "unknown", []).append(f"{r['key']} r{r['round']}")
    if len(by) < 2:
        return []
    md = [
        "## Training precision per run",
        "",
        "On a CPU the loop trains in bf16 where this machine's bf16 matmuls are measured faster, else fp32; these "
        "runs did not all train in the same precision, so differences between the groups below include it.",
        "",
    ]
    md += [table(["precision", "runs (round)"], [[p, ", ".join(sorted(v))] for p, v in sorted(by.items())]), ""]
    return md


def _time_section(agg, arms, budgets, plots: Path) -> list[str]:
    md = [
        "## Wall time per arm (seconds, mean over seeds)",
        "",
        "To produce the model at that budget: training of every round up to it, embedding / scoring / selection "
        "between rounds; evaluation of that round apart (iterative arms' evaluations of earlier rounds are not "
        "counted). Timings on a shared machine are indicative only.",
        "",
    ]
    rows = []
    for a in arms:
        for b in [*budgets, 1.0]:
            e = agg.get((a, b))
            if e:
                t = e["times"]
                rows.append(
                    [a, budget_label(b)]
                    + [fmt(t[s], 1) for s in ("train_s", "embed_s", "score_s", "select_s", "cost_s", "eval_s")]
                )
    md += [table(["arm", "budget", "train", "embed", "score", "select", "total (no eval)", "eval"], rows), ""]
    png = plots / "wall_time.png"
    plot_bars(
        agg, arms, budgets, lambda e: e["times"]["cost_s"], "seconds", "time to the budget's model (no evaluation)", png
    )
    md += [f"![wall time](plots/{png.name})", ""]
    return md
