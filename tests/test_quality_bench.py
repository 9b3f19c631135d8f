"""The selection-quality benchmark (bench/quality): its smoke mode end to end through the toolkit's CLI, the plan
of the full configuration, the verdict rule, and the mixed pool keeping the held-out rows out."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT))

from bench.quality.config import load_config  # noqa: E402
from bench.quality.results import stats, verdict  # noqa: E402
from bench.quality.runner import plan_runs  # noqa: E402
from diverse_axolotl.errors import UserError  # noqa: E402

QUALITY = ROOT / "bench" / "quality"
SHARED_DATA = ROOT.parent / "shared" / "data"


def _table_rows(markdown: str, heading: str) -> dict[str, list[str]]:
    section = markdown.split(f"### {heading}", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| arm"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.slow
def test_smoke_mode_runs_both_arms_and_writes_the_results(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.quality", "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    print(f"smoke mode: {seconds:.0f} s")

    md = (out / "RESULTS.md").read_text()
    for png in ("metric_heldout_loss.png", "diversity_vendi.png", "source_mix.png", "wall_time.png"):
        path = out / "plots" / png
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"plots/{png}" in md
    rows = _table_rows(md, "heldout_loss")
    assert set(rows) == {"random", "kcenter"}
    for arm, cells in rows.items():
        value = float(cells[0].split()[0])
        assert math.isfinite(value) and value > 0, (arm, cells)
    assert "(n=2)" in rows["random"][0]  # two random seeds: mean ± std
    assert any(v in rows["kcenter"][0] for v in ("win", "loss", "tie"))  # a verdict against random's spread
    for needle in ("**Device**", "**Date**", "python -m bench.quality --smoke", "## Reading", "## Diversity"):
        assert needle in md

    results = json.loads((out / "results.json").read_text())
    agg = {(a["arm"], a["budget"]): a for a in results["aggregate"]}
    assert set(agg) == {("random", 0.125), ("kcenter", 0.125)}
    assert agg[("random", 0.125)]["heldout_loss"]["n"] == 2
    for entry in agg.values():
        assert math.isfinite(entry["heldout_loss"]["mean"]) and entry["rows"] == 12
        assert math.isfinite(entry["diversity"]["vendi"]) and entry["times"]["train_s"] > 0
    # every arm ran through the toolkit's own run folders, with eval.json from its `eval:` block
    work = out / "work"
    assert (work / "runs" / "kcenter__b12.5__s0" / "round_1" / "eval.json").is_file()
    assert (work / "runs" / "kcenter__b12.5__s0" / "round_0" / "embeddings.npy").is_file()
    manifest = json.loads((work / "runs" / "kcenter__b12.5__s0" / "round_1" / "manifest.json").read_text())
    assert manifest["selector"]["name"] == "kcenter" and len(manifest["indices"]) == 12
    # no held-out row in the pool
    meta = json.loads((work / "pool_meta.json").read_text())
    held = set(meta["excluded_ids"]["alpaca"])
    assert len(held) == 8 and not held & {m["index"] for m in meta["rows"]}

    # Re-invoking resumes: finished runs are skipped without starting the CLI.
    again = subprocess.run(
        [sys.executable, "-m", "bench.quality", "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert again.stdout.count("finished earlier, skipped") == 3


def test_full_config_plans_every_arm_at_equal_budgets():
    cfg = load_config(QUALITY / "default.yaml")
    plans = plan_runs(cfg, 21_230)
    by_arm: dict[str, list] = {}
    for p in plans:
        by_arm.setdefault(p.arm, []).append(p)
    assert set(by_arm) == {
        "random",
        "kcenter",
        "kcenter_iter",
        "kcenter_default",
        "kmeans_closest",
        "kmeans_random",
        "kmq",
        "iterative_kmq",
        "deita",
        "qdit",
        "full",
    }
    assert len(by_arm["random"]) == 9  # 3 budgets x 3 seeds
    rows = {b: n for p in plans if p.mode != "full" for b, n in p.rows_at.items()}
    assert rows == {0.02: 424, 0.05: 1060, 0.08: 1696}
    for p in plans:
        if p.mode == "oneshot":
            assert (
                p.selection["rounds"] == 1
                and p.selection["seed_size"] + p.selection["per_round"] == p.rows_at[next(iter(p.rows_at))]
            )
        if p.mode == "iterative":
            s = p.selection
            for b, k in p.round_at.items():
                assert s["seed_size"] + k * s["per_round"] == rows[b]
    assert by_arm["full"][0].rows_at == {1.0: 21_230}


def test_budgets_must_be_whole_units(tmp_path):
    text = (QUALITY / "smoke.yaml").read_text().replace("budgets: [0.125]", "budgets: [0.1]")
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(UserError, match="not a multiple of budget_unit"):
        load_config(tmp_path / "bad.yaml")


def test_a_win_must_exceed_the_random_spread():
    random = stats([2.0, 2.2, 2.1])  # loss: mean 2.1, spread 0.2
    assert verdict("heldout_loss", stats([1.85]), random) == "win"
    assert verdict("heldout_loss", stats([1.95]), random) == "tie"
    assert verdict("heldout_loss", stats([2.35]), random) == "loss"
    acc = stats([0.40, 0.44])  # accuracy: higher is better, spread 0.04
    assert verdict("t0_exact", stats([0.47]), acc) == "win"
    assert verdict("t0_exact", stats([0.43]), acc) == "tie"
    assert verdict("t0_exact", stats([0.30]), stats([0.40])) == "n/a"  # one random seed: no spread, no verdict


@pytest.mark.skipif(
    not (SHARED_DATA / "pools" / "t0_train_50k.jsonl.xz").is_file(), reason="../shared/data is not here"
)
def test_full_pool_is_large_unequal_and_free_of_heldout_rows(tmp_path):
    from bench.quality.pool import build_pool

    cfg = load_config(QUALITY / "default.yaml")
    meta = build_pool(cfg, SHARED_DATA, tmp_path, log=lambda msg: None)
    assert meta["total"] >= 20_000
    sizes = sorted(c["rows"] for c in meta["sources"].values())
    assert len(sizes) == 5 and sizes[-1] > 5 * sizes[0]
    excluded = {k: set(v) for k, v in meta["excluded_ids"].items()}
    assert not [m for m in meta["rows"] if m["index"] in excluded[m["source"]]]
    pool = json.loads((tmp_path / "pool.json").read_text())
    assert len(pool) == meta["total"] and set(pool[0]) == {"instruction", "input", "output"}
    assert meta["sources"]["t0"]["templates"] > 200 and all(m["template"] for m in meta["rows"] if m["source"] == "t0")


def test_report_over_every_mode_from_run_folders(tmp_path):
    """The aggregation path of the modes the smoke run does not train (iterative, full, several budgets), on
    run folders written by hand: tables, verdicts, curves, timings and the missing-run list."""
    import numpy as np

    from bench.quality.benchmark import main as bench_main

    text = (QUALITY / "smoke.yaml").read_text()
    text = text.replace("budgets: [0.125]", "budgets: [0.125, 0.25]")
    text = text.replace(
        "  kcenter: {mode: oneshot, selector: {name: kcenter, device: cpu}}",
        "  kcenter: {mode: oneshot, selector: {name: kcenter, device: cpu}}\n"
        "  kcenter_iter: {mode: iterative, selector: {name: kcenter, device: cpu}}\n"
        "  full: {mode: full, selector: {name: full}}",
    )
    text = text.replace(
        "random: {mode: fixed, selector: {name: random}, seeds: [0, 1]}",
        "random: {mode: fixed, selector: {name: random}, seeds: [0, 1, 2]}",
    )
    config = tmp_path / "every_mode.yaml"  # with --out and `model: tiny`, no path in it is relative
    config.write_text(text)
    out = tmp_path / "out"
    assert bench_main(["--config", str(config), "--out", str(out), "--dry-run"]) == 0
    cfg = load_config(config)
    plans = plan_runs(cfg, 96)
    rng = np.random.default_rng(0)
    loss = {"random": 3.0, "kcenter": 2.0, "kcenter_iter": 3.0, "full": 1.0}
    for p in plans:
        run = out / "work" / "runs" / p.key
        summary = []
        for k in range(p.last_round + 1):
            rows = p.selection["seed_size"] + k * p.selection["per_round"]
            d = run / f"round_{k}"
            d.mkdir(parents=True)
            (d / "manifest.json").write_text(json.dumps({"indices": list(range(rows))}))
            value = loss[p.arm] + 0.01 * p.seed - 0.001 * rows
            (d / "eval.json").write_text(
                json.dumps(
                    {
                        "metrics": {"heldout_loss": value},
                        "ours": {"heldout_loss": {"value": value, "per_source": {"alpaca": {"loss": value}}}},
                    }
                )
            )
            row = {"round": k, "rows": rows, "train_s": 10.0, "embed_s": 2.0, "eval_s": 1.0}
            (d / "done.json").write_text(json.dumps(row))
            summary.append(row)
            if k == 0 and p.mode == "oneshot":
                np.save(d / "embeddings.npy", rng.standard_normal((96, 8)).astype(np.float32))
        (run / "summary.json").write_text(json.dumps(summary))
    (out / "work" / "runs" / "random__b25__s2" / "round_0" / "eval.json").unlink()  # one result missing
    assert bench_main(["--config", str(config), "--out", str(out), "--report-only"]) == 0
    md = (out / "RESULTS.md").read_text()
    rows = _table_rows(md, "heldout_loss")
    assert set(rows) == {"random", "kcenter", "kcenter_iter", "full"}
    assert "(n=3)" in rows["random"][0] and "(n=2)" in rows["random"][1]
    assert "win" in rows["kcenter"][0] and "win" in rows["kcenter"][1]  # 1.0 better than random, spread 0.02
    assert "tie" in rows["kcenter_iter"][0]  # inside random's spread
    assert rows["full"][2].startswith("0.904")  # 1.0 - 0.001 * 96, in the 100% column
    assert "## Missing results" in md and "random__b25__s2" in md
    results = json.loads((out / "results.json").read_text())
    iterative = [r for r in results["records"] if r["arm"] == "kcenter_iter"]
    assert [r["rows"] for r in iterative] == [12, 24] and [r["budget"] for r in iterative] == [0.125, 0.25]
    agg = {(a["arm"], a["budget"]): a for a in results["aggregate"]}
    assert agg[("kcenter_iter", 0.25)]["times"]["train_s"] == 20.0  # two trainings up to the 25% round
    assert agg[("kcenter_iter", 0.25)]["times"]["embed_s"] == 2.0  # one embedding between them
    assert math.isfinite(agg[("kcenter", 0.25)]["diversity"]["vendi"])
    for png in ("metric_heldout_loss.png", "diversity_vendi.png", "wall_time.png", "source_mix.png"):
        assert (out / "plots" / png).is_file()


def test_the_validation_split_is_disjoint_from_the_pool_and_the_heldout_rows(tmp_path):
    """Choices (the ablation's defaults) are made on rows that are neither trained on nor reported as results."""
    from bench.quality.pool import build_pool
    from bench.quality.smoke import fixture_data_root
    from bench.quality.validation import validation_rows

    text = (QUALITY / "smoke.yaml").read_text() + (
        "validation: {n_per_source: 20, seed: 1, budget: 0.125, arms: [random, kcenter], reference: kcenter}\n"
    )
    (tmp_path / "smoke.yaml").write_text(text)
    cfg = load_config(tmp_path / "smoke.yaml")
    root = fixture_data_root(tmp_path / "data")
    meta = build_pool(cfg, root, tmp_path / "work", log=lambda _: None)
    rows = validation_rows(cfg, root, meta)
    ids = [r.index for r in rows]
    assert len(ids) == len(set(ids)) == 20 and {r.group for r in rows} == {"alpaca"}
    assert not set(ids) & {m["index"] for m in meta["rows"]}
    assert not set(ids) & set(meta["excluded_ids"]["alpaca"])
    assert [r.index for r in validation_rows(cfg, root, meta)] == ids  # seeded
    bad = text.replace("reference: kcenter", "reference: kcentre")
    (tmp_path / "bad.yaml").write_text(bad)
    with pytest.raises(UserError, match="validation: unknown arm 'kcentre'"):
        load_config(tmp_path / "bad.yaml")


def test_each_runs_training_precision_is_read_and_reported_when_runs_differ(tmp_path):
    from bench.quality.benchmark import _precision_section
    from bench.quality.results import round_precision

    for key, text in (("a", "bf16: true\n"), ("b", "bf16: false\nfp16: false\n"), ("c", None)):
        (tmp_path / key / "round_0").mkdir(parents=True)
        if text is not None:
            (tmp_path / key / "round_0" / "axolotl.yaml").write_text(text)
    assert [round_precision(tmp_path / k, 0) for k in "abc"] == ["bf16", "fp32", None]
    records = [{"key": "a", "round": 0, "precision": "bf16"}, {"key": "b", "round": 0, "precision": "fp32"}]
    md = "\n".join(_precision_section(records))
    assert "| bf16 | a r0 |" in md and "| fp32 | b r0 |" in md
    assert _precision_section(records[:1]) == []  # one precision for every run: nothing to say


def test_pack_carries_results_and_selector_state_but_not_what_is_rebuilt(tmp_path):
    """An unpacked work folder must let an iterative run continue: its selector state travels, adapters,
    embeddings and training files (rebuilt from the manifests) do not."""
    import tarfile

    from bench.quality.benchmark import pack

    work = tmp_path / "work"
    files = {
        "runs/a/round_1/manifest.json": True,
        "runs/a/round_1/eval.json": True,
        "runs/a/round_1/selector_state.npz": True,
        "logs/a.log": True,
        "runs/a/round_1/embeddings.npy": False,
        "runs/a/round_1/scores.npy": False,
        "runs/a/round_1/train.jsonl": False,
        "runs/a/round_1/adapter/adapter_config.json": False,
        "runs/a/round_1/other.npz": False,
    }
    for rel in files:
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(b"x")
    pack(work, tmp_path / "work.tar.gz")
    with tarfile.open(tmp_path / "work.tar.gz") as tar:
        packed = set(tar.getnames())
    assert packed == {rel for rel, kept in files.items() if kept}
