"""The recipe's optional `eval:` block."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import UserError
from .heldout import HeldoutSpec
from .lm_tasks import parse_tasks


class EvalSpec(BaseModel):
    """The recipe's optional `eval:` block."""

    model_config = ConfigDict(extra="forbid")
    tasks: list[str] = Field(
        min_length=1,
        description="any lm-eval task or group by its registry name (arc_easy, hellaswag, mmlu, ...), our offline "
        "variants (da_arc_easy, da_arc_challenge, da_gsm8k, da_mmlu, da_ifeval, da_humaneval, da_mbpp; `TASK:N` sets N "
        "shots) and our metrics on held-out rows (eval.heldout): heldout_loss, heldout_exact, t0_exact",
    )
    limit: int | None = Field(
        None, gt=0, description="at most this many rows per task (and per held-out source/template)"
    )
    every_round: bool = Field(True, description="evaluate after every round (else only after the last)")
    batch_size: int | str = Field("auto", description="lm-eval batch size; 'auto' is 4 on CPU")
    max_gen_toks: int | None = Field(None, gt=0, description="cap on generated tokens for generation tasks")
    apply_chat_template: bool = Field(False, description="lm-eval prompts through the tokenizer's chat template")
    allow_code_execution: bool = Field(False, description="consent to run generated code (da_humaneval, da_mbpp)")
    data_dir: Path | None = Field(
        None, description="data folder of our da_* tasks (default: $DIVERSE_AXOLOTL_EVAL_DATA)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the evaluated model runs")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto: bfloat16 on a GPU and on a CPU where bf16 is measured faster, else float32"
    )
    heldout: HeldoutSpec = Field(default_factory=HeldoutSpec)
    cache: bool = Field(
        True, description="reuse an identical earlier evaluation (same adapter bytes, model, block and data)"
    )

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

