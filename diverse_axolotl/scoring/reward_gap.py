"""reward_gap: how far the model's own answer falls short of the gold answer, by a local reward model.

score = reward(prompt, gold) - reward(prompt, model's greedy answer). Higher: the model still has more to learn on
this row (Diversify and Conquer's iterative kMQ signal). The reward model is any local sequence-classification
folder with one output (e.g. a Skywork/ArmoRM-style reward model saved with `save_pretrained`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..data import prompt_and_response
from ..errors import UserError
from ..progress import progress_bar
from .base import Scorer, register_scorer


class RewardGapParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reward_model: Path = Field(description="folder of a local reward model (sequence classification, 1 label)")
    max_new_tokens: int = Field(128, gt=0, description="length of the model's own answer")
    batch_size: int = Field(8, gt=0, description="rows per generation / reward batch")


@register_scorer
class RewardGapScorer(Scorer):
    name = "reward_gap"
    description = "reward of the gold answer minus reward of the model's own greedy answer (local reward model)"
    Params = RewardGapParams

    def check_ready(self, recipe) -> None:
        folder = self.params.reward_model
        if not (folder / "config.json").is_file():
            raise UserError(f"reward_model {folder} is not a model folder (no config.json)")

    def identity(self) -> dict:
        from ..result_cache import model_fingerprint

        return {**super().identity(), "reward_model": model_fingerprint(self.params.reward_model)}

    @torch.inference_mode()
    def score(self, model, tokenizer, rows, fmt, max_length=512, desc="scoring"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..inference import greedy_generate

        self.check_ready(None)
        device = next(model.parameters()).device
        rm_tok = AutoTokenizer.from_pretrained(str(self.params.reward_model))
        if rm_tok.pad_token is None:
            rm_tok.pad_token = rm_tok.eos_token
        reward = AutoModelForSequenceClassification.from_pretrained(str(self.params.reward_model)).to(device).eval()
        if reward.config.pad_token_id is None:
            reward.config.pad_token_id = rm_tok.pad_token_id
        pairs = [prompt_and_response(r, fmt, tokenizer) for r in rows]
        out = np.zeros(len(rows), dtype=np.float64)
        bs = self.params.batch_size
        with progress_bar(desc, total=len(rows)) as advance:
            for start in range(0, len(pairs), bs):
                chunk = pairs[start : start + bs]
                prompts = [p for p, _ in chunk]
                own = greedy_generate(
                    model, tokenizer, prompts, [self.params.max_new_tokens] * len(prompts), max_length
                )
                gold = rewards(reward, rm_tok, [p + r for p, r in chunk], max_length, device)
                mine = rewards(reward, rm_tok, [p + o for p, o in zip(prompts, own, strict=True)], max_length, device)
                out[start : start + len(chunk)] = gold - mine
                advance(len(chunk))
        return out


def rewards(reward_model, tokenizer, texts: list[str], max_length: int, device) -> np.ndarray:
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    logits = reward_model(**{k: v.to(device) for k, v in enc.items()}).logits
    return logits[:, 0].float().cpu().numpy().astype(np.float64)
