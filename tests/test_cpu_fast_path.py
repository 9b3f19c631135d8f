"""The CPU fast path: packing trains every row every epoch, bf16 works on a CPU, and the CPU defaults apply only
where the recipe says nothing."""

from __future__ import annotations

import json

import pytest
from conftest import alpaca_rows

#: Every batch the trainer trained on, as Recorder saw it (input_ids and labels, one list of rows per batch).
SEEN: list[dict] = []
DATASET: list[dict] = []

TINY = {
    "adapter": "lora",
    "lora_r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "lora_target_linear": True,
    "sequence_len": 512,
    "micro_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "learning_rate": 0.001,
    "optimizer": "adamw_torch",
    "lr_scheduler": "constant",
    "train_on_inputs": False,
    # What a CPU needs, spelt out: these tests are about packing and bf16, not about the defaults.
    "lora_mlp_kernel": False,
    "lora_qkv_kernel": False,
    "lora_o_kernel": False,
    "lora_embedding_kernel": False,
    "fp16": False,
    "tf32": False,
    "attn_implementation": "sdpa",
    "dataset_num_proc": 1,
    "dataloader_num_workers": 0,
}


class Recorder:
    """An Axolotl plugin (loaded by its dotted name, like ours) that records each training batch."""

    def __new__(cls, *args, **kwargs):  # subclassing BasePlugin at import time would import Axolotl for every test
        from axolotl.integrations.base import BasePlugin

        class _Recorder(BasePlugin):
            def post_trainer_create(self, cfg, trainer):
                DATASET[:] = [dict(row) for row in trainer.train_dataset]
                step = trainer.training_step

                def recording_step(model, inputs, *args, **kwargs):
                    SEEN.append({key: inputs[key].tolist() for key in ("input_ids", "labels")})
                    return step(model, inputs, *args, **kwargs)

                trainer.training_step = recording_step

        return _Recorder(*args, **kwargs)


def _contains(row: list[int], part: list[int]) -> bool:
    n = len(part)
    return any(row[i : i + n] == part for i in range(len(row) - n + 1))


def _train(tmp_path, model, rows, **keys):
    from diverse_axolotl.training import axolotl_config, train_round

    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = axolotl_config(
        {"base_model": str(model), **TINY, **keys},
        train_file,
        "alpaca",
        tmp_path / "adapter",
        tmp_path / "prepared",
        seed=0,
    )
    return train_round(cfg, tmp_path)


@pytest.mark.slow
def test_packing_trains_every_row_every_epoch(tmp_path, tiny_model):
    """Rows whose lengths leave the last batch of packs partly filled: Axolotl's multipack sampler drops that
    batch (and cuts to an estimated step count); every row's tokens must still reach the trainer, every epoch."""
    SEEN.clear()
    rows = alpaca_rows()[:37]
    epochs = 2
    result = _train(
        tmp_path,
        tiny_model,
        rows,
        sample_packing=True,
        bf16=False,
        num_epochs=epochs,
        plugins=["test_cpu_fast_path.Recorder"],
    )
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert len(DATASET) == len(rows)
    seen_rows = [r for batch in SEEN for r in batch["input_ids"]]
    # Packing happened: some trained row holds more than one dataset row.
    assert len(seen_rows) < len(DATASET) * epochs
    for example in DATASET:
        assert any(_contains(r, example["input_ids"]) for r in seen_rows), "a selected row was never trained"
    # Exactly once per epoch: the trained (label) tokens add up to the dataset's, times the epochs.
    trained_tokens = sum(t != -100 for batch in SEEN for r in batch["labels"] for t in r)
    dataset_tokens = sum(t != -100 for ex in DATASET for t in ex["labels"])
    assert trained_tokens == dataset_tokens * epochs
    assert result.steps == len(SEEN)


@pytest.mark.slow
def test_bf16_trains_on_a_cpu(tmp_path, tiny_model):
    """`bf16: true` on a CPU: transformers refuses it unless the training arguments say use_cpu."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CPU-only check")
    result = _train(tmp_path, tiny_model, alpaca_rows()[:12], num_epochs=1, bf16=True)
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert result.train_loss is not None and result.train_loss == result.train_loss


def test_cpu_defaults_fill_only_what_the_recipe_leaves_out(tmp_path, monkeypatch):
    from diverse_axolotl import models, training

    monkeypatch.setattr(models, "cuda_available", lambda: False)
    monkeypatch.setattr(models, "cpu_bf16_is_faster", lambda threads=None: True)
    args = (tmp_path / "t.jsonl", "alpaca", tmp_path / "a", tmp_path / "p", 0)
    cfg = training.axolotl_config({"base_model": "m", "sequence_len": 64}, *args)
    assert cfg["bf16"] is True and cfg["fp16"] is False and cfg["tf32"] is False
    assert cfg["sample_packing"] is True and cfg["attn_implementation"] == "sdpa"
    assert not any(cfg[k] for k in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel"))
    assert cfg["dataset_num_proc"] == 1 and cfg["dataloader_num_workers"] == 0
    # The recipe's own keys win.
    mine = training.axolotl_config({"base_model": "m", "bf16": False, "sample_packing": False}, *args)
    assert mine["bf16"] is False and mine["sample_packing"] is False
    # A CPU without (fast) bf16 trains in fp32.
    monkeypatch.setattr(models, "cpu_bf16_is_faster", lambda threads=None: False)
    assert training.axolotl_config({"base_model": "m"}, *args)["bf16"] is False
    # On a GPU nothing is added beyond the round's own keys.
    monkeypatch.setattr(models, "cuda_available", lambda: True)
    assert "bf16" not in training.axolotl_config({"base_model": "m"}, *args)


def test_the_bf16_decision_is_made_once_per_machine_and_kept(monkeypatch, tmp_path):
    """Every process of a run, and a resumed run, must pick the same dtype: the measurement is stored, not redone."""
    import json

    from diverse_axolotl import models

    monkeypatch.setenv("DIVERSE_AXOLOTL_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: True)
    speedups = iter([1.3, 0.5])  # a loaded machine could measure anything the second time
    monkeypatch.setattr(models, "_bf16_speedup", lambda threads: next(speedups))
    models.cpu_bf16_is_faster.cache_clear()
    assert models.cpu_bf16_is_faster(2) is True
    models.cpu_bf16_is_faster.cache_clear()  # a new process
    assert models.cpu_bf16_is_faster(2) is True
    stored = json.loads((tmp_path / "cpu-bf16.json").read_text())
    assert [v["bf16"] for v in stored.values()] == [True]
    models.cpu_bf16_is_faster.cache_clear()


def test_an_adapter_is_merged_for_inference_with_the_unmerged_numbers(tmp_path, tiny_model):
    """load_model folds the LoRA product into the base weights (one matmul per layer instead of three): no LoRA
    layer is left, and the logits are peft's unmerged ones in float32."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from diverse_axolotl.models import load_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), config).save_pretrained(tmp_path / "adapter")
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "adapter").eval()
    merged = load_model(tiny_model, tmp_path / "adapter", device="cpu", dtype="float32")
    base = load_model(tiny_model, None, device="cpu", dtype="float32")
    assert not any("lora" in name for name, _ in merged.named_modules())
    ids = torch.randint(0, merged.config.vocab_size, (2, 12))
    with torch.inference_mode():
        want, got, without = (m(input_ids=ids).logits for m in (unmerged, merged, base))
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    assert (without - want).abs().max() > 1e-3  # the adapter changes the numbers, so the match above means something


def test_an_adapter_on_tied_embeddings_is_not_merged(tmp_path, tiny_model):
    """Merging LoRA on lm_head would change the embedding matrix it shares with embed_tokens too: such an adapter
    stays unmerged, with peft's numbers."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from diverse_axolotl.models import load_model

    assert AutoModelForCausalLM.from_pretrained(tiny_model).config.tie_word_embeddings
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), config).save_pretrained(tmp_path / "adapter")
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "adapter").eval()
    loaded = load_model(tiny_model, tmp_path / "adapter", device="cpu", dtype="float32")
    ids = torch.randint(0, unmerged.config.vocab_size, (2, 12))
    with torch.inference_mode():
        assert torch.allclose(loaded(input_ids=ids).logits, unmerged(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
    assert any("lora" in name for name, _ in loaded.named_modules())


def test_omp_num_threads_caps_inference_as_it_caps_training(monkeypatch):
    """A user's OMP_NUM_THREADS holds for embedding, scoring and evaluation too (up to the cores); under torchrun,
    which sets it to 1 itself, each process takes its share of the cores; the thread count is restored after."""
    import torch

    from diverse_axolotl import models

    monkeypatch.setattr(models, "available_cores", lambda: 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert models.cpu_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "64")  # inherited from a bigger machine: never more than the cores
    assert models.cpu_threads() == 8
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert models.cpu_threads() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: its own OMP_NUM_THREADS=1 is no cap; a share each
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert models.cpu_threads() == 4
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    before = torch.get_num_threads()
    with models.all_cpu_threads():
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


def test_a_log_gets_a_progress_line_a_minute_instead_of_a_bar(monkeypatch):
    """Off a terminal (nohup, a log file), a long stage writes `done/total (pct), rate, elapsed, eta` once per
    PLAIN_EVERY_S seconds and a last line when it ends; a stage shorter than that writes nothing."""
    import io

    from rich.console import Console

    from diverse_axolotl import progress

    now = {"t": 0.0}
    monkeypatch.setattr(progress.time, "monotonic", lambda: now["t"])
    out = io.StringIO()
    monkeypatch.setattr(progress, "_console", lambda: Console(file=out))
    with progress.progress_bar("round 1: embedding", total=400, unit="tok") as advance:
        for t in (10.0, 61.0, 90.0, 125.0, 130.0):
            now["t"] = t
            advance(80)
    assert out.getvalue().splitlines() == [
        "round 1: embedding: 160/400 tok (40%), 2.6 tok/s, 1.0 min elapsed, eta 1.5 min",
        "round 1: embedding: 320/400 tok (80%), 2.6 tok/s, 2.1 min elapsed, eta 31 s",
        "round 1: embedding: 400/400 tok (100%), 3.1 tok/s, 2.2 min elapsed",
    ]
    quiet = io.StringIO()
    monkeypatch.setattr(progress, "_console", lambda: Console(file=quiet))
    now["t"] = 0.0
    with progress.progress_bar("short", total=2) as advance:
        for t in (5.0, 9.0):
            now["t"] = t
            advance(1)
    assert quiet.getvalue() == ""
