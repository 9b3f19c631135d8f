"""k-center's two levers against outlier hunting (issue 17's ablation), each against an exhaustive float64 reference:
cosine k-center (`normalize`) and k-center with outliers (`outlier_fraction`)."""

from __future__ import annotations

import numpy as np
import pytest

from diverse_axolotl.selection import get_selector
from diverse_axolotl.selection.kcenter import isolation, most_isolated


def reference_farthest_first(x: np.ndarray, budget: int, candidates: np.ndarray, selected=(), start=None) -> list[int]:
    """Exhaustive float64 farthest-first over `candidates`: distances to the `selected` rows, or with none selected,
    the first pick is the candidate farthest from `start` (which is not a selected row); ties: lowest id."""
    x = x.astype(np.float64)
    full = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    nearest = full[list(selected)].min(0) if len(selected) else np.sqrt(((x - start) ** 2).sum(1))
    picks: list[int] = []
    for i in range(budget):
        masked = np.where(candidates, nearest, -np.inf)
        masked[picks] = -np.inf
        pick = int(np.flatnonzero(masked == masked.max())[0])
        picks.append(pick)
        nearest = full[pick] if (i == 0 and not len(selected)) else np.minimum(nearest, full[pick])
    return picks


def unit_rows(x: np.ndarray) -> np.ndarray:
    c = x.astype(np.float64) - x.astype(np.float64).mean(0)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cosine_kcenter_is_farthest_first_on_centred_unit_rows(seed):
    rng = np.random.default_rng(seed)
    # rows of very different lengths: plain k-center picks the long ones, cosine k-center must not care
    x = (rng.normal(size=(240, 12)) * rng.uniform(0.1, 10.0, size=(240, 1)) + 3.0).astype(np.float32)
    u = unit_rows(x)
    want = reference_farthest_first(u, 30, np.ones(len(x), bool), start=u.mean(0))
    got = get_selector("kcenter", device="cpu", normalize=True).select(x, 30)
    assert got.tolist() == want
    assert get_selector("kcenter", device="cpu").select(x, 30).tolist() == want  # cosine is the default
    plain = get_selector("kcenter", device="cpu", normalize=False).select(x, 30)
    assert plain.tolist() != got.tolist()


def test_isolation_is_the_kth_neighbour_distance():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(150, 6)).astype(np.float32)
    d = np.sqrt(((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    want = np.sort(d, axis=1)[:, 4]  # the 5th nearest other row (the sample is the whole pool below 4,096 rows)
    np.testing.assert_allclose(isolation(x, 5, seed=0), want, rtol=1e-9, atol=1e-9)


def test_kcenter_with_outliers_never_picks_the_most_isolated_rows():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 8))
    x[:10] = 60.0 * np.concatenate(
        [np.eye(8)[:5], -np.eye(8)[:5]]
    )  # ten far-flung rows: plain k-center takes them first
    x = x.astype(np.float32)
    plain = get_selector("kcenter", device="cpu", normalize=False).select(x, 10)
    assert set(plain.tolist()) == set(range(10))
    sel = get_selector("kcenter", device="cpu", outlier_fraction=0.05, outlier_neighbours=3, normalize=False)
    picks = sel.select(x, 40, already_selected=[50])
    skipped = most_isolated(x, 0.05, 3, [50], 0, False)
    assert set(range(10)) <= set(skipped.tolist()) and len(skipped) == 10
    assert sel.last_info == {"outliers_skipped": 10}
    candidates = np.ones(len(x), bool)
    candidates[skipped] = False
    candidates[50] = False
    want = reference_farthest_first(x, 40, candidates, selected=[50])
    assert picks.tolist() == want


def test_outliers_never_make_the_budget_impossible():
    x = np.random.default_rng(5).normal(size=(20, 4)).astype(np.float32)
    picks = get_selector("kcenter", device="cpu", outlier_fraction=0.5).select(x, 18)
    assert len(set(picks.tolist())) == 18


def test_bad_lever_values_are_refused():
    with pytest.raises(Exception, match="outlier_fraction"):
        get_selector("kcenter", outlier_fraction=1.5)
