"""Shared fixtures: a tiny random Llama with a locally trained tokenizer, and small pools (no downloads)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

for _key, _value in {
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _private_embedding_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own embedding cache (never the user's ~/.cache)."""
    monkeypatch.setenv("DIVERSE_AXOLOTL_CACHE", str(tmp_path_factory.mktemp("cache")))
SHARED_POOL = ROOT.parent / "shared" / "data" / "pools" / "alpaca" / "alpaca_5000.json"
FIXTURE_POOL = ROOT / "tests" / "data" / "alpaca_200.json"
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}"
)


def alpaca_rows() -> list[dict]:
    """200 real Alpaca rows shipped with the tests (a slice of ../shared/data/pools/alpaca/alpaca_5000.json)."""
    return json.loads(FIXTURE_POOL.read_text())


def build_tiny_model(folder: Path, hidden: int = 32, layers: int = 2) -> Path:
    """A random Llama (hidden 32, 2 layers) and a byte-level BPE tokenizer trained on the fixture pool."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    import torch

    texts = [f"{r['instruction']} {r['input']} {r['output']}" for r in alpaca_rows()]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<pad>", unk_token=None
    )
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def pool_file(tmp_path) -> Path:
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(alpaca_rows()[:60]))
    return path
