"""Evaluating a base model + LoRA adapter: any lm-eval task, our offline variants, and two metrics of our own.

One idea per module:
  lm_tasks  which tasks exist: lm-eval's registry, our `da_*` YAMLs shipped in `tasks/`, the data folder they read
  heldout   held-out rows and our metrics on them (heldout_loss, heldout_exact, t0_exact), per group
  own_data  the user's held-out set: a file in any pool format, or a split carved from the pool before round 0
  spec      the recipe's `eval:` block (EvalSpec)
  run       `evaluate` / `evaluate_spec`: lm-eval's simple_evaluate with HFLM(base + adapter, merged), then our metrics
The generation loop our metrics use is shared with the scorers (`diverse_axolotl.inference`).
"""

from ..inference import greedy_generate
from .heldout import (
    DATA_ENV,
    SOURCES,
    T0_SOURCE,
    HeldoutRow,
    HeldoutSource,
    HeldoutSpec,
    default_data_root,
    exact_by_group,
    exact_match,
    heldout_exact,
    heldout_ids,
    heldout_loss,
    heldout_rows,
    loss_by_group,
    normalise_answer,
    t0_exact,
)
from .lm_tasks import (
    EVAL_DATA_ENV,
    OUR_METRICS,
    UNSAFE_TASKS,
    TaskRequest,
    eval_data_dir,
    known_task_listing,
    lm_eval_tasks,
    parse_tasks,
    tasks_dir,
)
from .own_data import HeldoutSet, SplitSpec, carve_split, read_heldout_file, rows_in_heldout
from .run import evaluate, evaluate_spec, flat_metrics, json_safe
from .spec import EvalSpec

__all__ = [
    "DATA_ENV",
    "EVAL_DATA_ENV",
    "OUR_METRICS",
    "SOURCES",
    "T0_SOURCE",
    "UNSAFE_TASKS",
    "EvalSpec",
    "HeldoutRow",
    "HeldoutSet",
    "HeldoutSource",
    "HeldoutSpec",
    "SplitSpec",
    "carve_split",
    "rows_in_heldout",
    "exact_by_group",
    "heldout_exact",
    "loss_by_group",
    "read_heldout_file",
    "TaskRequest",
    "default_data_root",
    "eval_data_dir",
    "evaluate",
    "evaluate_spec",
    "exact_match",
    "flat_metrics",
    "greedy_generate",
    "heldout_ids",
    "heldout_loss",
    "heldout_rows",
    "json_safe",
    "known_task_listing",
    "lm_eval_tasks",
    "normalise_answer",
    "parse_tasks",
    "t0_exact",
    "tasks_dir",
]
