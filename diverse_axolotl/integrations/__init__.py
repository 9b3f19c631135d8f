"""Selection inside `axolotl train`: an Axolotl user keeps their command and config and adds four lines.

    plugins:
      - diverse_axolotl.integrations.SelectionPlugin
    diverse_selection:
      {selector: kmq, budget: 0.05, embed_with: base}

Axolotl merges `SelectionArgs` into its config schema, so a misspelt key is refused by Axolotl's own validation.
Its dataset-loading hook (`load_datasets`, called by `axolotl train` before anything is tokenised) reads the
config's `datasets:` as one pool, selects with the same code as `diverse-axolotl select` (`oneshot`), writes the
subset (rows unchanged, in the pool's format) and its manifest into `output_dir`, and hands Axolotl a config whose
only dataset is that subset, with the original entry's type and field mappings. Axolotl then loads, tokenises and
trains exactly the selected rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from axolotl.integrations.base import BasePlugin
from pydantic import BaseModel, ConfigDict, Field

#: Files the plugin writes into output_dir.
SUBSET_FILE = "diverse_selection.jsonl"
MANIFEST_FILE = "diverse_selection.manifest.json"


class DiverseSelection(BaseModel):
    """The `diverse_selection:` block."""

    model_config = ConfigDict(extra="forbid")
    selector: str = Field(description="a selector name (see `diverse-axolotl selectors`)")
    budget: int | float | str = Field(description="rows to keep: 0.05, '5%' or a row count")
    embed_with: str = Field(
        "base", description="base: the config's base_model; or a local model folder (an encoder works)"
    )
    embeddings: str | None = Field(None, description="a .npy file with one row per pool row, instead of embedding")
    params: dict[str, Any] = Field(default_factory=dict, description="the selector's parameters")
    scorer: str | None = Field(None, description="scorer for selectors that use scores (default: the selector's)")
    seed: int | None = Field(None, description="default: the config's seed, else 0")
    embedding_text: Literal["prompt_response", "prompt"] | None = Field(
        None, description="what of each row is embedded (default: the selector's: prompt for kcenter)"
    )


class SelectionArgs(BaseModel):
    """Merged into Axolotl's config schema by its plugin manager."""

    diverse_selection: DiverseSelection | None = None


def _plain(value):
    """Axolotl's DictDefault (and nested ones) as plain dicts and lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def pool_from_datasets(datasets: list[dict]):
    """The config's datasets as one pool (they must share a format: one subset file is written in it)."""
    from ..errors import UserError
    from ..oneshot import pool_from_entries

    if not datasets:
        raise UserError("diverse_selection: the config has no datasets to select from")
    return pool_from_entries(datasets)


def subset_entry(first: dict[str, Any], subset: Path) -> dict[str, Any]:
    """The dataset entry Axolotl trains on: the original's type and field mappings, the subset file's path."""
    entry = {
        k: v
        for k, v in first.items()
        if k not in ("path", "data_files", "split", "name", "ds_type", "revision") and v is not None
    }
    return {**entry, "path": str(subset), "ds_type": "json"}


def run_selection(cfg) -> tuple[Path, Path]:
    """Select from cfg.datasets, write the subset and manifest into output_dir, point cfg.datasets at the subset."""
    from ..logs import say
    from ..oneshot import select_pool, write_selection
    from ..recipe import EmbeddingSpec

    spec = DiverseSelection.model_validate(_plain(cfg.diverse_selection))
    datasets = _plain(list(cfg.datasets or []))
    pool = pool_from_datasets(datasets)
    model_dir = Path(cfg.base_model if spec.embed_with == "base" else spec.embed_with)
    seed = spec.seed if spec.seed is not None else int(cfg.seed or 0)
    picks, manifest = select_pool(
        pool,
        spec.selector,
        spec.params,
        spec.budget,
        seed,
        model_dir,
        Path(spec.embeddings) if spec.embeddings else None,
        spec.scorer,
        spec=EmbeddingSpec(text=spec.embedding_text) if spec.embedding_text else None,
        log=say,
    )
    out = Path(cfg.output_dir) / SUBSET_FILE
    manifest_file = write_selection(pool, picks, {**manifest, "axolotl_datasets": datasets}, out)
    from axolotl.utils.dict import DictDefault

    cfg.datasets = [DictDefault(subset_entry(datasets[0], out))]  # Axolotl reads entries by attribute
    say(f"diverse_selection: {len(picks)} of {len(pool.rows)} rows by {spec.selector}; manifest {manifest_file}")
    return out, manifest_file


class SelectionPlugin(BasePlugin):
    """`plugins: [diverse_axolotl.integrations.SelectionPlugin]` plus a `diverse_selection:` block."""

    def get_input_args(self) -> str:
        return "diverse_axolotl.integrations.SelectionArgs"

    def load_datasets(self, cfg, preprocess: bool = False):
        """Select, then let Axolotl load (and tokenise) only the subset."""
        if not cfg.get("diverse_selection"):
            return None
        from ..errors import UserError

        try:
            run_selection(cfg)
        except UserError as exc:
            raise SystemExit(f"error: diverse_selection: {exc}") from None
        from axolotl.common.datasets import load_datasets

        return load_datasets(cfg=cfg)
