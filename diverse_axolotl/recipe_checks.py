"""Checks of a loaded recipe that need more than types: the selector and scorer fit together, the files and
folders it names exist, and the run folder can hold a run without putting the recipe's inputs at risk.

They take a `recipe.Recipe` (not imported here: `recipe.load_recipe` calls them).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError


def check_recipe(recipe) -> None:
    """Selector and scorer fit together and the scorer's files exist; the pool and the model folder exist."""
    sel = recipe.selection
    selector = sel.selector.component
    if sel.scorer is None and selector.scores == "required" and selector.default_scorer is None:
        raise UserError(f"{recipe.path}: selection.scorer: selector '{selector.name}' needs scores; name a scorer")
    if sel.scorer is not None:
        try:
            sel.scorer.build().check_ready(recipe)
        except UserError as exc:
            raise UserError(f"{recipe.path}: selection.scorer: {exc}") from None
        if selector.scores == "none":
            raise UserError(
                f"{recipe.path}: selection.scorer: selector '{selector.name}' does not use scores; remove the scorer"
            )
    from .pools import pool_sources

    try:
        pool_sources(sel.pool.path, sel.pool.data_files)
    except UserError as exc:
        raise UserError(f"{recipe.path}: selection.pool.path: {exc}") from None
    check_model_folder(recipe)


def check_model_folder(recipe) -> None:
    """base_model is a local Hugging Face model folder with a tokenizer (models are never downloaded)."""
    base_model = recipe.base_model
    if not Path(base_model).is_absolute():  # not resolved by load_recipe: no such folder next to the recipe
        raise UserError(
            f"{recipe.path}: base_model: no local model folder '{base_model}' (looked in {recipe.path.parent});"
            " models are never downloaded: set base_model to a folder holding config.json and the tokenizer"
            " (for the demo model run `diverse-axolotl prepare-model`)"
        )
    if base_model.startswith("/"):
        folder = Path(base_model)
        if not folder.is_dir():
            raise UserError(
                f"{recipe.path}: base_model: no such model folder {base_model}"
                " (for the demo model run `diverse-axolotl prepare-model`)"
            )
        if not (folder / "config.json").is_file():
            raise UserError(f"{recipe.path}: base_model: {folder} has no config.json (not a Hugging Face model folder)")
        tokenizer_dir = recipe.tokenizer_dir
        if not any(
            (tokenizer_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
        ):
            raise UserError(
                f"{recipe.path}: base_model: {tokenizer_dir} holds no tokenizer"
                " (tokenizer.json or tokenizer_config.json)"
            )


def check_output_dir(recipe) -> None:
    """The run folder can be made and written, and holds none of the run's inputs: `--force` clears a run
    folder, so one that is (or lies above) the recipe, the pool or the model would put them at risk."""
    out = recipe.output_dir
    where = f"{recipe.path}: output_dir {out}"
    if out.exists() and not out.is_dir():
        raise UserError(f"{where} is a file, not a folder")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{where} lies under {existing}, which is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is read-only" if existing == out else f"cannot be created: {existing} is read-only"
        raise UserError(f"{where} {what}")
    inputs = {"the recipe": recipe.path, "the pool": recipe.selection.pool.path}
    if Path(recipe.base_model).is_absolute():
        inputs["the base model"] = Path(recipe.base_model)
    if recipe.selection.embedding.cache_dir is not None:
        inputs["the embedding cache"] = recipe.selection.embedding.cache_dir
    for name, path in inputs.items():
        if Path(path).resolve().is_relative_to(out):
            raise UserError(
                f"{where} holds {name} ({path}); a run folder must hold only what the run writes, since"
                " --force clears it: name a folder of its own (for example output_dir: run)"
            )
