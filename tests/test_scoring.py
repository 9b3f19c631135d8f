"""Scorers on the tiny model, checked against plain computations with the model's own forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import alpaca_rows

from diverse_axolotl.data import prompt_and_response
from diverse_axolotl.errors import UserError
from diverse_axolotl.models import load_model, load_tokenizer
from diverse_axolotl.scoring import available_scorers, get_scorer
from diverse_axolotl.scoring.token_stats import encode_pair

ROWS = alpaca_rows()[:5]


@pytest.fixture(scope="module")
def model_and_tok(tiny_model):
    return load_model(tiny_model, device="cpu"), load_tokenizer(tiny_model)


def manual_token_probs(model, ids: list[int], start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-vocab probabilities at each response position and the gold response tokens."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.softmax(logits[start - 1 : len(ids) - 1], dim=-1), torch.tensor(ids[start:])


def test_perplexity_is_exp_of_the_masked_lm_loss(model_and_tok):
    model, tok = model_and_tok
    scores = get_scorer("perplexity").score(model, tok, ROWS, "alpaca", max_length=128)
    for row, got in zip(ROWS, scores, strict=True):
        ids, start = encode_pair(tok, *prompt_and_response(row, "alpaca"), 128)
        labels = torch.tensor([[-100] * start + ids[start:]])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ids]), labels=labels).loss
        assert got == pytest.approx(float(torch.exp(loss)), rel=1e-4)


def test_uncertainty_scores_match_the_token_distributions(model_and_tok):
    model, tok = model_and_tok
    names = ("least_confidence_prob", "margin_prob", "entropy")
    got = {name: get_scorer(name).score(model, tok, ROWS, "alpaca", max_length=128) for name in names}
    for i, row in enumerate(ROWS):
        probs, _ = manual_token_probs(model, *encode_pair(tok, *prompt_and_response(row, "alpaca"), 128))
        top = probs.topk(2, dim=-1).values
        assert got["least_confidence_prob"][i] == pytest.approx(float((1 - top[:, 0]).mean()), rel=1e-4)
        assert got["margin_prob"][i] == pytest.approx(float((1 - (top[:, 0] - top[:, 1])).mean()), rel=1e-4)
        assert got["entropy"][i] == pytest.approx(float(-(probs * probs.log()).sum(-1).mean()), rel=1e-4)


def test_ifd_is_the_ratio_of_conditional_to_unconditional_perplexity(model_and_tok):
    model, tok = model_and_tok
    ifd = get_scorer("ifd").score(model, tok, ROWS, "alpaca", max_length=128)
    for row, got in zip(ROWS, ifd, strict=True):
        prompt, response = prompt_and_response(row, "alpaca")
        nll = []
        for p in (prompt, ""):
            probs, target = manual_token_probs(model, *encode_pair(tok, p, response, 128))
            nll.append(float(-probs.gather(1, target[:, None]).log().mean()))
        assert got == pytest.approx(np.exp(nll[0] - nll[1]), rel=1e-3)


def test_an_overlong_prompt_is_cut_from_the_left_and_the_answer_survives(model_and_tok):
    model, tok = model_and_tok
    row = {"instruction": "word " * 400, "input": "", "output": "The answer is short."}
    ids, start = encode_pair(tok, *prompt_and_response(row, "alpaca"), 64)
    assert len(ids) <= 64 and start < len(ids)
    assert tok.decode(ids[start:]).startswith("The answer is short.")
    score = get_scorer("perplexity").score(model, tok, [row], "alpaca", max_length=64)
    assert np.isfinite(score).all()


def test_reward_gap_is_zero_when_the_gold_answer_is_the_models_own(model_and_tok, tiny_model, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from diverse_axolotl.evaluation import greedy_generate

    model, tok = model_and_tok
    config = AutoConfig.from_pretrained(tiny_model, num_labels=1)
    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    prompts = [prompt_and_response(r, "alpaca")[0] for r in ROWS[:3]]
    own = greedy_generate(model, tok, prompts, [8] * len(prompts), 128)
    rows = [{**r, "output": o} for r, o in zip(ROWS[:3], own, strict=True)]
    scorer = get_scorer("reward_gap", reward_model=str(tmp_path / "rm"), max_new_tokens=8)
    same = scorer.score(model, tok, rows, "alpaca", max_length=128)
    assert np.allclose(same, 0.0, atol=1e-5)
    differs = scorer.score(model, tok, ROWS[:3], "alpaca", max_length=128)
    assert np.isfinite(differs).all() and not np.allclose(differs, 0.0)


def test_reward_gap_without_its_model_fails_before_any_work(tmp_path):
    with pytest.raises(UserError, match="not a model folder"):
        get_scorer("reward_gap", reward_model=str(tmp_path / "missing")).check_ready(None)


def test_scorer_registry_lists_and_rejects():
    assert {
        "perplexity",
        "ifd",
        "reward_gap",
        "least_confidence",
        "margin",
        "least_confidence_prob",
        "margin_prob",
        "entropy",
    } <= set(available_scorers())
    with pytest.raises(UserError, match="did you mean 'perplexity'"):
        get_scorer("perplexty")
    with pytest.raises(UserError, match="no parameter 'batch_tokns'"):
        get_scorer("perplexity", batch_tokns=3)
