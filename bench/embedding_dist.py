"""The embedding stage with 1 process and with N processes (torch.distributed), on the same rows, in one run.

    python bench/embedding_dist.py [--pool ../shared/data/pools/alpaca/alpaca_5000.json] [--rows 256]
        [--procs 2] [--model models/SmolLM2-135M-Instruct] [--max-length 256] [--batch-tokens 2048]

Arms (each a fresh set of processes, the model loaded and warmed up before the clock starts):
  1 process, all cores as torch threads      the baseline: what a one-process run does today
  1 process, cores / N threads               one rank's share of the machine, for the per-rank rate
  N processes (gloo on CPU, nccl on GPUs),   `embedding.embed_rows` data-parallel: length-balanced shards,
  cores / N threads each                     rows written into one shared .npy (or gathered with --gather)
Timed: tokenising, sharding, embedding and assembling the file, from a barrier to a barrier. Prints seconds,
tokens/s, the ratio against the baseline, and checks that the N-process file is allclose to the 1-process one.

On GPUs run it with one process per GPU the same way (each rank takes the GPU of its rank); on one machine with
N GPUs: `python bench/embedding_dist.py --procs N --device cuda --dtype bfloat16 --batch-tokens 16384`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_pool(path: Path, rows: int) -> list[dict]:
    """A JSON list or JSONL pool of alpaca rows, the first `rows` of it."""
    text = path.read_text()
    data = (
        json.loads(text)
        if text.lstrip().startswith("[")
        else [json.loads(line) for line in text.splitlines() if line.strip()]
    )
    return data[:rows]


def _worker(rank: int, world: int, port: int, threads: int, args: dict, out: str, result: str) -> None:
    import torch

    torch.set_num_threads(threads)
    if world > 1:
        import torch.distributed as dist

        backend = "nccl" if args["device"] == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    from diverse_axolotl import distributed
    from diverse_axolotl.embedding import embed_rows, pool_texts
    from diverse_axolotl.models import load_model, load_tokenizer

    tok = load_tokenizer(args["model"])
    model = load_model(args["model"], device=args["device"], dtype=args["dtype"])
    if args["device"] == "cuda":
        model.to(f"cuda:{rank}")
    rows = read_pool(Path(args["pool"]), args["rows"])
    texts = pool_texts(rows, "alpaca", tok)
    spec = SimpleNamespace(max_length=args["max_length"], pooling="mean", layer=-1, batch_tokens=args["batch_tokens"])
    embed_rows(model, tok, texts[:8], spec)  # warm-up, one process each
    distributed.barrier()
    start = time.perf_counter()
    emb = embed_rows(model, tok, texts, spec, out=Path(out), shared_fs=not args["gather"])
    if args["device"] == "cuda":
        torch.cuda.synchronize()
    distributed.barrier()
    seconds = time.perf_counter() - start
    if rank == 0:
        if args["gather"] and world > 1:
            assert emb is not None
        tokens = sum(len(t) for t in tok(texts, truncation=True, max_length=args["max_length"])["input_ids"])
        Path(result).write_text(json.dumps({"seconds": seconds, "tokens": tokens}))
    distributed.destroy()


def run_arm(procs: int, threads: int, args: dict, out: Path) -> dict:
    import torch.multiprocessing as mp

    result = out.with_suffix(".json")
    if procs == 1:
        _worker(0, 1, 0, threads, args, str(out), str(result))
    else:
        mp.spawn(_worker, args=(procs, _free_port(), threads, args, str(out), str(result)), nprocs=procs, join=True)
    return json.loads(result.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct"))
    ap.add_argument("--pool", default=str(ROOT.parent / "shared" / "data" / "pools" / "alpaca" / "alpaca_5000.json"))
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-tokens", type=int, default=2048, help="2048 suits a CPU (bench/embedding.py); 16384 a GPU")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--gather", action="store_true", help="assemble through gather to rank 0, not a shared file")
    ap.add_argument("--repeats", type=int, default=1, help="run each arm this many times, keep the fastest")
    args = ap.parse_args()
    settings = vars(args)
    cores = len(os.sched_getaffinity(0))
    per_rank = max(1, cores // args.procs)
    arms = [
        (f"1 process, {cores} threads (baseline)", 1, cores),
        (f"1 process, {per_rank} thread(s) (one rank's share)", 1, per_rank),
        (f"{args.procs} processes, {per_rank} thread(s) each", args.procs, per_rank),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        results, files = [], []
        for i, (label, procs, threads) in enumerate(arms):
            best: dict | None = None
            for r in range(args.repeats):
                out = Path(tmp) / f"arm{i}.{r}.npy"
                res = run_arm(procs, threads, settings, out)
                if best is None or res["seconds"] < best["seconds"]:
                    best = res
            assert best is not None
            results.append((label, best))
            files.append(out)  # every repeat wrote the same rows; the last one's file is compared
        same = np.allclose(np.load(files[0]), np.load(files[-1]), rtol=1e-4, atol=1e-5)
        diff = float(np.abs(np.load(files[0]) - np.load(files[-1])).max())
    base = results[0][1]["seconds"]
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    print(
        f"cores {cores}, device {args.device}, dtype {args.dtype}, rows {args.rows} ({results[0][1]['tokens']:,}"
        f" tokens), max_length {args.max_length}, batch_tokens {args.batch_tokens},"
        f" assembly {'gather' if args.gather else 'shared file'},"
        f" load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"{'arm':<46}{'seconds':>10}{'tokens/s':>12}{'vs baseline':>13}")
    for label, res in results:
        print(
            f"{label:<46}{res['seconds']:>10.2f}{res['tokens'] / res['seconds']:>12,.0f}{base / res['seconds']:>12.2f}x"
        )
    print(f"{args.procs}-process file allclose to the 1-process file: {same} (max abs difference {diff:.2e})")


if __name__ == "__main__":
    main()
