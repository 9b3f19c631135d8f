"""The Axolotl bridge: one round's LoRA/QLoRA training through Axolotl's own Python API.

The recipe's Axolotl keys go to Axolotl unchanged; the loop adds only what changes per round (the dataset file,
where the adapter goes, the prepared-data cache, and for continued training the previous adapter). Axolotl is
imported once per process (it costs seconds) and its logs go to a file in the round folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .data import AXOLOTL_TYPE, atomic_path
from .errors import UserError, did_you_mean
from .logs import logs_to

#: Environment Axolotl needs to run quietly and offline-friendly; set only where the user has not.
AXOLOTL_ENV = {"AXOLOTL_DO_NOT_TRACK": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}


PROGRESS_PLUGIN = "diverse_axolotl.axolotl_plugin.ProgressPlugin"


@dataclass
class TrainResult:
    adapter_dir: Path
    train_loss: float | None
    steps: int
    seconds: float
    sequence_len: int | None = None  # from Axolotl's normalised config of the round (its default when unset)


def axolotl_config(
    axolotl_keys: dict[str, Any],
    train_file: Path,
    fmt: str,
    adapter_dir: Path,
    prepared_dir: Path,
    seed: int,
    previous_adapter: Path | None = None,
) -> dict[str, Any]:
    """The full Axolotl config for one round: the recipe's keys plus the round's dataset and output folder."""
    cfg = dict(axolotl_keys)
    dataset: dict[str, Any] = {"path": str(train_file), "ds_type": "json", "type": AXOLOTL_TYPE[fmt]}
    if fmt == "chat":
        dataset.update(field_messages="messages", message_property_mappings={"role": "role", "content": "content"})
    if fmt == "sharegpt":  # Axolotl's default `roles` maps human/gpt/system to user/assistant/system
        dataset.update(field_messages="conversations", message_property_mappings={"role": "from", "content": "value"})
    cfg.update(
        datasets=[dataset],
        output_dir=str(adapter_dir),
        dataset_prepared_path=str(prepared_dir),
        seed=cfg.get("seed", seed),
    )
    if previous_adapter is not None:
        cfg["lora_model_dir"] = str(previous_adapter)
    cfg["plugins"] = [*cfg.get("plugins", []), PROGRESS_PLUGIN]
    # Axolotl drops rows longer than sequence_len by default, which silently removes exactly the long outliers a
    # diversity selector likes to pick; truncating keeps every selected row in training.
    cfg.setdefault("excess_length_strategy", "truncate")
    cfg.setdefault("save_strategy", "no")  # the final adapter is all a round needs
    cfg.setdefault("save_total_limit", 1)
    for key, value in cpu_defaults().items():
        cfg.setdefault(key, value)
    return cfg


def cpu_defaults() -> dict[str, Any]:
    """What a round on a CPU gets where the recipe says nothing (none of it on a GPU; the recipe's keys win).

    - bf16 where the CPU multiplies bf16 natively (AVX512-BF16/AMX) and measurably faster than fp32
      (`models.cpu_bf16_is_faster`; fp32 elsewhere); our plugin passes `use_cpu` to the training arguments,
      without which transformers refuses bf16 on a CPU;
    - sample packing in one process: no pad tokens trained; our plugin's sampler puts every row in exactly one
      pack per epoch (Axolotl's own drops the last partial batch of packs and stops at an estimated step count);
      under torchrun, where ours does not apply, no packing;
    - no Triton LoRA kernels (they need CUDA), SDPA attention, no fp16/tf32, no worker processes (the cores go
      to the matmuls; training uses every available core, see `models.cpu_threads`).
    """
    from . import distributed, models

    if models.cuda_available():
        return {}
    return {
        "bf16": models.cpu_bf16_is_faster(models.cpu_threads()),
        "fp16": False,
        "tf32": False,
        # Under torchrun Axolotl's own multipack sampler runs (ours keeps to one process, see axolotl_plugin): it
        # drops the last partial batch of packs on every rank, and a small round then trains no step at all.
        # The Trainer's distributed sampler with dynamic padding trains every row.
        "sample_packing": distributed.world_size() == 1,
        "attn_implementation": "sdpa",
        "lora_mlp_kernel": False,
        "lora_qkv_kernel": False,
        "lora_o_kernel": False,
        "lora_embedding_kernel": False,
        "dataset_num_proc": 1,
        "dataloader_num_workers": 0,
    }


@contextlib.contextmanager
def our_sigint():
    """Keep Ctrl-C ours across an Axolotl call. Axolotl's train() installs a SIGINT handler that saves the model
    and exits with status 0, and leaves it installed for the rest of the process: a script running
    `diverse-axolotl run && next-step` would go on as if the run had succeeded. Its installer is disabled for the
    call and whatever handler was there before is put back afterwards, so Ctrl-C stays a KeyboardInterrupt
    (exit 130 with one line) at every stage."""
    saved = signal.getsignal(signal.SIGINT)
    train_module = sys.modules.get("axolotl.train")
    installer = getattr(train_module, "setup_signal_handler", None)
    if installer is not None:
        train_module.setup_signal_handler = lambda *args, **kwargs: None
    try:
        yield
    finally:
        if installer is not None:
            train_module.setup_signal_handler = installer
        if saved is not None:
            signal.signal(signal.SIGINT, saved)


@contextlib.contextmanager
def _pause_in_dataset_preparation(round_name: str):
    """Test hook: with DIVERSE_AXOLOTL_PAUSE=datasets:<round folder>, the first row Axolotl maps while preparing
    the round's dataset waits there (see `loop.pause_point`), so that a test can deliver Ctrl-C at that stage."""
    from .faults import PAUSE_ENV, pause_point

    point = f"datasets:{round_name}"
    if os.environ.get(PAUSE_ENV) != point:
        yield
        return
    from datasets import Dataset

    original = Dataset.map

    def pausing_map(self, function=None, *args, **kwargs):
        if function is not None:
            inner = function

            def function(*a, **k):
                pause_point(point)
                return inner(*a, **k)

        return original(self, function, *args, **kwargs)

    Dataset.map = pausing_map
    try:
        yield
    finally:
        Dataset.map = original


def _import_axolotl():
    for key, value in AXOLOTL_ENV.items():
        os.environ.setdefault(key, value)
    try:
        from axolotl.cli.config import load_cfg
        from axolotl.common.datasets import load_datasets
        from axolotl.train import train
    except ImportError as exc:
        raise UserError(f"Axolotl is not importable ({exc}); install it with `pip install axolotl`") from None
    return load_cfg, load_datasets, train


def axolotl_keys() -> set[str]:
    """Every key Axolotl's config schema knows (Axolotl itself ignores unknown keys silently)."""
    from axolotl.utils.schemas.config import AxolotlConfigWCapabilities

    keys = set()
    for name, field in AxolotlConfigWCapabilities.model_fields.items():
        keys.add(name)
        if field.alias:
            keys.add(field.alias)
    return keys


def check_unknown_keys(cfg: dict[str, Any]) -> None:
    """A misspelt Axolotl key would be ignored by Axolotl: reject it here with a did-you-mean."""
    known = axolotl_keys()
    for key in cfg:
        if key not in known:
            raise UserError(
                f"unknown key '{key}'{did_you_mean(key, known)}: "
                "neither an Axolotl config key nor `selection`/`output_dir`"
            )


def _error_lines(exc: ValueError) -> list[str]:
    """Axolotl's complaint, one line per problem: every error of a pydantic ValidationError, else the first line."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
            lines.append(f"key '{where}': {err['msg']}{got}")
        return lines
    return [next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)]


def validate_axolotl(cfg: dict[str, Any], cfg_file: Path, log_file: Path | None = None) -> Any:
    """Axolotl's own validation and normalisation of a config, returned (a DictDefault with Axolotl's defaults).

    Its verdict on the config (a ValueError: pydantic's ValidationError or the ValueError its checks raise)
    becomes one line per problem; any other exception is a fault, not a verdict on the recipe, and keeps its
    traceback, with a note naming the log that holds Axolotl's output."""
    log_file = log_file or cfg_file.with_suffix(".log")
    cfg_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cfg_file) as tmp:
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    with our_sigint(), logs_to(log_file, python_streams=False):
        load_cfg, _, _ = _import_axolotl()
    check_unknown_keys(cfg)
    try:
        with our_sigint(), logs_to(log_file), note_log_on_error(log_file):
            return load_cfg(str(cfg_file))
    except ValueError as exc:
        raise UserError(
            "\n".join(f"Axolotl rejected the recipe's Axolotl keys: {line}" for line in _error_lines(exc))
        ) from None


@contextlib.contextmanager
def note_log_on_error(log_file: Path, what: str = "Axolotl's output"):
    """Let an unexpected exception through with its traceback, plus one line naming the log to open.
    UserError (already one line for the user) and Ctrl-C pass unchanged."""
    try:
        yield
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as exc:
        exc.add_note(f"{what} is in {log_file}")
        raise


def round_log(round_dir: Path) -> Path:
    """Where this process's Axolotl output goes: axolotl.log, or axolotl.rank<r>.log on the other ranks under
    torchrun (each rank's file is written by that rank alone)."""
    from .distributed import rank

    r = rank()
    return round_dir / ("axolotl.log" if r == 0 else f"axolotl.rank{r}.log")


def _validate_on_each_rank(cfg: dict[str, Any], round_dir: Path, log_file: Path):
    """Axolotl's normalised config on every rank; only rank 0 writes the round's axolotl.yaml (the others
    validate from a private copy outside the run folder).

    On a CPU under torchrun Axolotl maps the model onto device LOCAL_RANK, which transformers reads as a CUDA
    ordinal; each rank's model belongs on the CPU there."""
    import tempfile

    from . import distributed, models

    if distributed.is_rank0():
        axo_cfg = validate_axolotl(cfg, round_dir / "axolotl.yaml", log_file)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            axo_cfg = validate_axolotl(cfg, Path(tmp) / "axolotl.yaml", log_file)
    if distributed.world_size() > 1 and not models.cuda_available():
        axo_cfg.device_map = {"": "cpu"}
    return axo_cfg


@contextlib.contextmanager
def keep_process_group():
    """Axolotl's train() destroys the torch.distributed process group when it finishes; under torchrun the loop
    still needs it (embedding, selection, barriers), so that call is disabled for the duration of ours."""
    train_module = sys.modules.get("axolotl.train")
    cleanup = getattr(train_module, "cleanup_distributed", None)
    if cleanup is not None:
        train_module.cleanup_distributed = lambda *args, **kwargs: None
    try:
        yield
    finally:
        if cleanup is not None:
            train_module.cleanup_distributed = cleanup


def train_round(cfg: dict[str, Any], round_dir: Path, on_trained=None, description: str = "training") -> TrainResult:
    """Train one adapter; it appears at cfg['output_dir'] only once training has finished (atomic rename).

    `on_trained` runs after Axolotl has written the adapter and before it is renamed into place (a test hook).
    """
    from . import distributed

    final_dir = Path(cfg["output_dir"])
    work_dir = final_dir.with_name(final_dir.name + ".partial")
    distributed.on_rank0(shutil.rmtree, work_dir, ignore_errors=True)
    cfg = {**cfg, "output_dir": str(work_dir)}
    start = time.perf_counter()
    log_file = round_log(round_dir)
    axo_cfg = _validate_on_each_rank(cfg, round_dir, log_file)
    with (
        logs_to(log_file),
        our_sigint(),
        keep_process_group(),
        _pause_in_dataset_preparation(round_dir.name),
        note_log_on_error(log_file),
    ):
        _, load_datasets, train = _import_axolotl()
        # Axolotl creates the LoRA weights before the Trainer seeds anything, from the unseeded global RNG: the
        # same recipe would train different adapters (and so select different rows). Seed everything first.
        from transformers import set_seed

        set_seed(int(axo_cfg.seed))
        from .axolotl_plugin import DESCRIPTION

        DESCRIPTION["text"] = description
        meta = load_datasets(cfg=axo_cfg)
        model, _, trainer = train(cfg=axo_cfg, dataset_meta=meta)
    history = trainer.state.log_history
    steps = int(trainer.state.global_step or 0)  # what ran (Axolotl's total_num_steps is an estimate)
    losses = [h["train_loss"] for h in history if "train_loss" in h] or [h["loss"] for h in history if "loss" in h]
    del model, trainer

    def into_place() -> None:  # rank 0 alone: the other ranks trained the same adapter (DDP) and wait for it
        if not (work_dir / "adapter_config.json").is_file():
            raise RuntimeError(f"Axolotl finished but wrote no adapter in {work_dir}; see {round_dir / 'axolotl.log'}")
        if on_trained is not None:
            on_trained()
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(work_dir, final_dir)

    # Axolotl saves from each node's local main process, not only from global rank 0 (with --nnodes 2 a second
    # rank was still writing into the folder when rank 0 moved it): every rank leaves train() before the move
    distributed.barrier()
    distributed.on_rank0(into_place)
    sequence_len = int(axo_cfg.sequence_len) if axo_cfg.get("sequence_len") else None
    return TrainResult(
        final_dir, float(losses[-1]) if losses else None, steps, time.perf_counter() - start, sequence_len
    )
