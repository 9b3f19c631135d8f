"""Our Axolotl plugin: progress bar, every row trained when packing, the CPU's training arguments.

The loop adds `diverse_axolotl.axolotl_plugin.ProgressPlugin` to every round's `plugins`; Axolotl loads it through
its regular plugin mechanism. It
- reports training steps to our progress bar (Axolotl's own output goes to a log file);
- with `sample_packing`, replaces Axolotl's multipack sampler by `CompletePacking`, which puts every row in
  exactly one pack per epoch and yields every pack, and lets the trainer count its steps from it (Axolotl's
  sampler drops the last partial batch of packs, truncates to the shortest of several random packings, and
  Axolotl sets max_steps from an estimate: each of these can leave selected rows untrained);
- on a CPU, passes `use_cpu` to the training arguments (transformers refuses `bf16: true` on a CPU otherwise)
  and trains with every available core (`models.cpu_threads`);
- saves the prepared dataset without datasets' spawned worker process (`save_prepared_without_spawn`).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from axolotl.integrations.base import BasePlugin
from axolotl.utils.samplers.multipack import MultipackBatchSampler, pack_group
from transformers import TrainerCallback

from . import models
from .progress import progress_bar

#: Text shown in front of the bar; the loop sets it before each round ("round 2: training").
DESCRIPTION = {"text": "training"}


class StepProgress(TrainerCallback):
    """One bar per training run: optimizer steps done / max steps, with rate and ETA."""

    def __init__(self):
        self._bar = None
        self._advance = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._bar = progress_bar(DESCRIPTION["text"], total=int(state.max_steps or 0), unit="steps")
        self._advance = self._bar.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        from .faults import pause_point

        pause_point("training-step")  # tests deliver Ctrl-C here, inside Axolotl's training loop
        if self._advance is not None:
            self._advance(1)

    def on_train_end(self, args, state, control, **kwargs):
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = self._advance = None


class CpuThreads(TrainerCallback):
    """Train with `models.cpu_threads()` threads; the process's setting is restored afterwards."""

    def __init__(self):
        self._before = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._before = torch.get_num_threads()
        torch.set_num_threads(models.cpu_threads())

    def on_train_end(self, args, state, control, **kwargs):
        if self._before is not None:
            torch.set_num_threads(self._before)
            self._before = None


class CompletePacking(MultipackBatchSampler):
    """Sample packing that trains every row exactly once per epoch.

    Each epoch takes the base sampler's (random) order, packs the rows first-fit decreasing (longest first; rows
    of equal length in the drawn order) into bins of `batch_max_len` tokens and at most `bin_size` rows, shuffles
    the bins and groups them `batch_size` to a batch; the last batch may hold fewer bins and is kept. First-fit
    decreasing gives the same number of bins for any order of the same lengths, so `len()` is exact for every
    epoch and the trainer's step count (from it) covers every batch.
    """

    _batches: list[list[list[int]]] | None = None

    def generate_batches(self, set_stats: bool = False) -> list[list[list[int]]]:
        if self._batches is not None:
            return self._batches
        indices = np.fromiter(iter(self.sampler), dtype=np.int64)
        lengths = self.lengths[indices]
        order = np.argsort(-lengths, kind="stable")
        capacity = int(self.batch_max_len)
        packed = pack_group(
            lengths[order].astype(np.int64), 0, capacity, len(order), int(self.bin_size or capacity), False
        )
        bins = [[int(indices[order[i]]) for i in members] for members in packed]
        if sum(len(b) for b in bins) != len(indices):  # cannot happen: rows are truncated to sequence_len before
            raise RuntimeError(f"packing placed {sum(len(b) for b in bins)} of {len(indices)} rows")
        rng = np.random.default_rng(indices[: min(len(indices), 64)].tolist() or [0])
        bins = [bins[i] for i in rng.permutation(len(bins))]
        if set_stats:
            self.total_tokens_used += int(lengths.sum())
            self.total_token_slots += len(bins) * capacity
        self._batches = [bins[i : i + self.batch_size] for i in range(0, len(bins), self.batch_size)]
        return self._batches

    def __iter__(self):
        batches = self.generate_batches(set_stats=True)
        self._batches = None  # the next epoch packs a new draw (into as many bins)
        return iter(batches)

    def __len__(self) -> int:
        return len(self.generate_batches())


def use_complete_packing(trainer) -> None:
    """Give the trainer `CompletePacking` (same bins and batch shapes as Axolotl's multipack sampler) and let it
    count its steps from the sampler: epochs x batches, instead of Axolotl's estimate."""
    from axolotl.utils.samplers.utils import get_dataset_lengths

    def create(base_sampler, dataset):
        args = trainer.args
        if args.multipack_real_batches:
            batch_size, batch_max_len = args.per_device_train_batch_size, args.max_seq_length
        else:
            batch_size = 1
            batch_max_len = (trainer.state.train_batch_size or args.per_device_train_batch_size) * args.max_seq_length
        return CompletePacking(
            base_sampler,
            lengths=get_dataset_lengths(dataset),
            batch_max_len=batch_max_len,
            batch_size=batch_size,
            bin_size=args.sample_packing_bin_size,
            drop_last=False,
        )

    trainer._create_multipack_sampler = create


def save_prepared_without_spawn() -> None:
    """Axolotl saves the prepared dataset with `save_to_disk(num_proc=1)` for small sets, and datasets (4.x) runs
    any num_proc >= 1 in a *spawned* worker process: a fresh Python importing torch and datasets, 3-10 s per
    round on a 2-core machine, to write a few kilobytes. num_proc=None writes the same files in-process."""
    import axolotl.utils.data.sft as sft
    from datasets import Dataset

    if getattr(sft.save_preprocessed_dataset, "_diverse_axolotl", False):
        return
    original = sft.save_preprocessed_dataset

    def save(cfg, dataset, dataset_hash, split):
        if isinstance(dataset, Dataset):
            plain = dataset.save_to_disk

            def save_to_disk(path, *args, num_proc=None, **kwargs):
                return plain(path, *args, num_proc=None if num_proc == 1 else num_proc, **kwargs)

            dataset.save_to_disk = save_to_disk
        return original(cfg, dataset, dataset_hash, split)

    setattr(save, "_diverse_axolotl", True)  # noqa: B010 (a marker on a function; mypy knows no such attribute)
    sft.save_preprocessed_dataset = save


class ProgressPlugin(BasePlugin):
    def register(self, cfg):
        save_prepared_without_spawn()

    def get_training_args(self, cfg):
        return {"use_cpu": True} if not models.cuda_available() else {}

    def post_trainer_create(self, cfg, trainer):
        # One process only: with several ranks each must yield as many batches as the others, which is what
        # Axolotl's sampler (truncating to the shortest) is built for.
        if cfg.sample_packing and not cfg.pretraining_dataset and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            use_complete_packing(trainer)
            if not cfg.max_steps:
                trainer.args.max_steps = -1  # epochs x the sampler's exact length

    def add_callbacks_post_trainer(self, cfg, trainer):
        callbacks = [StepProgress()]
        if not models.cuda_available():
            callbacks.append(CpuThreads())
        return callbacks
