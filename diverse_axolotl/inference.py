"""Inference code shared by scoring and evaluation: greedy generation in left-padded, token-budgeted batches."""

from __future__ import annotations


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
    import torch
    from transformers import GenerationConfig

    from .embedding import token_budget_batches
    from .models import decoder_body
    from .progress import progress_bar

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    encoded = []
    for prompt, new in zip(prompts, max_new_tokens):
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if not ids and tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id]
        encoded.append(ids)
    device = next(decoder_body(model).parameters()).device
    outputs = [""] * len(prompts)
    lengths = [min(len(ids) + new, max_length) for ids, new in zip(encoded, max_new_tokens)]
    with torch.inference_mode(), progress_bar(desc, total=len(prompts)) as advance:
        for batch in token_budget_batches(lengths, batch_tokens):
            batch_new = max(max_new_tokens[i] for i in batch)
            keep = max(max_length - batch_new, 1)  # prompt + generation stay within max_length
            prompt_ids = {i: encoded[i][-keep:] for i in batch}
            width = max(len(prompt_ids[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(batch):
                n = len(prompt_ids[i])
                ids[row, width - n:] = torch.as_tensor(prompt_ids[i])
                mask[row, width - n:] = 1
            config = GenerationConfig(
                max_new_tokens=batch_new, do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=eos
            )
            generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
            for row, i in enumerate(batch):
                new_ids = generated[row, width:].tolist()[: max_new_tokens[i]]
                if eos is not None and eos in new_ids:
                    new_ids = new_ids[: new_ids.index(eos)]
                outputs[i] = tokenizer.decode(new_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            advance(len(batch))
    return outputs

