"""Embedding throughput: the reference way against ours, on the same rows, in one run.

    python bench/embedding.py [--model models/SmolLM2-135M-Instruct] [--rows 64] [--max-length 256]

(a) reference: one row at a time, float32, the full causal LM with all hidden states (as DiverseEvol's code does);
(b) ours: `diverse_axolotl.embedding` (length-sorted token-budget batches, transformer body only; bf16 on GPU).
Prints tokens/s of each, the ratio, the largest relative difference between the two embeddings, and on a GPU the
achieved fraction of the FLOP floor (2 * params * tokens at the measured bf16 matmul rate).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diverse_axolotl.data import prompt_and_response  # noqa: E402
from diverse_axolotl.embedding import embed_token_ids, pool_hidden, tokenize_texts  # noqa: E402
from diverse_axolotl.models import load_model, load_tokenizer  # noqa: E402


@torch.inference_mode()
def reference_embed(model, token_ids) -> np.ndarray:
    out = []
    for ids in token_ids:
        x = torch.tensor([ids], device=model.device)
        hidden = model(input_ids=x, output_hidden_states=True).hidden_states[-1]
        out.append(hidden.float().mean(1)[0].cpu().numpy())
    return np.stack(out)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int = 4096) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct"))
    ap.add_argument("--pool", default=str(ROOT / "tests" / "data" / "alpaca_200.json"))
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--reference-rows", type=int, default=None, help="rows for the slow reference (default: --rows)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-tokens", type=int, default=None, help="default: 16384 on a GPU, 2048 on a CPU")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.batch_tokens is None:  # big batches help a GPU; on a CPU they were slower than small ones (cache)
        args.batch_tokens = 16384 if device.type == "cuda" else 2048
    rows = json.loads(Path(args.pool).read_text())[: args.rows]
    tok = load_tokenizer(args.model)
    ids = tokenize_texts(tok, ["".join(prompt_and_response(r, "alpaca")) for r in rows], args.max_length)
    n_ref = args.reference_rows or len(ids)
    ref_tokens, all_tokens = sum(map(len, ids[:n_ref])), sum(map(len, ids))

    fp32 = load_model(args.model, device=device.type, dtype="float32")
    reference_embed(fp32, ids[:2])  # warm-up
    start = time.perf_counter()
    ref = reference_embed(fp32, ids[:n_ref])
    if device.type == "cuda":
        torch.cuda.synchronize()
    ref_s = time.perf_counter() - start
    del fp32

    ours_model = load_model(args.model, device=device.type, dtype="auto")
    embed_token_ids(ours_model, ids[:2], tok.pad_token_id, batch_tokens=args.batch_tokens)  # warm-up
    start = time.perf_counter()
    ours = embed_token_ids(ours_model, ids, tok.pad_token_id, batch_tokens=args.batch_tokens)
    if device.type == "cuda":
        torch.cuda.synchronize()
    ours_s = time.perf_counter() - start

    rel = np.abs(ours[:n_ref] - ref).max(axis=1) / np.abs(ref).max(axis=1)
    ref_rate, ours_rate = ref_tokens / ref_s, all_tokens / ours_s
    dtype = next(ours_model.parameters()).dtype
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), torch threads {torch.get_num_threads()}")
    print(f"rows {len(ids)} ({all_tokens:,} tokens; reference on {n_ref} rows, {ref_tokens:,} tokens), max_length {args.max_length}")
    print(f"{'way':<44}{'seconds':>10}{'tokens/s':>14}")
    print(f"{'reference: one row at a time, float32':<44}{ref_s:>10.2f}{ref_rate:>14,.0f}")
    print(f"{'ours: length-sorted token batches, ' + str(dtype).replace('torch.', ''):<44}{ours_s:>10.2f}{ours_rate:>14,.0f}")
    print(f"speed-up (ours / reference): {ours_rate / ref_rate:.2f}x")
    print(f"max relative difference of the embeddings: {rel.max():.2e}")
    if device.type == "cuda":
        params = sum(p.numel() for p in ours_model.parameters())
        floor_s = 2 * params * all_tokens / matmul_rate(device, dtype)
        print(f"FLOP floor {floor_s:.3f} s at the measured matmul rate: achieved {floor_s / ours_s:.1%} of it")


if __name__ == "__main__":
    main()
