"""`diverse-axolotl init`: the starter recipe and pool ship with the package and run as they are."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import alpaca_rows

from diverse_axolotl.cli import main


def test_init_writes_a_recipe_that_validates_and_refuses_to_overwrite(tmp_path, tiny_model):
    folder = tmp_path / "proj"
    result = CliRunner().invoke(main, ["init", str(folder), "--model", str(tiny_model)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "pool.json", "recipe.yaml"]
    assert json.loads((folder / "pool.json").read_text()) == alpaca_rows()
    assert (
        "CC BY-NC 4.0" in (folder / "README.md").read_text() and "CC BY-NC 4.0" in (folder / "recipe.yaml").read_text()
    )
    checked = CliRunner().invoke(main, ["validate", str(folder / "recipe.yaml"), "--skip-axolotl"])
    assert checked.exit_code == 0, checked.output
    assert "180 rows" in checked.output and "held-out  20 rows" in checked.output
    again = CliRunner().invoke(main, ["init", str(folder)])
    assert again.exit_code == 1 and "already holds recipe.yaml" in again.output
    assert CliRunner().invoke(main, ["init", str(folder), "--force"]).exit_code == 0
    default = (folder / "recipe.yaml").read_text()
    assert "base_model: models/SmolLM2-135M-Instruct" in default and "prepare-model" in default


@pytest.mark.slow
def test_the_starter_recipe_runs_as_written(tmp_path, tiny_model):
    folder = tmp_path / "proj"
    assert CliRunner().invoke(main, ["init", str(folder), "--model", str(tiny_model)]).exit_code == 0
    result = CliRunner().invoke(main, ["run", str(folder / "recipe.yaml")])
    assert result.exit_code == 0, result.output
    summary = json.loads((folder / "run" / "summary.json").read_text())
    assert [row["rows"] for row in summary] == [16, 32, 48]
    assert all("heldout_loss" in row["metrics"] for row in summary)
