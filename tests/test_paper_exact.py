"""Selectors and scorers against independent reference computations and the papers' definitions (issue 11).

Each reference here is written from the definition, in float64, with no code shared with the package.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from diverse_axolotl.errors import UserError
from diverse_axolotl.selection import get_selector


# -- 1. k-center is exact farthest-first ---------------------------------------------------------------------
def exhaustive_farthest_first(x: np.ndarray, budget: int) -> np.ndarray:
    """Farthest-first in float64 with distances taken as norms of differences: first the row farthest from the
    pool mean, then each time the row whose distance to its nearest picked row is largest (ties: lowest id)."""
    x = np.asarray(x, dtype=np.float64)
    nearest = np.sqrt(((x - x.mean(0)) ** 2).sum(1))
    first = int(np.argmax(nearest))
    picks = [first]
    nearest = np.sqrt(((x - x[first]) ** 2).sum(1))
    nearest[first] = -np.inf
    for _ in range(budget - 1):
        j = int(np.argmax(nearest))
        picks.append(j)
        nearest = np.minimum(nearest, np.sqrt(((x - x[j]) ** 2).sum(1)))
        nearest[picks] = -np.inf
    return np.asarray(picks)


def shared_component_pool(seed: int, n: int = 400, d: int = 64) -> np.ndarray:
    """Rows with a large common component (the issue's reproducer), like mean-pooled LLM hidden states."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * 0.5 + rng.standard_normal(d) * 50).astype("f4")


def test_kcenter_reproducer_pick_32_is_row_316():
    x = shared_component_pool(200)
    picks = get_selector("kcenter", device="cpu", normalize=False, outlier_fraction=0).select(x, 50)
    assert picks[32] == 316
    np.testing.assert_array_equal(picks, exhaustive_farthest_first(x, 50))


@pytest.mark.parametrize("seed", range(201, 211))
def test_kcenter_float32_equals_float64_farthest_first_with_a_shared_component(seed):
    x = shared_component_pool(seed)
    np.testing.assert_array_equal(
        get_selector("kcenter", device="cpu", normalize=False, outlier_fraction=0).select(x, 50),
        exhaustive_farthest_first(x, 50),
    )


def test_kcenter_bfloat16_keeps_95_percent_of_exact_picks_at_median_cosine_0_8():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1500, 256)) + 2.0 * rng.standard_normal(256)).astype("f4")
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert 0.75 < np.median(unit[:300] @ unit[:300].T) < 0.85
    picks = get_selector("kcenter", device="cpu", dtype="bfloat16", normalize=False, outlier_fraction=0).select(x, 100)
    assert len(np.intersect1d(picks, exhaustive_farthest_first(x, 100))) >= 95


def test_kcenter_with_already_selected_equals_the_reference_continuation():
    x = shared_component_pool(7)
    ref = exhaustive_farthest_first(x, 40)
    picks = get_selector("kcenter", device="cpu", chunk_rows=64, normalize=False, outlier_fraction=0).select(
        x, 30, already_selected=ref[:10]
    )
    np.testing.assert_array_equal(picks, ref[10:])


# -- 2. kMQ quotas are water-filled -----------------------------------------------------------------------------
def capped_proportional_shares(sizes, budget, available) -> np.ndarray:
    """Real-valued water-filling: min(available, lam * size) summing to the budget, lam found by bisection.
    When the clusters with size > 0 cannot take the whole budget they are filled and the zero-size clusters share
    the rest in proportion to their available rows."""
    sizes, available = np.asarray(sizes, np.float64), np.asarray(available, np.float64)
    positive = sizes > 0
    if available[positive].sum() <= budget:
        rest = budget - available[positive].sum()
        out = np.where(positive, available, 0.0)
        free = np.where(positive, 0.0, available)
        return out + (free / free.sum() * rest if free.sum() else 0.0)
    lo, hi = 0.0, float(available.max() / sizes[positive].min()) + 1.0
    for _ in range(200):
        lam = (lo + hi) / 2
        if np.minimum(available, lam * sizes).sum() < budget:
            lo = lam
        else:
            hi = lam
    return np.minimum(available, hi * sizes)


def test_proportional_quotas_issue_case():
    from diverse_axolotl.selection.kmq import proportional_quotas

    np.testing.assert_array_equal(proportional_quotas(np.array([3, 3, 3]), 5, np.array([1, 3, 3])), [1, 2, 2])


def test_proportional_quotas_are_within_one_row_of_the_water_filled_share():
    from diverse_axolotl.selection.kmq import proportional_quotas

    rng = np.random.default_rng(1)
    for _ in range(3000):
        k = int(rng.integers(1, 12))
        sizes = rng.integers(0, 60, k)
        available = np.minimum(sizes, rng.integers(0, 60, k)) if rng.random() < 0.8 else rng.integers(0, 60, k)
        if available.sum() == 0:
            continue
        budget = int(rng.integers(0, available.sum() + 1))
        q = proportional_quotas(sizes, budget, available)
        share = capped_proportional_shares(sizes, budget, available)
        assert q.sum() == budget and (q >= 0).all() and (q <= available).all()
        assert np.abs(q - share).max() < 1 + 1e-9, (sizes, budget, available, q, share)


# -- 4. DiverseEvol's uncertainty baselines ---------------------------------------------------------------------
def test_logit_uncertainty_ranks_the_issue_example_as_diverseevol_does():
    from diverse_axolotl.scoring.token_stats import logit_stats

    confident_in_probability = torch.tensor([[10.0, 9.9, 0.0]])
    low_logits = torch.tensor([[2.0, -5.0, -5.0]])
    max_a, margin_a = logit_stats(confident_in_probability)
    max_b, margin_b = logit_stats(low_logits)
    assert (max_a, max_b) == pytest.approx((10.0, 2.0))
    assert (margin_a, margin_b) == pytest.approx((0.1, 7.0), rel=1e-5)
    # lower is more uncertain: least confidence takes the second row, margin the first
    scores = np.array([max_a, max_b])
    assert get_selector("least_confidence").select(None, 1, scores=scores, n_rows=2).tolist() == [1]
    assert get_selector("margin").select(None, 1, scores=np.array([margin_a, margin_b]), n_rows=2).tolist() == [0]


def test_uncertainty_selectors_take_the_lowest_logit_scores_and_prob_variants_the_highest():
    scores = np.array([3.0, 1.0, 2.0, 0.5, 5.0])
    assert get_selector("least_confidence").select(None, 2, scores=scores, already_selected=[3], n_rows=5).tolist() == [
        1,
        2,
    ]
    assert get_selector("margin").select(None, 2, scores=scores, n_rows=5).tolist() == [3, 1]
    assert get_selector("least_confidence_prob").select(None, 2, scores=scores, n_rows=5).tolist() == [4, 0]
    assert get_selector("margin_prob").select(None, 2, scores=scores, n_rows=5).tolist() == [4, 0]


@pytest.fixture(scope="module")
def model_and_tok(tiny_model):
    from diverse_axolotl.models import load_model, load_tokenizer

    return load_model(tiny_model, device="cpu"), load_tokenizer(tiny_model)


def full_forward_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].double()


def test_least_confidence_and_margin_are_mean_raw_logit_stats_over_every_position(model_and_tok):
    from conftest import alpaca_rows

    from diverse_axolotl.data import prompt_and_response
    from diverse_axolotl.scoring import get_scorer
    from diverse_axolotl.scoring.token_stats import encode_pair

    model, tok = model_and_tok
    rows = alpaca_rows()[:4]
    lc = get_scorer("least_confidence").score(model, tok, rows, "alpaca", max_length=128)
    mg = get_scorer("margin").score(model, tok, rows, "alpaca", max_length=128)
    lc_prob = get_scorer("least_confidence_prob").score(model, tok, rows, "alpaca", max_length=128)
    mg_prob = get_scorer("margin_prob").score(model, tok, rows, "alpaca", max_length=128)
    for i, row in enumerate(rows):
        ids, start = encode_pair(tok, *prompt_and_response(row, "alpaca"), 128)
        logits = full_forward_logits(model, ids)
        top = logits.topk(2, dim=-1).values
        assert lc[i] == pytest.approx(float(top[:, 0].mean()), rel=1e-4)
        assert mg[i] == pytest.approx(float((top[:, 0] - top[:, 1]).mean()), rel=1e-4)
        probs = torch.softmax(logits[start - 1 : len(ids) - 1], -1).topk(2, dim=-1).values
        assert lc_prob[i] == pytest.approx(float((1 - probs[:, 0]).mean()), rel=1e-4)
        assert mg_prob[i] == pytest.approx(float((1 - (probs[:, 0] - probs[:, 1])).mean()), rel=1e-4)


# -- 5. tokenizers without a BOS token -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def no_bos_model(tiny_model, tmp_path_factory):
    """The tiny model with its tokenizer's BOS token removed (as Qwen2 ships: `bos_token: null`)."""
    from diverse_axolotl.models import load_model, load_tokenizer

    folder = tmp_path_factory.mktemp("no-bos") / "model"
    shutil.copytree(tiny_model, folder)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if path.is_file():
            cfg = json.loads(path.read_text())
            cfg.pop("bos_token", None)
            if name == "tokenizer_config.json":
                cfg["bos_token"] = None
            path.write_text(json.dumps(cfg))
    config = json.loads((folder / "config.json").read_text())
    config["bos_token_id"] = None
    (folder / "config.json").write_text(json.dumps(config))
    tok = load_tokenizer(folder)
    assert tok.bos_token_id is None
    return load_model(folder, device="cpu"), tok


def test_a_promptless_pair_keeps_every_response_token_without_bos(no_bos_model):
    from diverse_axolotl.scoring.token_stats import encode_pair

    _, tok = no_bos_model
    ids, start = encode_pair(tok, "", "The answer is short.", 64)
    assert start >= 1
    assert tok.decode(ids[start:], skip_special_tokens=True) == "The answer is short."
    assert ids[start:] == tok("The answer is short.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_scorers_are_correct_without_bos(no_bos_model):
    from diverse_axolotl.scoring import get_scorer
    from diverse_axolotl.scoring.token_stats import encode_pair

    model, tok = no_bos_model
    texts = ["A short completion about cats.", "Another row, with a comma and more words in it."]
    rows = [{"text": t} for t in texts]
    got = {
        name: get_scorer(name).score(model, tok, rows, "completion", max_length=64)
        for name in ("perplexity", "entropy", "least_confidence", "margin", "least_confidence_prob", "margin_prob")
    }
    for i, text in enumerate(texts):
        ids, start = encode_pair(tok, "", text, 64)
        logits = full_forward_logits(model, ids)
        logp = torch.log_softmax(logits[start - 1 : len(ids) - 1], -1)
        nll = float(-logp.gather(1, torch.tensor(ids[start:])[:, None]).mean())
        assert got["perplexity"][i] == pytest.approx(np.exp(nll), rel=1e-4)
        assert got["entropy"][i] == pytest.approx(float(-(logp.exp() * logp).sum(-1).mean()), rel=1e-4)
        top = logits.topk(2, dim=-1).values
        assert got["least_confidence"][i] == pytest.approx(float(top[:, 0].mean()), rel=1e-4)
        assert got["margin"][i] == pytest.approx(float((top[:, 0] - top[:, 1]).mean()), rel=1e-4)
        assert np.isfinite(got["least_confidence_prob"][i]) and np.isfinite(got["margin_prob"][i])


def test_ifd_is_correct_without_bos(no_bos_model):
    from conftest import alpaca_rows

    from diverse_axolotl.data import prompt_and_response
    from diverse_axolotl.scoring import get_scorer
    from diverse_axolotl.scoring.token_stats import encode_pair

    model, tok = no_bos_model
    rows = alpaca_rows()[:3]
    ifd = get_scorer("ifd").score(model, tok, rows, "alpaca", max_length=128)
    for row, got in zip(rows, ifd, strict=True):
        prompt, response = prompt_and_response(row, "alpaca")
        nll = []
        for p in (prompt, ""):
            ids, start = encode_pair(tok, p, response, 128)
            logp = torch.log_softmax(full_forward_logits(model, ids)[start - 1 : len(ids) - 1], -1)
            nll.append(float(-logp.gather(1, torch.tensor(ids[start:])[:, None]).mean()))
        assert got == pytest.approx(np.exp(nll[0] - nll[1]), rel=1e-3)


# -- 6. already_selected and zero vectors -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, message",
    [
        ([1.7, 2.2], "integer row ids"),
        (np.array([1.0, 2.0]), "integer row ids"),
        (np.array([True, False, True, False, False]), "boolean mask"),
        ([False, True, False, False, False], "boolean mask"),
    ],
)
def test_already_selected_must_hold_integer_ids(bad, message):
    x = np.random.default_rng(0).standard_normal((5, 3))
    with pytest.raises(UserError, match=message):
        get_selector("random").select(x, 1, already_selected=bad)


def test_already_selected_accepts_empty_and_integer_ids():
    x = np.random.default_rng(0).standard_normal((5, 3))
    assert len(get_selector("random").select(x, 2, already_selected=[])) == 2
    assert not np.isin(get_selector("random").select(x, 2, already_selected=np.array([0, 3])), [0, 3]).any()


def test_deita_keeps_at_most_one_zero_row():
    x = np.zeros((6, 4), np.float32)
    x[3], x[5] = [1, 0, 0, 0], [0, 1, 0, 0]
    picks = get_selector("deita", threshold=0.9, device="cpu").select(x, 3)
    assert picks.tolist() == [0, 3, 5]  # rows 1, 2, 4 are zero like row 0: identical to it
    with pytest.raises(UserError):
        get_selector("deita", threshold=0.9, device="cpu").select(x, 4)


def test_qdit_zero_rows_are_similar_only_to_each_other():
    from diverse_axolotl.selection.qdit import similarity_vectors

    x = np.array([[0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 2, 0], [1, 1, 0]], np.float32)
    v = similarity_vectors(x, torch.device("cpu")).double().numpy()
    sim = v @ v.T
    unit = x[2:] / np.linalg.norm(x[2:], axis=1, keepdims=True)
    expected = np.zeros((5, 5))
    expected[:2, :2] = 1.0
    expected[2:, 2:] = (unit @ unit.T + 1) / 2
    np.testing.assert_allclose(sim, expected, atol=1e-6)


def test_qdit_picks_one_zero_row_for_a_group_of_them():
    x = np.zeros((8, 3), np.float32)
    x[4:] = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    picks = get_selector("qdit", alpha=0.0, device="cpu").select(x, 4)
    assert sorted(picks.tolist()) == [0, 4, 5, 6]  # the four zero rows are covered by one of them


# -- 7. k-means finds obvious clusters --------------------------------------------------------------------------
def unequal_blobs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = np.array([0.0, 50.0, -50.0])
    label = np.repeat([0, 1, 2], [500, 300, 200])
    x = (centres[label][:, None] + 0.1 * rng.standard_normal((1000, 8))).astype("f4")
    return x, label


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return len(np.unique(np.stack([a, b]), axis=1).T) == len(np.unique(a)) == len(np.unique(b))


def test_kmeans_finds_three_unequal_blobs_and_reports_its_objective():
    from diverse_axolotl.selection.kmeans import kmeans

    x, label = unequal_blobs()
    x64 = x.astype(np.float64)
    within = sum(((x64[label == c] - x64[label == c].mean(0)) ** 2).sum() for c in range(3))
    for seed in range(5):
        result = kmeans(x, 3, seed)
        assert same_partition(result.assignment, label)
        residual = x64 - result.centroids[result.assignment].astype(np.float64)
        assert result.objective == pytest.approx((residual**2).sum(), rel=1e-9)
        assert result.objective == pytest.approx(within, rel=1e-2)  # faiss's float32 centroids sit ~0.005 off the means


def test_kmq_splits_a_budget_of_100_as_50_30_20_over_the_blobs():
    x, label = unequal_blobs()
    sel = get_selector("kmq", n_clusters=3)
    picks = sel.select(x, 100, seed=0)
    np.testing.assert_array_equal(np.bincount(label[picks], minlength=3), [50, 30, 20])
    assert sel.last_info["kmeans"]["objective"] > 0


def test_kmeans_plus_plus_seeds_are_pool_rows_and_seeded():
    from diverse_axolotl.selection.kmeans import kmeans_plus_plus

    x, label = unequal_blobs()
    seeds = kmeans_plus_plus(x, 3, np.random.default_rng(4))
    assert len(set(label[seeds])) == 3  # far-apart blobs: one seed in each, with overwhelming probability
    np.testing.assert_array_equal(seeds, kmeans_plus_plus(x, 3, np.random.default_rng(4)))
