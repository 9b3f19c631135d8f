"""Reading the benchmark's run folders back: one record per (arm, budget, seed), statistics over seeds, verdicts
against random, plots and RESULTS.md.

A difference is called a win (or a loss) only when the arm's mean beats (or trails) the random arm's mean at the
same budget by more than random's spread: the range (max - min) of random over its seeds. With fewer than two
random seeds there is no spread and no verdict.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from diverse_axolotl.data import atomic_path
from diverse_axolotl.report.plots import figure, save_png

from .config import QualityConfig, budget_label
from .pool import composition
from .runner import RunPlan

STAGES = ("train_s", "embed_s", "score_s", "select_s", "eval_s")


def lower_is_better(metric: str) -> bool:
    return "loss" in metric


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------------------------------------ collecting
def round_metrics(run_dir: Path, k: int) -> dict[str, float] | None:
    result = _read(run_dir / f"round_{k}" / "eval.json")
    if not isinstance(result, dict):
        return None
    metrics = {m: float(v) for m, v in (result.get("metrics") or {}).items() if isinstance(v, (int, float))}
    per_source = ((result.get("ours") or {}).get("heldout_loss") or {}).get("per_source") or {}
    for source, entry in per_source.items():
        if isinstance(entry, dict) and isinstance(entry.get("loss"), (int, float)):
            metrics[f"heldout_loss/{source}"] = float(entry["loss"])
    return metrics


def round_times(run_dir: Path, k: int) -> dict[str, float] | None:
    """Seconds to produce round k's model (training of rounds 0..k, embedding/scoring/selection after rounds
    0..k-1) and round k's evaluation; evaluations of earlier rounds are left out."""
    rows = {}
    for j in range(k + 1):
        done = _read(run_dir / f"round_{j}" / "done.json")
        if not isinstance(done, dict):
            return None
        rows[j] = done
    get = lambda j, s: float(rows[j].get(s) or 0.0)  # noqa: E731
    train = sum(get(j, "train_s") for j in range(k + 1))
    selection = {s: sum(get(j, s) for j in range(k)) for s in ("embed_s", "score_s", "select_s")}
    return {"train_s": train, **selection, "eval_s": get(k, "eval_s"), "cost_s": train + sum(selection.values())}


def round_precision(run_dir: Path, k: int) -> str | None:
    """The dtype round k trained in, from the Axolotl config it ran (on a CPU the machine decides bf16)."""
    import yaml

    path = run_dir / f"round_{k}" / "axolotl.yaml"
    if not path.is_file():
        return None
    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return "bf16" if cfg.get("bf16") is True else "fp16" if cfg.get("fp16") is True else "fp32"


def find_space(plans: list[RunPlan], runs_dir: Path) -> tuple[str, Path] | None:
    """The embeddings every subset's diversity is measured in: the base model's own (a `base` run's round 0),
    else round 0 of the first one-shot run that saved them (base model + the tiny seed adapter, the same for every
    one-shot arm of that seed), else any round 0."""
    for plan in plans:
        path = runs_dir / plan.key / "round_0" / "base_embeddings.npy"
        if plan.mode == "base" and path.is_file():
            return "base model", path
    ordered = sorted(plans, key=lambda p: (p.mode != "oneshot", p.seed != 0))
    for plan in ordered:
        path = runs_dir / plan.key / "round_0" / "embeddings.npy"
        if path.is_file():
            return f"{plan.key}/round_0", path
    return None


def collect(
    cfg: QualityConfig,
    plans: list[RunPlan],
    work: Path,
    pool_rows: list[dict],
    meta: dict,
    status: dict[str, dict] | None = None,
) -> dict[str, Any]:
    """Every record the tables need; diversity is cached in <work>/cache/diversity.json."""
    from diverse_axolotl.report import diversity

    runs_dir = work / "runs"
    space = find_space(plans, runs_dir)
    cache_file = work / "cache" / "diversity.json"
    cache = _read(cache_file) or {}
    emb = np.asarray(np.load(space[1], mmap_mode="r"), dtype=np.float32) if space else None
    if space is None and cache:  # run folders brought back without their embeddings (--pack): cached values only
        space = (next(iter(cache)), None)
    space_cache = cache.setdefault(space[0], {}) if space else {}
    n_pool = len(pool_rows)
    chars = np.array([len(r["instruction"]) + len(r.get("input") or "") + len(r["output"]) for r in pool_rows])
    records, missing = [], []
    for plan in plans:
        run_dir = runs_dir / plan.key
        by_round = {k: b for b, k in plan.round_at.items()}
        rounds = range(plan.last_round + 1) if plan.every_round else sorted(by_round)
        for k in rounds:
            metrics = round_metrics(run_dir, k)
            if metrics is None:
                if k in by_round:
                    missing.append(
                        {
                            "key": plan.key,
                            "round": k,
                            "budget": by_round[k],
                            "status": (status or {}).get(plan.key, {}).get("status", "not run"),
                        }
                    )
                continue
            manifest = _read(run_dir / f"round_{k}" / "manifest.json") or {}
            indices = manifest.get("indices") or []
            rec = {
                "key": plan.key,
                "arm": plan.arm,
                "mode": plan.mode,
                "seed": plan.seed,
                "round": k,
                "budget": by_round.get(k),
                "rows": len(indices),
                "fraction": len(indices) / n_pool,
                "metrics": metrics,
                "times": round_times(run_dir, k),
                "precision": round_precision(run_dir, k),
            }
            if indices:
                rec["composition"] = composition(meta["rows"], indices)
                rec["mean_chars"] = float(chars[indices].mean())
                if emb is not None and plan.key + f"@{k}" not in space_cache and max(indices) < len(emb):
                    space_cache[plan.key + f"@{k}"] = diversity(emb, indices)
                rec["diversity"] = space_cache.get(plan.key + f"@{k}")
            records.append(rec)
    if emb is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_file) as tmp:
            tmp.write_text(json.dumps(cache, indent=1), encoding="utf-8")
    return {"records": records, "missing": missing, "space": space[0] if space else None, "pool_rows": n_pool}


# ------------------------------------------------------------------------------------------------ statistics
def stats(values: list[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return {"n": 0, "mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
    return {
        "n": int(len(v)),
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def verdict(metric: str, arm: dict[str, float], random: dict[str, float] | None) -> str:
    """'win' / 'loss' when the arm's mean differs from random's by more than random's range over seeds, 'tie'
    inside it, 'n/a' without at least two random seeds."""
    if not random or random["n"] < 2 or arm["n"] == 0 or not math.isfinite(arm["mean"]):
        return "n/a"
    spread = random["max"] - random["min"]
    better = (random["mean"] - arm["mean"]) if lower_is_better(metric) else (arm["mean"] - random["mean"])
    if better > spread:
        return "win"
    if better < -spread:
        return "loss"
    return "tie"


def aggregate(records: list[dict], metrics: list[str], random_arm: str = "random") -> dict[tuple[str, float], dict]:
    """(arm, budget) -> {metric: stats + verdict, 'times': {...}, 'diversity': {...}, 'composition': ...}."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for rec in records:
        if rec["budget"] is not None:
            groups.setdefault((rec["arm"], rec["budget"]), []).append(rec)
    out: dict[tuple[str, float], dict] = {}
    for key, recs in groups.items():
        entry: dict[str, Any] = {"n": len(recs), "rows": recs[0]["rows"], "seeds": sorted(r["seed"] for r in recs)}
        for m in metrics:
            entry[m] = stats([r["metrics"].get(m, float("nan")) for r in recs])
        entry["times"] = {
            s: stats([(r["times"] or {}).get(s, float("nan")) for r in recs])["mean"]
            for s in ("train_s", "embed_s", "score_s", "select_s", "eval_s", "cost_s")
        }
        divs = [r.get("diversity") or {} for r in recs]
        entry["diversity"] = {
            d: stats([x.get(d, float("nan")) for x in divs])["mean"] for d in ("vendi", "nn_distance", "coverage")
        }
        comps = [r["composition"] for r in recs if r.get("composition")]
        if comps:
            shares = {
                s: float(np.mean([c["source_share"].get(s, 0.0) for c in comps])) for s in comps[0]["source_share"]
            }
            entry["composition"] = {
                "source_share": shares,
                "sources_covered": float(np.mean([c["sources_covered"] for c in comps])),
                "sources_in_pool": comps[0]["sources_in_pool"],
                "templates_covered": float(np.mean([c["templates_covered"] for c in comps])),
                "templates_in_pool": comps[0]["templates_in_pool"],
            }
        entry["mean_chars"] = stats([r.get("mean_chars", float("nan")) for r in recs])["mean"]
        out[key] = entry
    for (arm, budget), entry in out.items():
        rnd = out.get((random_arm, budget))
        for m in metrics:
            entry[m]["verdict"] = "-" if arm == random_arm else verdict(m, entry[m], rnd[m] if rnd else None)
    return out


# ---------------------------------------------------------------------------------------------------- plots
def arm_color(i: int, n_arms: int):
    """Arm i's colour: matplotlib's ten defaults, or tab20's twenty when there are more arms (no colour twice)."""
    from matplotlib import colormaps

    return f"C{i % 10}" if n_arms <= 10 else colormaps["tab20"](i % 20)


def plot_metric(
    records: list[dict], arms: list[str], modes: dict[str, str], metric: str, path: Path, random_arm: str = "random"
) -> None:
    fig = figure()
    ax = fig.add_subplot(1, 1, 1)
    xs_all = sorted({round(100 * r["fraction"], 3) for r in records if r["fraction"] < 1})
    # arms at the same budget side by side, not on top of each other
    dodge = 0.012 * float(np.diff(xs_all).min()) if len(xs_all) > 1 else 0.02 * (xs_all[0] if xs_all else 1.0)
    for i, arm in enumerate(arms):
        recs = [r for r in records if r["arm"] == arm and metric in r["metrics"]]
        if not recs:
            continue
        color = arm_color(i, len(arms))
        if modes.get(arm) == "full":
            v = stats([r["metrics"][metric] for r in recs])["mean"]
            ax.axhline(v, color=color, linestyle="--", label=f"{arm} (all rows)")
            continue
        at: dict[float, list[float]] = {}
        for r in recs:
            at.setdefault(round(100 * r["fraction"], 3), []).append(r["metrics"][metric])
        xs = sorted(at)
        st = [stats(at[x]) for x in xs]
        mean = [s["mean"] for s in st]
        if arm == random_arm and any(s["n"] > 1 for s in st):
            ax.fill_between(xs, [s["min"] for s in st], [s["max"] for s in st], color=color, alpha=0.2, linewidth=0)
        err = [0.0 if not math.isfinite(s["std"]) else s["std"] for s in st]
        n = max(s["n"] for s in st)
        band = arm == random_arm and len(xs) > 1
        label = arm + (f" (mean ± std of {n} seeds" + (", min-max band)" if band else ")") if n > 1 else "")
        shift = (i - (len(arms) - 1) / 2) * dodge
        ax.errorbar(
            [x + shift for x in xs],
            mean,
            yerr=err,
            marker="os^Dv"[i % 5],
            color=color,
            capsize=3,
            label=label,
            linestyle="-" if modes.get(arm) == "iterative" else ":" if len(xs) > 1 else "none",
        )
    if len(xs_all) == 1:
        ax.set_xlim(0.8 * xs_all[0], 1.2 * xs_all[0])
    ax.set_xlabel("training rows (% of the pool)")
    ax.set_ylabel(metric)
    ax.set_title(metric + (" (lower is better)" if lower_is_better(metric) else " (higher is better)"))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def plot_bars(agg: dict, arms: list[str], budgets: list[float], value, ylabel: str, title: str, path: Path) -> None:
    fig = figure()
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(budgets), 1)
    for j, b in enumerate(budgets):
        vals = [value(agg[(a, b)]) if (a, b) in agg else float("nan") for a in arms]
        ax.bar(
            np.arange(len(arms)) + j * width,
            [v if math.isfinite(v) else 0 for v in vals],
            width,
            color=f"C{j % 10}",
            label=budget_label(b),
        )
    ax.set_xticks(np.arange(len(arms)) + width * (len(budgets) - 1) / 2)
    ax.set_xticklabels(arms, rotation=20, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, title="budget")
    fig.tight_layout()
    save_png(fig, path)


def plot_composition(
    agg: dict,
    arms: list[str],
    budget: float,
    sources: list[str],
    path: Path,
    pool_share: dict[str, float] | None = None,
) -> None:
    fig = figure()
    ax = fig.add_subplot(1, 1, 1)
    present = [a for a in arms if (a, budget) in agg and agg[(a, budget)].get("composition")]
    shares = {a: agg[(a, budget)]["composition"]["source_share"] for a in present}
    if pool_share:
        present, shares = ["(pool)"] + present, {"(pool)": pool_share, **shares}
    bottom = np.zeros(len(present))
    for j, s in enumerate(sources):
        vals = np.array([100 * shares[a].get(s, 0.0) for a in present])
        ax.bar(present, vals, bottom=bottom, color=f"C{j % 10}", label=s)
        bottom += vals
    ax.set_ylabel("% of the subset")
    ax.set_title(f"source mix of each arm's subset at the {budget_label(budget)} budget")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    save_png(fig, path)


# ------------------------------------------------------------------------------------------------ markdown
def fmt(v: float, digits: int = 4) -> str:
    """`digits` decimals (at most 4 significant ones past 1,000); '-' for missing or non-finite values."""
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "-"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}f}"


def cell(st: dict, digits: int = 4) -> str:
    if not st or st.get("n", 0) == 0:
        return "-"
    text = fmt(st["mean"], digits)
    if st["n"] > 1:
        text += f" ± {fmt(st['std'], digits)} (n={st['n']})"
    v = st.get("verdict")
    if v in ("win", "loss", "tie"):
        text += {"win": " **win**", "loss": " *loss*", "tie": " (tie)"}[v]
    return text


def table(headers: list[str], rows: list[list[str]]) -> str:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(map(esc, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(out)
