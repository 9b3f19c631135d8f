"""Training throughput on a CPU: today's demo setting against the CPU fast path, on the same rows, in one run.

    python bench/training.py [--model models/SmolLM2-135M-Instruct] [--rows 96] [--epochs 1]

Each arm runs in its own fresh process (so "seconds to first step" includes Python, imports and Axolotl's
setup, as a round of `diverse-axolotl run` pays them) on the first `--rows` rows of the demo pool:

  a  baseline: the demo recipe's Axolotl keys as they were (fp32, no packing, batches of 8 padded rows), 1 thread
  b  a plain transformers + peft loop: same LoRA, optimizer and batches, fp32, dynamic padding, every core
  c  the CPU fast path: the demo keys with `diverse_axolotl.training.cpu_defaults()` (packing with our
     CompletePacking sampler; bf16 where this CPU has native bf16 measured faster than fp32), every core
  d  c with bf16 forced (`bf16: true`), whatever the CPU
  e  c without packing, with Axolotl's `group_by_length` instead (HF's length-grouped sampler, no rows dropped)

For each: real (non-pad) tokens per second of training, seconds from process start to the first step, the final
step's loss and the mean loss, the ratio to (a), and the fraction of this machine's bf16 matmul peak (measured
here, in the same run) that 4 x params FLOPs per real token reach. It asserts that every arm trained exactly the
selected rows: each row's tokens appear in what the trainer saw, and the trained label tokens add up to the rows'.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO_KEYS = {  # recipes/demo.yaml's Axolotl keys before the CPU fast path (the baseline)
    "adapter": "lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "lora_target_linear": True,
    "sequence_len": 256, "micro_batch_size": 8, "gradient_accumulation_steps": 1, "num_epochs": 1,
    "learning_rate": 0.0005, "optimizer": "adamw_torch", "lr_scheduler": "constant", "train_on_inputs": False,
}
OLD_CPU_KEYS = {
    "lora_mlp_kernel": False, "lora_qkv_kernel": False, "lora_o_kernel": False, "lora_embedding_kernel": False,
    "bf16": False, "fp16": False, "tf32": False, "attn_implementation": "sdpa", "dataset_num_proc": 1,
    "dataloader_num_workers": 0,
}
ARMS = {
    "a": "demo keys as they were, fp32, no packing, 1 thread (baseline)",
    "b": "plain transformers+peft loop, fp32, dynamic padding, all cores",
    "c": "CPU fast path: cpu_defaults (CompletePacking; bf16 if measured faster), all cores",
    "d": "c with bf16: true",
    "e": "c with group_by_length instead of packing",
}

#: What the recording plugin saw (filled inside an arm's process).
RECORD: dict = {"batches": [], "first_step": None, "end": None, "dataset": [], "losses": []}


class Recorder:
    """An Axolotl plugin that records each batch's tokens and the time of the first and last step."""

    def __new__(cls, *args, **kwargs):
        from axolotl.integrations.base import BasePlugin

        class _Recorder(BasePlugin):
            def post_trainer_create(self, cfg, trainer):
                RECORD["dataset"] = [dict(input_ids=r["input_ids"], labels=r["labels"]) for r in trainer.train_dataset]
                step = trainer.training_step

                def recording_step(model, inputs, *a, **k):
                    if RECORD["first_step"] is None:
                        RECORD["first_step"] = time.time()
                    RECORD["batches"].append(_batch_record(inputs))
                    out = step(model, inputs, *a, **k)
                    RECORD["end"] = time.time()
                    return out

                trainer.training_step = recording_step

            def add_callbacks_post_trainer(self, cfg, trainer):
                from transformers import TrainerCallback

                class Losses(TrainerCallback):
                    def on_log(self, args, state, control, logs=None, **kwargs):
                        if logs and "loss" in logs:
                            RECORD["losses"].append(float(logs["loss"]))

                return [Losses()]

        return _Recorder(*args, **kwargs)


def _batch_record(inputs) -> dict:
    ids, labels = inputs["input_ids"], inputs["labels"]
    return {"rows": ids.tolist(), "label_tokens": int((labels != -100).sum()), "slots": int(ids.numel())}


def _contains(haystack: bytes, needle: bytes) -> bool:
    start = haystack.find(needle)
    while start != -1:
        if start % 4 == 0:
            return True
        start = haystack.find(needle, start + 1)
    return False


def _verify(dataset: list[dict], batches: list[dict], epochs: int, selected: int) -> dict:
    import numpy as np

    seen = [np.asarray(r, dtype=np.int32).tobytes() for b in batches for r in b["rows"]]
    trained_rows = sum(
        any(_contains(s, np.asarray(ex["input_ids"], dtype=np.int32).tobytes()) for s in seen) for ex in dataset
    )
    label_tokens = sum(b["label_tokens"] for b in batches)
    dataset_labels = sum(int((np.asarray(ex["labels"]) != -100).sum()) for ex in dataset)
    assert len(dataset) == selected, f"Axolotl kept {len(dataset)} of the {selected} selected rows"
    assert trained_rows == selected, f"{trained_rows} of {selected} selected rows trained"
    assert label_tokens == dataset_labels * epochs, (
        f"trained {label_tokens} label tokens, rows hold {dataset_labels} x {epochs}"
    )
    return {"trained_rows": trained_rows, "label_tokens": label_tokens}


def _rows(args) -> list[dict]:
    return json.loads(Path(args.pool).read_text())[: args.rows]


# -- arms (each in its own process) -------------------------------------------------------------------------------
def run_axolotl_arm(arm: str, args, out: dict) -> None:
    from diverse_axolotl.training import axolotl_config, train_round

    keys = {"base_model": str(Path(args.model).resolve()), **DEMO_KEYS, "num_epochs": args.epochs,
            "logging_steps": 1, "plugins": ["bench.training.Recorder"]}
    if arm == "a":
        keys.update(OLD_CPU_KEYS, sample_packing=False)
    elif arm == "d":
        keys.update(bf16=True)
    elif arm == "e":
        keys.update(sample_packing=False, group_by_length=True)
    work = Path(args.work) / arm
    work.mkdir(parents=True, exist_ok=True)
    train_file = work / "train.jsonl"
    rows = _rows(args)
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = axolotl_config(keys, train_file, "alpaca", work / "adapter", work / "prepared", seed=0)
    import shutil

    shutil.rmtree(work / "adapter", ignore_errors=True)
    result = train_round(cfg, work)
    import yaml

    used = yaml.safe_load((work / "axolotl.yaml").read_text())
    out.update(_verify(RECORD["dataset"], RECORD["batches"], args.epochs, len(rows)))
    out.update(
        first_step=RECORD["first_step"], train_s=RECORD["end"] - RECORD["first_step"],
        # every row trained once per epoch (asserted above): the real tokens are the rows' tokens
        real_tokens=sum(len(ex["input_ids"]) for ex in RECORD["dataset"]) * args.epochs,
        slots=sum(b["slots"] for b in RECORD["batches"]),
        steps=result.steps, mean_loss=result.train_loss, final_loss=RECORD["losses"][-1] if RECORD["losses"] else None,
        settings={k: used.get(k) for k in ("bf16", "sample_packing", "group_by_length")},
    )


def run_plain_arm(args, out: dict) -> None:
    """transformers + peft, no Axolotl: the same LoRA on every linear layer, AdamW, constant LR, batches of 8 rows
    in the same random order per epoch, dynamic padding, loss on the answer tokens (+ EOS) only."""
    import torch
    from peft import LoraConfig, get_peft_model

    from diverse_axolotl.data import prompt_and_response
    from diverse_axolotl.models import available_cores, load_model, load_tokenizer

    torch.manual_seed(0)
    torch.set_num_threads(available_cores())
    tok = load_tokenizer(args.model)
    model = load_model(args.model, device="cpu", dtype="float32").train()
    model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    examples = []
    for row in _rows(args):
        prompt, answer = prompt_and_response(row, "alpaca", tok)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = (p + a)[: DEMO_KEYS["sequence_len"]]
        examples.append({"input_ids": ids, "labels": ([-100] * len(p) + a)[: len(ids)]})
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=DEMO_KEYS["learning_rate"])
    batches, losses, bs = [], [], DEMO_KEYS["micro_batch_size"]
    first = None
    for epoch in range(args.epochs):
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(epoch)).tolist()
        for i in range(0, len(order), bs):
            chunk = [examples[j] for j in order[i : i + bs]]
            width = max(len(e["input_ids"]) for e in chunk)
            ids = torch.full((len(chunk), width), tok.pad_token_id)
            labels = torch.full((len(chunk), width), -100)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, e in enumerate(chunk):
                n = len(e["input_ids"])
                ids[r, :n], labels[r, :n], mask[r, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
            if first is None:
                first = time.time()
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss))
            batches.append(
                {"rows": ids.tolist(), "label_tokens": int((labels != -100).sum()), "slots": int(ids.numel())}
            )
    end = time.time()
    out.update(_verify(examples, batches, args.epochs, len(examples)))
    out.update(
        first_step=first,
        train_s=end - first,
        real_tokens=sum(len(e["input_ids"]) for e in examples) * args.epochs,
        slots=sum(b["slots"] for b in batches),
        steps=len(batches),
        mean_loss=sum(losses) / len(losses),
        final_loss=losses[-1],
        settings={"bf16": False, "sample_packing": False},
    )


def matmul_peak(dtype_name: str, threads: int, n: int = 2048, seconds: float = 3.0) -> float:
    """FLOP/s of square matmuls on `threads` threads (the best of repeated timings)."""
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best, stop = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < stop:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def child(args) -> None:
    out = {"arm": args.arm}
    if args.arm == "peak":
        from diverse_axolotl.models import available_cores

        out.update({d: matmul_peak(d, available_cores()) for d in ("bfloat16", "float32")})
    elif args.arm == "b":
        run_plain_arm(args, out)
    else:
        run_axolotl_arm(args.arm, args, out)
    Path(args.result).write_text(json.dumps(out))


# -- driver ------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct"))
    ap.add_argument("--pool", default=str(ROOT / "tests" / "data" / "alpaca_200.json"))
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument(
        "--arms", default="abcde", help="which arms to run, as letters: ac (a is the baseline the ratios refer to)"
    )
    ap.add_argument("--work", default="/tmp/diverse-axolotl-bench-training")
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    unknown = sorted(set(args.arms) - set(ARMS))
    if unknown:
        ap.error(f"--arms: unknown arm(s) {', '.join(map(repr, unknown))}; arms are {''.join(ARMS)}")
    if args.arm:  # run inside the importable module, where Axolotl's plugin (bench.training.Recorder) records
        from bench import training

        training.child(args)
        return

    from diverse_axolotl.models import available_cores, cpu_supports_bf16

    cores = available_cores()
    from diverse_axolotl.environment import OFFLINE_ENV

    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(ROOT)}
    env.pop("OMP_NUM_THREADS", None)
    results = {}
    Path(args.work).mkdir(parents=True, exist_ok=True)
    for arm in ["peak", *args.arms]:
        result = Path(args.work) / f"{arm}.json"
        result.unlink(missing_ok=True)
        arm_env = {**env, "OMP_NUM_THREADS": "1"} if arm == "a" else env
        base = [sys.executable, str(Path(__file__).resolve()), "--arm", arm, "--result", str(result)]
        cmd = base + [
            "--model",
            args.model,
            "--pool",
            args.pool,
            "--rows",
            str(args.rows),
            "--epochs",
            str(args.epochs),
            "--work",
            args.work,
        ]
        launched = time.time()
        proc = subprocess.run(cmd, env=arm_env, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"arm {arm} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        results[arm] = json.loads(result.read_text())
        results[arm]["launched"] = launched
        print(f"  ran {arm} in {time.time() - launched:.0f} s", file=sys.stderr, flush=True)

    from transformers import AutoConfig

    from diverse_axolotl.models import load_model

    params = sum(p.numel() for p in load_model(args.model, device="cpu", dtype="float32").parameters())
    peak = results.pop("peak")
    print(f"machine: {cores} available cores, native bf16: {cpu_supports_bf16()}; matmul peak on {cores} threads:"
          f" bf16 {peak['bfloat16'] / 1e9:.0f} GFLOP/s, fp32 {peak['float32'] / 1e9:.0f} GFLOP/s")
    print(
        f"model {Path(args.model).name} ({params / 1e6:.1f} M params,"
        f" {AutoConfig.from_pretrained(args.model).model_type});"
        f" {args.rows} rows of {Path(args.pool).name}, {args.epochs} epoch(s)"
    )
    base_rate = None
    header = (
        f"{'arm':<4}{'real tok/s':>11}{'vs a':>7}{'s to 1st step':>15}{'train s':>9}{'steps':>7}{'pad %':>7}"
        f"{'final loss':>12}{'mean loss':>11}{'% bf16 peak':>13}{'% fp32 peak':>13}  rows trained"
    )
    print(header)
    for arm, r in results.items():
        rate = r["real_tokens"] / r["train_s"]
        base_rate = base_rate or (rate if arm == "a" else None)
        ratio = f"{rate / base_rate:.2f}" if base_rate else "-"
        to_first = r["first_step"] - r["launched"]
        pad = 1 - r["real_tokens"] / r["slots"]
        flops = 4 * params * rate  # forward 2 x params, backward to the activations 2 x params (LoRA: frozen weights)
        print(
            f"{arm:<4}{rate:>11.1f}{ratio:>7}{to_first:>15.1f}{r['train_s']:>9.1f}{r['steps']:>7}{pad:>7.1%}"
            f"{r['final_loss']:>12.4f}{r['mean_loss']:>11.4f}"
            f"{flops / peak['bfloat16']:>13.1%}{flops / peak['float32']:>13.1%}"
            f"  {r['trained_rows']}/{args.rows}"
        )
    for arm, r in results.items():
        print(f"  {arm}: {ARMS[arm]}; settings {r['settings']}")
    print("every arm trained every selected row, each once per epoch (asserted)")


if __name__ == "__main__":
    main()
