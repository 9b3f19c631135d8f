"""Scorers from the model's predictions on each row's gold response tokens.

All of them share one pass: prompt + response is tokenised (the prompt cut from the LEFT when the pair is longer
than `max_length`, so every row keeps answer tokens), rows are batched by length, and the LM head is applied only
at response positions (vocab-sized logits for the answer tokens, never for the whole batch).

  perplexity        exp(mean NLL of the response given the prompt): how much the model still has to learn
  ifd               instruction-following difficulty: PPL(response | prompt) / PPL(response alone)
  least_confidence  mean over response tokens of 1 - max_v p(v)
  margin            mean over response tokens of 1 - (p_top1 - p_top2)
  entropy           mean over response tokens of the predictive entropy
Higher always means "the model finds this row harder / is less sure".
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ..data import prompt_and_response
from ..embedding import token_budget_batches
from ..models import decoder_body
from ..progress import progress_bar
from .base import Scorer, register_scorer

STATS = ("nll", "least_confidence", "margin", "entropy")


def encode_pair(tokenizer, prompt: str, response: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + response (+EOS) and where the response starts; the prompt is cut from the left."""
    p_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
    if not p_ids and tokenizer.bos_token_id is not None:
        p_ids = [tokenizer.bos_token_id]  # the first response token needs something to be predicted from
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        r_ids = r_ids + [tokenizer.eos_token_id]
    r_ids = r_ids[: max(max_length - 1, 1)]
    keep_prompt = max(max_length - len(r_ids), 1)
    p_ids = p_ids[-keep_prompt:]
    return p_ids + r_ids, len(p_ids)


@torch.inference_mode()
def response_token_stats(
    model, tokenizer, pairs: list[tuple[str, str]], max_length: int = 512, batch_tokens: int = 16384, desc: str = "scoring"
) -> dict[str, np.ndarray]:
    """Per-row means over response tokens of: NLL, 1 - max prob, 1 - top-2 margin, entropy."""
    encoded = [encode_pair(tokenizer, p, r, max_length) for p, r in pairs]
    lengths = [len(ids) for ids, _ in encoded]
    body = decoder_body(model)
    head = model.get_output_embeddings()
    device = next(body.parameters()).device
    out = {name: np.zeros(len(pairs), dtype=np.float64) for name in STATS}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with progress_bar(desc, total=len(pairs)) as advance:
        for batch in token_budget_batches(lengths, batch_tokens):
            width = max(lengths[i] for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(batch):
                ids[row, : lengths[i]] = torch.as_tensor(encoded[i][0])
                mask[row, : lengths[i]] = 1
            ids, mask = ids.to(device), mask.to(device)
            hidden = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            for row, i in enumerate(batch):
                start, end = encoded[i][1], lengths[i]
                # hidden state at position t predicts token t + 1
                logits = head(hidden[row, start - 1 : end - 1]).float()
                logp = F.log_softmax(logits, dim=-1)
                target = ids[row, start:end]
                probs = logp.exp()
                top2 = probs.topk(min(2, probs.shape[-1]), dim=-1).values
                second = top2[:, 1] if top2.shape[1] > 1 else torch.zeros_like(top2[:, 0])
                out["nll"][i] = float(-logp.gather(1, target[:, None]).mean())
                out["least_confidence"][i] = float((1 - top2[:, 0]).mean())
                out["margin"][i] = float((1 - (top2[:, 0] - second)).mean())
                out["entropy"][i] = float(-(probs * logp).sum(-1).mean())
            advance(len(batch))
    return out


class TokenStatParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_tokens: int = Field(16384, gt=0, description="padded tokens per batch")


class _TokenStatScorer(Scorer):
    stat: str = "nll"
    Params = TokenStatParams

    def score(self, model, tokenizer, rows, fmt, max_length=512, desc="scoring"):
        pairs = [prompt_and_response(r, fmt, tokenizer) for r in rows]
        stats = response_token_stats(model, tokenizer, pairs, max_length, self.params.batch_tokens, desc)
        return self.transform(stats, model, tokenizer, rows, fmt, max_length)

    def transform(self, stats, model, tokenizer, rows, fmt, max_length):
        return stats[self.stat]


@register_scorer
class PerplexityScorer(_TokenStatScorer):
    name = "perplexity"
    description = "perplexity of the gold response given the prompt (higher: more left to learn)"

    def transform(self, stats, *args):
        return np.exp(np.minimum(stats["nll"], 50.0))


@register_scorer
class IFDScorer(_TokenStatScorer):
    name = "ifd"
    description = "instruction-following difficulty: PPL(response | prompt) / PPL(response alone)"

    def transform(self, stats, model, tokenizer, rows, fmt, max_length):
        alone = [("", prompt_and_response(r, fmt, tokenizer)[1]) for r in rows]
        unconditional = response_token_stats(model, tokenizer, alone, max_length, self.params.batch_tokens, "scoring (ifd, no prompt)")
        return np.exp(np.clip(stats["nll"] - unconditional["nll"], -50.0, 50.0))


def _stat_scorer(stat: str, text: str):
    cls = type(f"{stat.title().replace('_', '')}Scorer", (_TokenStatScorer,), {"name": stat, "stat": stat, "description": text})
    return register_scorer(cls)


_stat_scorer("least_confidence", "mean over response tokens of 1 - the top token's probability")
_stat_scorer("margin", "mean over response tokens of 1 - (top-1 minus top-2 probability)")
_stat_scorer("entropy", "mean over response tokens of the predictive entropy")
