"""perplexity_gap: Diversify and Conquer's Eq. 7, how much less likely the gold answer is than the model's own.

    score(x) = -log( PPL(x + y_gen) / PPL(x + y_gold) ) = log PPL(y_gold | x) - log PPL(y_gen | x)
             = mean NLL of the gold answer tokens - mean NLL of the generated answer tokens

y_gen is the model's greedy answer to the prompt (`inference.greedy_generate`, at most `max_new_tokens`). Both
answers are scored exactly as the `perplexity` scorer scores the gold one (`token_stats.response_token_stats`):
answer tokens plus EOS, given the prompt, the prompt cut from the left to fit `max_length`. Higher: the gold answer
is further from what the model would say by itself, so there is more left to learn on this row: iterative_kmq
upweights clusters with high scores, as it does for `reward_gap` (Eq. 4, reward(gold) - reward(own answer)).

Where this differs from the paper's formula as written: the paper writes PPL(x + y), the perplexity of prompt and
answer together; here only the answer tokens count (the prompt is the same in both terms, and its tokens would
dilute the difference by the answers' lengths). A greedy answer cut at `max_new_tokens` is scored with an EOS after
it like every other answer.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..data import prompt_and_response
from .base import Scorer, register_scorer
from .token_stats import response_token_stats


class PerplexityGapParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int = Field(128, gt=0, description="length of the model's own greedy answer")
    batch_tokens: int = Field(16384, gt=0, description="padded tokens per batch (scoring and generation)")


def perplexity_gap(gold_nll: np.ndarray, own_nll: np.ndarray) -> np.ndarray:
    """-log(PPL(own) / PPL(gold)) from the mean NLLs (log PPL = mean NLL)."""
    return np.asarray(gold_nll, dtype=np.float64) - np.asarray(own_nll, dtype=np.float64)


@register_scorer
class PerplexityGapScorer(Scorer):
    name = "perplexity_gap"
    description = "D&C Eq. 7: log PPL(gold answer) - log PPL(the model's own greedy answer) (higher: more to learn)"
    Params = PerplexityGapParams

    def score(self, model, tokenizer, rows, fmt, max_length=512, desc="scoring"):
        from ..inference import greedy_generate

        p = self.params
        pairs = [prompt_and_response(r, fmt, tokenizer) for r in rows]
        prompts = [prompt for prompt, _ in pairs]
        own = greedy_generate(
            model,
            tokenizer,
            prompts,
            [p.max_new_tokens] * len(prompts),
            max_length,
            p.batch_tokens,
            desc=f"{desc}: own answers",
        )
        gold = response_token_stats(model, tokenizer, pairs, max_length, p.batch_tokens, f"{desc}: gold answers")
        mine = response_token_stats(
            model,
            tokenizer,
            list(zip(prompts, own, strict=True)),
            max_length,
            p.batch_tokens,
            f"{desc}: own answers' perplexity",
        )
        return perplexity_gap(gold["nll"], mine["nll"])
