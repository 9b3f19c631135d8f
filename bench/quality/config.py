"""The benchmark's configuration file: what pool to mix, which budgets, which arms, which training and evaluation.

A config is YAML (see default.yaml, cpu_small.yaml, smoke.yaml). Relative paths resolve against the config file's
folder. Two special values exist for the smoke mode: `model: tiny` (a random two-layer Llama built into the output
folder, like tests/conftest.py's) and `data_root: fixture` (a data root made from tests/data/alpaca_200.json).

Arms have one of five modes, all run through `diverse-axolotl run <recipe>`:
  fixed      round 0 only: `seed_size` = the budget, drawn at random with the run's seed (the `random` arm)
  base       round 0 only, chosen by the selector on the base model's own embeddings (`round0: base`): the exact
             one-shot selection (DiverseEvol's "static" setting, kMQ's one-shot), one training per budget
  oneshot    a tiny random seed round (`oneshot_seed_rows`, counted in the budget) whose only job is to give the
             loop an adapter to embed with, then ONE selection round that fills the budget from those embeddings.
             The toolkit always embeds with base + the latest adapter; after a handful of steps on a few rows the
             LoRA update is small, so this is selection on (nearly) base-model embeddings. One run per budget.
  iterative  DiverseEvol rounds: `seed_units` budget units at random, then `step_units` per round, every round
             embedding with the latest adapter (retrained from the base each round); one run covers every budget,
             and every round is evaluated (the rounds at the budgets enter the tables; the others the curves)
  full       every pool row (the ceiling); one run
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from diverse_axolotl.errors import UserError, did_you_mean

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PoolConfig(Strict):
    sources: dict[str, int | None] = Field(
        description="held-out source name (diverse_axolotl.evaluation.SOURCES) -> rows to draw after removing the "
        "held-out rows (null: all of them)"
    )
    t0_templates: Literal["all", "heldout"] | int = Field(
        "all",
        description="T0 rows from every template, from the templates the held-out slice evaluates, or from "
        "this many seeded templates",
    )
    seed: int = Field(0, description="fixes which rows are drawn and the pool's row order")

    @field_validator("sources")
    @classmethod
    def _known(cls, value):
        from diverse_axolotl.evaluation import SOURCES

        if not value:
            raise ValueError("name at least one source")
        for name, n in value.items():
            if name not in SOURCES:
                raise ValueError(f"unknown source '{name}'{did_you_mean(name, SOURCES)}; sources: {', '.join(SOURCES)}")
            if n is not None and n <= 0:
                raise ValueError(f"source '{name}': rows must be positive or null")
        return value


class ArmConfig(Strict):
    mode: Literal["fixed", "base", "oneshot", "iterative", "full"]
    selector: dict[str, Any] = Field(default_factory=lambda: {"name": "random"})
    scorer: dict[str, Any] | None = None
    seeds: list[int] | None = Field(None, description="default: the config's `seeds`")
    label: str | None = Field(None, description="what the tables call the arm (default: its key)")
    embedding: dict[str, Any] = Field(
        default_factory=dict, description="selection.embedding keys of this arm only, over the shared ones (ablations)"
    )
    budgets: list[float] | None = Field(None, description="only these of the config's budgets (default: all of them)")
    axolotl: dict[str, Any] = Field(
        default_factory=dict,
        description="Axolotl keys of this arm only, over the "
        "shared ones (e.g. the full arm's num_epochs when time demands it; say so)",
    )


class IterativeConfig(Strict):
    seed_units: int = Field(1, gt=0, description="round 0: this many budget units of random rows")
    step_units: int = Field(1, gt=0, description="rows added per round, in budget units")


class ValidationConfig(Strict):
    """The split that choices are made on (bench/quality/validation.py), apart from the held-out result rows."""

    n_per_source: int = Field(30, gt=0, description="rows per pool source, in neither the pool nor the held-out sets")
    seed: int = 1
    budget: float = Field(description="the budget whose rounds are scored")
    arms: list[str] = Field(description="arms scored on the split (random's spread is the yardstick)")
    reference: str = Field("kcenter", description="the arm each lever must beat")
    max_length: int = Field(256, gt=8)
    batch_tokens: int = Field(4096, gt=0)


class QualityConfig(Strict):
    path: Path
    name: str
    description: str = ""
    model: str = Field(description="base model folder (relative to this file), or `tiny`")
    data_root: str | None = Field(
        None, description="folder holding pools/ (default: $DIVERSE_AXOLOTL_DATA), or `fixture`"
    )
    eval_data_dir: str | None = Field(
        None, description="data folder of our da_* tasks (default: $DIVERSE_AXOLOTL_EVAL_DATA)"
    )
    output: str = Field(description="folder for the pool, recipes and run folders (git-ignored)")
    results: str = Field(description="folder for RESULTS.md and the plots")
    pool: PoolConfig
    heldout: dict[str, Any] = Field(default_factory=dict, description="HeldoutSpec keys (sources: the pool's)")
    budgets: list[float] = Field(description="fractions of the pool, each a multiple of budget_unit")
    budget_unit: float = Field(0.01, gt=0, lt=1)
    oneshot_seed_rows: int = Field(16, gt=0)
    iterative: IterativeConfig = IterativeConfig()
    seeds: list[int] = Field(default_factory=lambda: [0])
    axolotl: dict[str, Any] = Field(description="Axolotl keys shared by every arm")
    cpu_axolotl: dict[str, Any] = Field(default_factory=dict, description="added when torch has no CUDA")
    gpu_axolotl: dict[str, Any] = Field(default_factory=dict, description="added when torch has CUDA")
    embedding: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(description="EvalSpec keys (heldout comes from `heldout`)")
    report_metrics: list[str] = Field(default_factory=list, description="metrics of the main table, in order")
    arms: dict[str, ArmConfig]
    validation: ValidationConfig | None = None

    @model_validator(mode="after")
    def _validation_arms(self):
        v = self.validation
        if v is None:
            return self
        for arm in [*v.arms, v.reference]:
            if arm not in self.arms:
                raise ValueError(f"validation: unknown arm '{arm}'{did_you_mean(arm, self.arms)}")
        if not any(abs(v.budget - b) < 1e-9 for b in self.budgets):
            raise ValueError(f"validation.budget {v.budget} is not one of the budgets {self.budgets}")
        return self

    @field_validator("budgets")
    @classmethod
    def _fractions(cls, value):
        if not value or any(not (0 < b < 1) for b in value):
            raise ValueError("budgets are fractions of the pool between 0 and 1")
        return sorted(value)

    @model_validator(mode="after")
    def _units(self):
        for b in self.budgets:
            m = b / self.budget_unit
            if abs(m - round(m)) > 1e-6:
                raise ValueError(f"budget {b} is not a multiple of budget_unit {self.budget_unit}")
        for name, arm in self.arms.items():
            if arm.mode == "iterative":
                for b in self.budgets:
                    m = round(b / self.budget_unit) - self.iterative.seed_units
                    if m < 0 or m % self.iterative.step_units:
                        raise ValueError(
                            f"arm {name}: budget {b} is not reached by an iterative run of seed_units "
                            f"{self.iterative.seed_units} + k * step_units {self.iterative.step_units}"
                        )
        return self

    # ------------------------------------------------------------------------------------------ resolved paths
    def resolve(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def budget_units(self, budget: float) -> int:
        return int(round(budget / self.budget_unit))

    def arm_seeds(self, arm: ArmConfig) -> list[int]:
        return list(arm.seeds if arm.seeds is not None else self.seeds)


def load_config(path: str | Path) -> QualityConfig:
    path = Path(path).resolve()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such benchmark config") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a benchmark config is a YAML mapping")
    try:
        return QualityConfig(path=path, **raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise UserError(f"{path}: {where}: {err['msg']}") from None


def budget_label(fraction: float) -> str:
    """0.05 -> '5%', 0.125 -> '12.5%'."""
    pct = fraction * 100
    return f"{pct:.0f}%" if math.isclose(pct, round(pct)) else f"{pct:g}%"
