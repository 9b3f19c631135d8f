"""Inference code shared by embedding, scoring and evaluation: rows batched by a token budget, padded batches,
and greedy generation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def token_budget_batches(lengths: Sequence[int], batch_tokens: int) -> list[np.ndarray]:
    """Row ids grouped into batches, longest first, each with rows * longest <= batch_tokens (at least one row)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches: list[np.ndarray] = []
    current: list[int] = []
    longest = 0
    for idx in order:
        length = max(int(lengths[idx]), 1)
        if current and max(longest, length) * (len(current) + 1) > batch_tokens:
            batches.append(np.array(current))
            current, longest = [], 0
        current.append(int(idx))
        longest = max(longest, length)
    if current:
        batches.append(np.array(current))
    return batches


def padded_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of token-id lists padded to the longest (at least 1 wide): right padding for
    forward passes, left padding for generation (new tokens then follow every prompt directly)."""
    width = max(max((len(s) for s in sequences), default=0), 1)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if not len(seq):
            continue
        cols = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, cols] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, cols] = 1
    return ids, mask


def greedy_generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: list[int],
    max_length: int = 512,
    batch_tokens: int = 8192,
    desc: str = "generating",
) -> list[str]:
    """Greedy continuations of each prompt (left-padded batches; the prompt cut from the left to fit max_length)."""
    from transformers import GenerationConfig

    from .models import decoder_body
    from .progress import progress_bar

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    encoded = []
    if len(max_new_tokens) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(max_new_tokens)} max_new_tokens")
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if not ids and tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id]
        encoded.append(ids)
    device = next(decoder_body(model).parameters()).device
    outputs = [""] * len(prompts)
    lengths = [min(len(ids) + new, max_length) for ids, new in zip(encoded, max_new_tokens, strict=True)]
    with torch.inference_mode(), progress_bar(desc, total=len(prompts)) as advance:
        for batch in token_budget_batches(lengths, batch_tokens):
            batch_new = max(max_new_tokens[i] for i in batch)
            keep = max(max_length - batch_new, 1)  # prompt + generation stay within max_length
            prompt_ids = {i: encoded[i][-keep:] for i in batch}
            ids, mask = padded_batch([prompt_ids[i] for i in batch], pad, left=True)
            width = ids.shape[1]
            config = GenerationConfig(
                max_new_tokens=batch_new, do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=eos
            )
            generated = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
            )
            for row, i in enumerate(batch):
                new_ids = generated[row, width:].tolist()[: max_new_tokens[i]]
                if eos is not None and eos in new_ids:
                    new_ids = new_ids[: new_ids.index(eos)]
                outputs[i] = tokenizer.decode(new_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            advance(len(batch))
    return outputs
