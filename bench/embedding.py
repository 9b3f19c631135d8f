"""Embedding throughput: the reference way against ours, on the same rows, in one run.

    python bench/embedding.py [--model models/SmolLM2-135M-Instruct] [--rows 200] [--reference-rows 64] \
        [--max-length 256]

(a) reference: one row at a time, float32, the full causal LM with all hidden states (as DiverseEvol's code does);
(b) ours: `diverse_axolotl.embedding` (length-sorted token-budget batches, transformer body only), in float32 and
in bfloat16 (what `dtype: auto` picks on a GPU and on a CPU with native bf16);
(c) with a LoRA adapter (`--adapter`, default a random r=8 LoRA on every linear layer): peft's unmerged model
against `load_model`'s merged one (what the loop embeds, scores and evaluates with), in float32 and bfloat16.
Prints tokens/s of each and the ratios, the largest relative difference to the reference, how far bf16 embeddings
are from fp32 ones, the overlap of the first 50 k-center picks (bf16 vs fp32, as a set and in order), and on a GPU
the achieved fraction of the FLOP floor (2 * params * tokens at the measured bf16 matmul rate).
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
from diverse_axolotl.embedding import embed_token_ids, tokenize_texts  # noqa: E402
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
    ap.add_argument("--rows", type=int, default=200, help="rows embedded by ours (default: the demo pool's 200)")
    ap.add_argument("--reference-rows", type=int, default=64, help="rows for the slow reference")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-tokens", type=int, default=None, help="default: 16384 on a GPU, 2048 on a CPU")
    ap.add_argument("--picks", type=int, default=50, help="k-center picks compared between bf16 and fp32")
    ap.add_argument("--adapter", default=None, help="LoRA adapter folder for (c) (default: a random r=8 LoRA)")
    ap.add_argument("--repeats", type=int, default=2, help="(c): timed passes of each model, alternating; best kept")
    args = ap.parse_args()

    from diverse_axolotl.models import cpu_supports_bf16
    from diverse_axolotl.selection import get_selector

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.batch_tokens is None:  # big batches help a GPU; on a CPU they were slower than small ones (cache)
        args.batch_tokens = 16384 if device.type == "cuda" else 2048
    rows = json.loads(Path(args.pool).read_text())[: args.rows]
    tok = load_tokenizer(args.model)
    ids = tokenize_texts(tok, ["".join(prompt_and_response(r, "alpaca")) for r in rows], args.max_length)
    n_ref = min(args.reference_rows, len(ids))
    ref_tokens, all_tokens = sum(map(len, ids[:n_ref])), sum(map(len, ids))

    fp32 = load_model(args.model, device=device.type, dtype="float32")
    reference_embed(fp32, ids[:2])  # warm-up
    start = time.perf_counter()
    ref = reference_embed(fp32, ids[:n_ref])
    if device.type == "cuda":
        torch.cuda.synchronize()
    ref_s = time.perf_counter() - start
    del fp32

    results = {}
    for dtype in ("float32", "bfloat16"):
        model = load_model(args.model, device=device.type, dtype=dtype)
        embed_token_ids(model, ids[:2], tok.pad_token_id, batch_tokens=args.batch_tokens)  # warm-up
        start = time.perf_counter()
        emb = embed_token_ids(model, ids, tok.pad_token_id, batch_tokens=args.batch_tokens)
        if device.type == "cuda":
            torch.cuda.synchronize()
        results[dtype] = (emb, time.perf_counter() - start, model)

    ref_rate = ref_tokens / ref_s
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), torch threads"
          f" {torch.get_num_threads()}, native bf16 on this CPU: {cpu_supports_bf16()}")
    print(f"rows {len(ids)} ({all_tokens:,} tokens; reference on {n_ref} rows, {ref_tokens:,} tokens), max_length"
          f" {args.max_length}, batch_tokens {args.batch_tokens}")
    print(f"{'way':<52}{'seconds':>10}{'tokens/s':>14}{'vs ref':>9}{'vs fp32':>9}")
    print(f"{'reference: one row at a time, float32':<52}{ref_s:>10.2f}{ref_rate:>14,.0f}{1:>8.2f}x")
    fp32_rate = all_tokens / results["float32"][1]
    for dtype, (_emb, seconds, _) in results.items():
        rate = all_tokens / seconds
        print(f"{'ours: length-sorted token batches, ' + dtype:<52}{seconds:>10.2f}{rate:>14,.0f}"
              f"{rate / ref_rate:>8.2f}x{rate / fp32_rate:>8.2f}x")
    e32, e16 = results["float32"][0], results["bfloat16"][0]
    rel = np.abs(e32[:n_ref] - ref).max(axis=1) / np.abs(ref).max(axis=1)
    print(f"max relative difference, ours fp32 vs reference: {rel.max():.2e}")
    row_rel = np.linalg.norm(e16 - e32, axis=1) / np.linalg.norm(e32, axis=1)
    print(f"bf16 vs fp32 per row, |e16 - e32| / |e32|: median {np.median(row_rel):.2%}, max {row_rel.max():.2%}")
    k = min(args.picks, len(ids))
    kc = get_selector("kcenter", device="cpu", normalize=False)  # Euclidean, as bench/RESULTS.md measured it
    p32, p16 = kc.select(e32, k).tolist(), kc.select(e16, k).tolist()
    same_order = next((i for i, (a, b) in enumerate(zip(p32, p16, strict=True)) if a != b), k)
    print(f"k-center, first {k} picks on these {len(ids)} rows: bf16 and fp32 share {len(set(p32) & set(p16))} of {k}"
          f" (identical order for the first {same_order})")
    if device.type == "cuda":
        model = results["bfloat16"][2]
        params = sum(p.numel() for p in model.parameters())
        floor_s = 2 * params * all_tokens / matmul_rate(device, torch.bfloat16)
        print(
            f"FLOP floor {floor_s:.3f} s at the measured matmul rate:"
            f" achieved {floor_s / results['bfloat16'][1]:.1%} of it"
        )

    adapter_section(args, ids, tok, device)


def random_adapter(model_dir: str, folder: Path) -> Path:
    """A LoRA (r=8, alpha=16, every linear layer) with non-zero random B, so that merging has something to fold."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), config)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.005)  # trained size: the CPU bench's r=8 adapters have B std 0.004-0.006
    model.save_pretrained(folder)
    return folder


def adapter_section(args, ids, tok, device) -> None:
    """(c) peft's unmerged LoRA against load_model's merged one: tokens/s and distance to fp32 unmerged."""
    import tempfile

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def embed(model) -> np.ndarray:
        return embed_token_ids(model, ids, tok.pad_token_id, batch_tokens=args.batch_tokens)

    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(args.adapter) if args.adapter else random_adapter(args.model, Path(tmp) / "lora")
        print(f"\n(c) LoRA adapter {args.adapter or 'random r=8, every linear layer'}: unmerged (peft) vs merged"
              f" (load_model), {args.repeats} alternating timed passes each, best kept")
        print(f"{'dtype':<10}{'unmerged s':>12}{'merged s':>10}{'speed-up':>10}{'|unmerged - ref|':>18}"
              f"{'|merged - ref|':>16}")
        reference = None
        for dtype in ("float32", "bfloat16"):
            torch_dtype = getattr(torch, dtype)
            base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch_dtype)
            models = {
                "unmerged": PeftModel.from_pretrained(base, str(adapter)).to(device).eval(),
                "merged": load_model(args.model, adapter, device=device.type, dtype=dtype),
            }
            best = dict.fromkeys(models, float("inf"))
            out = {}
            for model in models.values():
                embed_token_ids(model, ids[:2], tok.pad_token_id, batch_tokens=args.batch_tokens)  # warm-up
            for _ in range(args.repeats):
                for name, model in models.items():
                    start = time.perf_counter()
                    out[name] = embed(model)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    best[name] = min(best[name], time.perf_counter() - start)
            if reference is None:
                reference = out["unmerged"]
            norm = np.linalg.norm(reference, axis=1)
            rel = {n: np.median(np.linalg.norm(e - reference, axis=1) / norm) for n, e in out.items()}
            speedup = best["unmerged"] / best["merged"]
            print(f"{dtype:<10}{best['unmerged']:>12.2f}{best['merged']:>10.2f}{speedup:>9.2f}x"
                  f"{rel['unmerged']:>18.2%}{rel['merged']:>16.2%}")
        print("ref: float32 unmerged; distances are per-row |e - ref| / |ref|, median over rows")


if __name__ == "__main__":
    main()
