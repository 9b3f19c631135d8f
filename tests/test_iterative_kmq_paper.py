"""iterative_kmq against Diversify and Conquer's Eq. 6 and Algorithm 1, on hand-computed cases.

Most cases hand the selector its clustering through `state`, so no k-means run decides the outcome.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from diverse_axolotl.errors import UserError
from diverse_axolotl.selection import get_selector
from diverse_axolotl.selection.iterative_kmq import cluster_weights

ASSIGN = np.repeat([0, 1, 2], 100)  # three clusters of 100 rows: a uniform size prior
TRAINED = np.concatenate([np.arange(0, 10), np.arange(100, 110), np.arange(200, 210)])


def scores_with_means(means, assign=ASSIGN, trained=TRAINED) -> np.ndarray:
    """Per-row scores whose trained rows average `means[c]` in cluster c (spread around the mean)."""
    scores = np.zeros(len(assign))
    for c, m in enumerate(means):
        rows = trained[assign[trained] == c]
        scores[rows] = m + np.linspace(-0.5, 0.5, len(rows))
    return scores


def one_round(means, weights=(1 / 3, 1 / 3, 1 / 3), budget=60, **params):
    emb = np.zeros((len(ASSIGN), 2), dtype=np.float32)
    sel = get_selector("iterative_kmq", **params)
    state = {"assignment": ASSIGN, "weights": list(weights)}
    return sel.select_with_state(emb, budget, TRAINED, scores_with_means(means), seed=0, state=state)


def test_eq6_from_uniform_weights_is_linear_in_the_cluster_means():
    # the size-prior update (first round after clustering), default rule
    w = cluster_weights(ASSIGN, 3, TRAINED, scores_with_means([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(w, [1 / 6, 1 / 3, 1 / 2], rtol=1e-12)
    shifted = cluster_weights(ASSIGN, 3, TRAINED, scores_with_means([101.0, 102.0, 103.0]))
    np.testing.assert_allclose(shifted, np.array([101, 102, 103]) / 306, rtol=1e-12)  # nearly uniform


def test_eq6_quotas_follow_the_weights():
    picks, state = one_round([1.0, 2.0, 3.0])
    np.testing.assert_allclose(state["weights"], [1 / 6, 1 / 3, 1 / 2], rtol=1e-12)
    assert np.bincount(ASSIGN[picks], minlength=3).tolist() == [10, 20, 30]
    assert not np.isin(picks, TRAINED).any()


def test_eq6_compounds_across_rounds():
    _, first = one_round([1.0, 2.0, 3.0])
    _, second = one_round([1.0, 2.0, 3.0], weights=first["weights"])
    # w2 ~ w1 * s = [1/6, 2/3, 3/2] ~ [1, 4, 9]
    np.testing.assert_allclose(second["weights"], np.array([1, 4, 9]) / 14, rtol=1e-12)


def test_eq6_is_not_invariant_to_an_offset_of_the_scores():
    _, state = one_round([101.0, 102.0, 103.0])
    np.testing.assert_allclose(state["weights"], np.array([101, 102, 103]) / 306, rtol=1e-12)
    assert max(state["weights"]) - min(state["weights"]) < 0.01  # nearly uniform
    assert state["shift"] == 0.0


def test_nonpositive_scores_are_shifted_so_the_smallest_is_epsilon():
    _, state = one_round([-1.0, 0.0, 1.0], epsilon=0.01)
    assert state["shift"] == pytest.approx(1.01)
    np.testing.assert_allclose(state["weights"], np.array([0.01, 1.01, 2.01]) / 3.03, rtol=1e-12)
    _, positive = one_round([0.5, 1.0, 2.0], epsilon=0.01)
    assert positive["shift"] == 0.0  # positive scores are used as they are
    np.testing.assert_allclose(positive["weights"], np.array([0.5, 1.0, 2.0]) / 3.5, rtol=1e-12)


def test_a_cluster_without_trained_rows_keeps_its_weight():
    trained = TRAINED[ASSIGN[TRAINED] != 2]
    scores = scores_with_means([1.0, 3.0, 0.0], trained=trained)
    sel = get_selector("iterative_kmq")
    _, state = sel.select_with_state(
        np.zeros((300, 2), "f4"), 30, trained, scores, state={"assignment": ASSIGN, "weights": [0.5, 0.25, 0.25]}
    )
    # clusters 0 and 1 share their 3/4 in ratio 0.5 * 1 : 0.25 * 3
    np.testing.assert_allclose(state["weights"], [0.75 * 0.4, 0.75 * 0.6, 0.25], rtol=1e-12)
    assert state["cluster_scores"][2] is None


def test_the_clustering_is_fixed_once_a_state_exists():
    rng = np.random.default_rng(0)
    other = rng.standard_normal((300, 4)).astype("f4")  # embeddings that would cluster differently
    sel = get_selector("iterative_kmq", n_clusters=3)
    state = {"assignment": ASSIGN, "weights": [1 / 3] * 3}
    scores = scores_with_means([1.0, 1.0, 1.0])
    a, sa = sel.select_with_state(other, 30, TRAINED, scores, seed=5, state=state)
    b, sb = sel.select_with_state(np.zeros((300, 2), "f4"), 30, TRAINED, scores, seed=5, state=state)
    assert a.tolist() == b.tolist()
    assert np.array_equal(sa["assignment"], ASSIGN) and np.array_equal(sb["assignment"], ASSIGN)
    with pytest.raises(UserError, match="300 rows"):
        sel.select_with_state(other[:200], 10, state=state)


def test_the_state_survives_a_json_round_trip_exactly():
    _, first = one_round([1.3, 2.7, 0.4])
    stored = json.loads(json.dumps({k: v for k, v in first.items() if k != "assignment"}))
    stored["assignment"] = first["assignment"]
    again_a, sa = one_round([2.0, 1.0, 5.0], weights=first["weights"])
    again_b, sb = one_round([2.0, 1.0, 5.0], weights=stored["weights"])
    assert again_a.tolist() == again_b.tolist() and sa["weights"] == sb["weights"]


def test_the_first_call_is_a_kmq_draw():
    rng = np.random.default_rng(3)
    emb = np.concatenate([rng.normal(c, 0.1, (n, 4)) for c, n in [(0, 50), (5, 30), (-5, 20)]]).astype("f4")
    picks, state = get_selector("iterative_kmq", n_clusters=3).select_with_state(emb, 17, seed=9)
    assert picks.tolist() == get_selector("kmq", n_clusters=3).select(emb, 17, seed=9).tolist()
    assert np.allclose(sum(state["weights"]), 1.0) and all(s is None for s in state["cluster_scores"])


@pytest.mark.parametrize("update", ["multiplicative", "softmax"])
def test_the_other_rules_stay_available_and_carry_the_weights(update):
    _, first = one_round([1.0, 2.0, 3.0], update=update)
    _, second = one_round([1.0, 2.0, 3.0], weights=first["weights"], update=update)
    assert first["weights"][2] > first["weights"][1] > first["weights"][0]
    assert second["weights"][2] > first["weights"][2]  # compounding
    _, shifted = one_round([101.0, 102.0, 103.0], update=update)
    np.testing.assert_allclose(shifted["weights"], first["weights"], rtol=1e-12)  # offset-invariant, unlike eq6


# -- Eq. 7: the perplexity_gap scorer --------------------------------------------------------------------------
def _answer_nll(model, tok, prompt: str, answer: str) -> float:
    """Mean NLL of the answer tokens (+EOS) given the prompt, from the model's own masked LM loss."""
    import torch

    from diverse_axolotl.scoring.token_stats import encode_pair

    ids, start = encode_pair(tok, prompt, answer, 128)
    labels = torch.tensor([[-100] * start + ids[start:]])
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids]), labels=labels).loss)


def test_perplexity_gap_is_eq7_on_a_plain_forward_pass(tiny_model):
    from conftest import alpaca_rows

    from diverse_axolotl.data import prompt_and_response
    from diverse_axolotl.evaluation import greedy_generate
    from diverse_axolotl.models import load_model, load_tokenizer
    from diverse_axolotl.scoring import get_scorer

    model, tok = load_model(tiny_model, device="cpu"), load_tokenizer(tiny_model)
    rows = alpaca_rows()[:4]
    pairs = [prompt_and_response(r, "alpaca") for r in rows]
    own = greedy_generate(model, tok, [p for p, _ in pairs], [8] * len(rows), 128)
    # Eq. 7: -log(PPL(x + y_gen) / PPL(x + y_gold)) = log PPL(gold) - log PPL(gen), log PPL = mean NLL
    expected = [
        -np.log(np.exp(_answer_nll(model, tok, p, o)) / np.exp(_answer_nll(model, tok, p, g)))
        for (p, g), o in zip(pairs, own, strict=True)
    ]
    scorer = get_scorer("perplexity_gap", max_new_tokens=8)
    got = scorer.score(model, tok, rows, "alpaca", max_length=128)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # the convention: a gold answer the model would give itself scores 0; real gold answers, less likely, score > 0
    same = scorer.score(
        model, tok, [{**r, "output": o} for r, o in zip(rows, own, strict=True)], "alpaca", max_length=128
    )
    np.testing.assert_allclose(same, 0.0, atol=1e-5)
    assert (got > 0).all()
