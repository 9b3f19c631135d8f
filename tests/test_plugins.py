"""A third-party selector, installed as a real package with an entry point, behaves like a built-in."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from diverse_axolotl.errors import UserError
from diverse_axolotl.selection import available_selectors, get_selector

PLUGIN = '''
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from diverse_axolotl.selection import Selector


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reverse: bool = Field(False, description="take the highest ids first")


class FirstRows(Selector):
    name = "first_rows"
    description = "the lowest unselected ids (a test plugin)"
    Params = Params
    needs_embeddings = False

    def _select(self, embeddings, budget, already_selected, scores, seed):
        n = embeddings if isinstance(embeddings, int) else len(embeddings)
        free = np.setdiff1d(np.arange(n), already_selected)
        return (free[::-1] if self.params.reverse else free)[:budget]


from diverse_axolotl.scoring import Scorer


class RowLength(Scorer):
    name = "row_length"
    description = "characters in the row's output (a test plugin)"

    def score(self, model, tokenizer, rows, fmt, max_length=512, desc="scoring"):
        return np.array([len(r["output"]) for r in rows], dtype=np.float32)
'''


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    src = tmp_path_factory.mktemp("plugin-src")
    (src / "first_rows_plugin").mkdir()
    (src / "first_rows_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (src / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "first-rows-plugin"
        version = "0.1"
        [project.entry-points."diverse_axolotl.selectors"]
        first_rows = "first_rows_plugin:FirstRows"
        [project.entry-points."diverse_axolotl.scorers"]
        row_length = "first_rows_plugin:RowLength"
        [tool.setuptools]
        packages = ["first_rows_plugin"]
    '''))
    target = tmp_path_factory.mktemp("plugin-site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
    )
    sys.path.insert(0, str(target))
    yield
    sys.path.remove(str(target))


def test_an_installed_plugin_is_listed_and_selects(installed_plugin):
    assert "first_rows" in available_selectors()
    picks = get_selector("first_rows").select(np.zeros((10, 3)), 3, already_selected=[0, 2])
    assert picks.tolist() == [1, 3, 4]
    assert get_selector("first_rows", reverse=True).select(np.zeros((10, 3)), 2).tolist() == [9, 8]


def test_a_plugin_gets_the_same_parameter_and_input_checks(installed_plugin):
    with pytest.raises(UserError, match="no parameter 'revers'.*did you mean 'reverse'"):
        get_selector("first_rows", revers=True)
    with pytest.raises(UserError, match="larger than"):
        get_selector("first_rows").select(np.zeros((4, 3)), 5)


def test_the_cli_lists_the_plugin(installed_plugin):
    from click.testing import CliRunner

    from diverse_axolotl.cli import main

    out = CliRunner().invoke(main, ["selectors"]).output
    assert "first_rows" in out and "reverse" in out


def test_an_installed_scorer_plugin_is_found_and_scores(installed_plugin):
    from diverse_axolotl.scoring import available_scorers, get_scorer

    assert "row_length" in available_scorers()
    scores = get_scorer("row_length").score(None, None, [{"output": "ab"}, {"output": "abcd"}], "alpaca")
    assert scores.tolist() == [2.0, 4.0]
    with pytest.raises(UserError, match="unknown scorer 'row_lenght'.*did you mean 'row_length'"):
        get_scorer("row_lenght")


def test_a_name_registered_twice_is_an_error():
    from diverse_axolotl.registry import Registry
    from diverse_axolotl.scoring import SCORERS, Scorer, available_scorers, register_scorer

    existing = available_scorers()["perplexity_gap"]
    clash = type("Clash", (Scorer,), {"name": "perplexity_gap"})
    with pytest.raises(ValueError, match="scorer 'perplexity_gap' is registered twice"):
        register_scorer(clash)
    assert SCORERS.get("perplexity_gap") is existing  # the first registration stands

    fresh = Registry("scorer", Scorer, "no.such.group")
    with pytest.raises(ValueError, match="not a Scorer subclass"):
        fresh.register(type("NotAScorer", (), {"name": "x"}))
    fresh.register("lazy", "diverse_axolotl.scoring.perplexity_gap:PerplexityGapScorer")
    assert fresh.get("lazy").__name__ == "PerplexityGapScorer"  # a "module:Class" entry loads on first use
