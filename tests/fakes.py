"""Fake run folders for report tests: the files a finished run leaves, with made-up numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def fake_run(path: Path, selector: str, seed: int, offset: float, rng) -> Path:
    """A finished 3-round run over a 40-row pool, with evals and embeddings in rounds 0 and 1."""
    path.mkdir(parents=True)
    (path / "run.json").write_text(
        json.dumps({"recipe": {"selection": {"selector": {"name": selector}, "seed": seed}}})
    )
    picks = [int(i) for i in rng.permutation(40)[:24]]
    summary = []
    for k in range(3):
        d = path / f"round_{k}"
        d.mkdir()
        n = 8 * (k + 1)
        (d / "manifest.json").write_text(
            json.dumps({"round": k, "indices": picks[:n], "entered_round": [i // 8 for i in range(n)]})
        )
        if k < 2:
            np.save(d / "embeddings.npy", rng.standard_normal((40, 6)).astype(np.float32))
        (d / "eval.json").write_text(
            json.dumps(
                {
                    "lm_eval": {"results": {"da_arc_easy": {"acc,none": 0.3 + 0.05 * k + offset}}},
                    "ours": {"heldout_loss": {"value": 3.0 - 0.2 * k - offset}},
                    "meta": {"tasks": ["da_arc_easy", "heldout_loss"]},
                }
            )
        )
        summary.append(
            {
                "round": k,
                "rows": n,
                "train_loss": 2.0 - 0.1 * k,
                "train_s": 10.0,
                "embed_s": 2.0,
                "score_s": 0.0,
                "select_s": 0.5,
                "round_s": 13.0,
            }
        )
    (path / "summary.json").write_text(json.dumps(summary))
    return path
