"""`diverse-axolotl init`: a commented recipe, a small pool and a README that run as they are.

The files ship inside the package (`starter/`, read with importlib.resources), so a user who installed the wheel
has them without this repository. The pool is 200 Stanford Alpaca rows (CC BY-NC 4.0, said in the README and the
recipe). Only `base_model` is filled in: the default model folder is made by `diverse-axolotl prepare-model`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .data import atomic_path
from .errors import UserError

STARTER_FILES = {"recipe.yaml": "recipe.yaml", "pool.json": "pool.json", "README.md": "README.md"}
DEFAULT_MODEL = "models/SmolLM2-135M-Instruct"
_MODEL_LINE = "base_model: models/SmolLM2-135M-Instruct   # BASE_MODEL_NOTE"


def starter_text(name: str) -> str:
    """One shipped starter file's text."""
    return (resources.files("diverse_axolotl") / "starter" / name).read_text(encoding="utf-8")


def recipe_text(model: str | None) -> str:
    """The starter recipe with `base_model` set: the given folder (absolute), or the default with how to make it."""
    text = starter_text("recipe.yaml")
    if _MODEL_LINE not in text:  # the shipped template and this module change together
        raise RuntimeError("starter/recipe.yaml lost its base_model line")
    if model is None:
        line = (
            f"base_model: {DEFAULT_MODEL}   # make it here with `diverse-axolotl prepare-model`"
            " (or `init --model FOLDER`)"
        )
    else:
        line = f"base_model: {Path(model).expanduser().resolve()}   # a local Hugging Face model folder"
    return text.replace(_MODEL_LINE, line)


def write_starter(folder: Path, model: str | None = None, force: bool = False) -> list[Path]:
    """Write recipe.yaml, pool.json and README.md into `folder` (made if missing); existing ones only with `force`."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file, not a folder")
    targets = [folder / name for name in STARTER_FILES]
    present = [p.name for p in targets if p.exists()]
    if present and not force:
        raise UserError(
            f"{folder} already holds {', '.join(present)}; use --force to overwrite, or name another folder"
        )
    for target, source in zip(targets, STARTER_FILES.values(), strict=True):
        text = recipe_text(model) if source == "recipe.yaml" else starter_text(source)
        with atomic_path(target) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return targets
