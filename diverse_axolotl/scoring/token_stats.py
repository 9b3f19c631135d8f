"""Scorers from the model's predictions on each row: its gold response tokens, or every position.

All of them share one pass: prompt + response (+EOS) is tokenised (the prompt cut from the LEFT when the pair is
longer than `max_length`, so every row keeps answer tokens), rows are batched by length, and the LM head is applied
only where a statistic needs it: at response positions, or at every position (in chunks) for the logit statistics.

  perplexity             exp(mean NLL of the response tokens given the prompt): how much the model still has to learn
  ifd                    instruction-following difficulty: PPL(response | prompt) / PPL(response alone)
  least_confidence       DiverseEvol's baseline: mean over EVERY position (prompt, response and EOS) of the raw
                         maximum logit. LOWER = less confident.
  margin                 DiverseEvol's baseline: mean over every position of top-1 minus top-2 logit.
                         LOWER = less sure.
  least_confidence_prob  mean over response tokens of 1 - max_v p(v). HIGHER = less confident.
  margin_prob            mean over response tokens of 1 - (p_top1 - p_top2). HIGHER = less sure.
  entropy                mean over response tokens of the predictive entropy. HIGHER = less sure.

The two DiverseEvol scores are the paper's raw-logit quantities, so lower means more uncertain; the selectors of
the same names take the lowest (`selection.uncertainty`). The `_prob` variants (this package's earlier
definitions) and `entropy` read the softmax over response positions only, and their selectors take the highest.

A row with no prompt (`completion` pools, and the "response alone" half of `ifd`) needs one token for the first
response token to be predicted from: the tokenizer's BOS token, or, when it has none (Qwen2/2.5 ship
`bos_token: null`), its EOS token, which such models read as the boundary between documents. The reference IFD
code instead drops the first answer token from the unconditional loss when there is no BOS.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ..data import prompt_and_response
from ..errors import UserError
from ..inference import padded_batch, token_budget_batches
from ..models import decoder_body
from ..progress import progress_bar
from .base import Scorer, register_scorer

RESPONSE_STATS = ("nll", "least_confidence_prob", "margin_prob", "entropy")
ALL_POSITION_STATS = ("max_logit", "logit_margin")


def encode_pair(tokenizer, prompt: str, response: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + response (+EOS) and where the response starts; the prompt is cut from the left.

    The response always starts at position >= 1: an empty prompt becomes the BOS token, or the EOS token when the
    tokenizer has no BOS (the first response token needs something to be predicted from)."""
    p_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
    if not p_ids:
        start_token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start_token is None:
            raise UserError(
                "cannot score a response without a prompt: the tokenizer has neither a BOS nor an EOS token"
            )
        p_ids = [start_token]
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        r_ids = r_ids + [tokenizer.eos_token_id]
    r_ids = r_ids[: max(max_length - 1, 1)]
    keep_prompt = max(max_length - len(r_ids), 1)
    p_ids = p_ids[-keep_prompt:]
    return p_ids + r_ids, len(p_ids)


def response_stats(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Means over response positions from their (T, V) logits and the (T,) gold tokens: NLL, 1 - top probability,
    1 - (top-1 minus top-2 probability), entropy."""
    logp = F.log_softmax(logits.float(), dim=-1)
    probs = logp.exp()
    top2 = probs.topk(min(2, probs.shape[-1]), dim=-1).values
    second = top2[:, 1] if top2.shape[1] > 1 else torch.zeros_like(top2[:, 0])
    return {
        "nll": float(-logp.gather(1, target[:, None]).mean()),
        "least_confidence_prob": float((1 - top2[:, 0]).mean()),
        "margin_prob": float((1 - (top2[:, 0] - second)).mean()),
        "entropy": float(-(probs * logp).sum(-1).mean()),
    }


def logit_sums(logits: torch.Tensor) -> tuple[float, float]:
    """Sums over the (T, V) positions of the maximum logit and of top-1 minus top-2 logit."""
    top2 = logits.float().topk(min(2, logits.shape[-1]), dim=-1).values
    second = top2[:, 1] if top2.shape[1] > 1 else top2[:, 0]
    return float(top2[:, 0].double().sum()), float((top2[:, 0] - second).double().sum())


def logit_stats(logits: torch.Tensor) -> tuple[float, float]:
    """DiverseEvol's least confidence and margin of one row from its (T, V) logits: the means over positions of
    the maximum logit and of top-1 minus top-2 logit (raw logits, no softmax; lower = more uncertain)."""
    max_sum, margin_sum = logit_sums(logits)
    return max_sum / len(logits), margin_sum / len(logits)


@torch.inference_mode()
def response_token_stats(
    model,
    tokenizer,
    pairs: list[tuple[str, str]],
    max_length: int = 512,
    batch_tokens: int = 16384,
    desc: str = "scoring",
    all_positions: bool = False,
    position_chunk: int = 256,
) -> dict[str, np.ndarray]:
    """Per-row means over response tokens of: NLL, 1 - max prob, 1 - top-2 margin, entropy (`RESPONSE_STATS`).

    With `all_positions`, also DiverseEvol's `max_logit` and `logit_margin` over every position of the row
    (`logit_stats`), the LM head applied `position_chunk` positions at a time."""
    encoded = [encode_pair(tokenizer, p, r, max_length) for p, r in pairs]
    lengths = [len(ids) for ids, _ in encoded]
    body = decoder_body(model)
    head = model.get_output_embeddings()
    device = next(body.parameters()).device
    names = RESPONSE_STATS + (ALL_POSITION_STATS if all_positions else ())
    out = {name: np.zeros(len(pairs), dtype=np.float64) for name in names}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with progress_bar(desc, total=len(pairs)) as advance:
        for batch in token_budget_batches(lengths, batch_tokens):
            ids, mask = padded_batch([encoded[i][0] for i in batch], pad)
            ids, mask = ids.to(device), mask.to(device)
            hidden = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            for row, i in enumerate(batch):
                start, end = encoded[i][1], lengths[i]
                # hidden state at position t predicts token t + 1
                for name, value in response_stats(head(hidden[row, start - 1 : end - 1]), ids[row, start:end]).items():
                    out[name][i] = value
                if all_positions:
                    sums = np.zeros(2)
                    for s in range(0, end, position_chunk):
                        sums += logit_sums(head(hidden[row, s : min(s + position_chunk, end)]))
                    out["max_logit"][i], out["logit_margin"][i] = sums / end
            advance(len(batch))
    return out


class TokenStatParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_tokens: int = Field(16384, gt=0, description="padded tokens per batch")


class _TokenStatScorer(Scorer):
    stat: str = "nll"
    all_positions: bool = False  # True for the statistics over every position (the LM head runs on the prompt too)
    Params = TokenStatParams

    def score(self, model, tokenizer, rows, fmt, max_length=512, desc="scoring"):
        pairs = [prompt_and_response(r, fmt, tokenizer) for r in rows]
        stats = response_token_stats(
            model, tokenizer, pairs, max_length, self.params.batch_tokens, desc, self.all_positions
        )
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
        unconditional = response_token_stats(
            model, tokenizer, alone, max_length, self.params.batch_tokens, "scoring (ifd, no prompt)"
        )
        return np.exp(np.clip(stats["nll"] - unconditional["nll"], -50.0, 50.0))


def _stat_scorer(name: str, stat: str, text: str, all_positions: bool = False):
    cls_name = f"{name.title().replace('_', '')}Scorer"
    attrs = {"name": name, "stat": stat, "description": text, "all_positions": all_positions}
    return register_scorer(type(cls_name, (_TokenStatScorer,), attrs))


_stat_scorer(
    "least_confidence",
    "max_logit",
    "DiverseEvol: mean over every position of the maximum logit (lower: less confident)",
    True,
)
_stat_scorer(
    "margin",
    "logit_margin",
    "DiverseEvol: mean over every position of top-1 minus top-2 logit (lower: less sure)",
    True,
)
_stat_scorer(
    "least_confidence_prob",
    "least_confidence_prob",
    "mean over response tokens of 1 - the top token's probability (higher: less confident)",
)
_stat_scorer(
    "margin_prob", "margin_prob", "mean over response tokens of 1 - (top-1 minus top-2 probability) (higher: less sure)"
)
_stat_scorer("entropy", "entropy", "mean over response tokens of the predictive entropy (higher: less sure)")
