"""Per-row scores computed data-parallel: each rank scores a length-balanced shard, every rank gets all scores.

Any scorer qualifies because a row's score depends on that row alone (its batch neighbours change the values only
within float tolerance; for the scorers that generate an answer greedily, a near-tie between two tokens could in
principle flip under a different batch shape, as it could between two GPUs of different makes).
"""

from __future__ import annotations

import numpy as np

from .. import distributed
from ..data import prompt_and_response


def score_rows(
    scorer, model, tokenizer, rows: list[dict], fmt: str, max_length: int = 512, desc: str = "scoring"
) -> np.ndarray:
    """`scorer.score` over `rows`, split across the ranks of the process group (one process: a plain call).

    Shards are balanced by the token count of prompt + response (cut at max_length), each rank measuring only its
    contiguous block; the scores (N float64, small) are all-gathered and put back in row order on every rank."""
    if not (distributed.is_initialized() and distributed.world_size() > 1):
        return np.asarray(scorer.score(model, tokenizer, rows, fmt, max_length=max_length, desc=desc), dtype=np.float64)

    def block_costs(lo: int, hi: int) -> list[int]:
        if hi <= lo:
            return []
        texts = ["".join(prompt_and_response(r, fmt, tokenizer)) for r in rows[lo:hi]]
        ids = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
        return [len(t) for t in ids]

    shards, _ = distributed.shards_by_cost(len(rows), block_costs)
    mine = shards[distributed.rank()]
    values = (
        np.asarray(
            scorer.score(model, tokenizer, [rows[i] for i in mine], fmt, max_length=max_length, desc=desc),
            dtype=np.float64,
        )
        if len(mine)
        else np.zeros(0, dtype=np.float64)
    )
    out = np.zeros(len(rows), dtype=np.float64)
    for ids, part in distributed.all_gather_object((mine, values)):
        out[ids] = part
    return out
