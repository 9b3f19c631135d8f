"""`diverse-axolotl selectors` (what can select) and `diverse-axolotl select` (one-shot selection, no training)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..logs import echo, say
from .common import friendly_errors


def _params_of(cls) -> dict:
    return {
        key: {"type": _type_name(field.annotation), "default": field.default, "help": field.description or ""}
        for key, field in cls.Params.model_fields.items()
    }


def _default_text(field) -> str:
    """What `selectors` prints as a parameter's default: 'required' when the recipe must set it."""
    return "required" if field.is_required() else repr(field.get_default(call_default_factory=True))


def _type_name(annotation) -> str:
    if getattr(annotation, "__origin__", None) is None and isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@friendly_errors
def selectors(as_json: bool) -> None:
    """List the selectors and scorers, their parameters and what they do."""
    from ..scoring import available_scorers
    from ..selection import available_selectors

    selector_classes, scorer_classes = available_selectors(), available_scorers()
    listing: dict[str, dict[str, Any]] = {
        name: {"description": cls.description, "scores": cls.scores, "default_scorer": cls.default_scorer,
               "params": _params_of(cls)}
        for name, cls in selector_classes.items()
    }
    scorers: dict[str, dict[str, Any]] = {
        name: {"description": cls.description, "params": _params_of(cls)} for name, cls in scorer_classes.items()
    }
    if as_json:
        echo(json.dumps({"selectors": listing, "scorers": scorers}, indent=2, default=str))
        return
    for title, entries, classes in (("selectors (selection.selector)", listing, selector_classes),
                                    ("scorers (selection.scorer)", scorers, scorer_classes)):
        echo(title, underline=True)
        for name, info in entries.items():
            uses = info.get("scores", "none")
            default_scorer = f", default scorer {info['default_scorer']}" if info.get("default_scorer") else ""
            echo(f"  {name}", bold=True, nl=False)
            echo(f"  {info['description']}" + (f"  [scores: {uses}{default_scorer}]" if uses != "none" else ""))
            fields = classes[name].Params.model_fields
            for key, p in info["params"].items():
                echo(f"      {key}: {p['type']} = {_default_text(fields[key])}  {p['help']}")
        echo()


@click.command("select")
@click.argument("pool", nargs=-1, required=True)
@click.option("--selector", "selector_name", required=True, help="a selector name (see `diverse-axolotl selectors`)")
@click.option("--param", "params", multiple=True, metavar="K=V", help="a selector parameter (repeatable)")
@click.option("--budget", required=True, help="rows to select: 5% of the pool, a fraction (0.05) or a count (500)")
@click.option("--model", "model_dir", type=click.Path(file_okay=False, path_type=Path),
              help="local model folder: a base model (embedded as the loop does) or any HF encoder (mean pooling,"
                   " L2-normalised)")
@click.option("--embeddings", "embeddings_file", type=click.Path(dir_okay=False, path_type=Path),
              help="a .npy array with one row per pool row, instead of embedding")
@click.option("--scorer", "scorer_name", help="scorer for selectors that use scores (default: the selector's)")
@click.option("--format", "fmt", type=click.Choice(["alpaca", "chat", "sharegpt", "completion"]),
              help="pool format (default: told by the first row)")
@click.option("--split", help="split of a save_to_disk DatasetDict (default: train)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("subset.jsonl"), show_default=True,
              help=".jsonl, .json or .parquet")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--embedding-text", "embedding_text", type=click.Choice(["prompt_response", "prompt"]), default=None,
              help="what of each row --model embeds (default: the selector's: prompt for kcenter, prompt_response"
                   " for the others)")
@friendly_errors
def select_cmd(
    pool, selector_name, params, budget, model_dir, embeddings_file, scorer_name, fmt, split, out, seed, embedding_text
) -> None:
    """Select a subset of POOL (files, globs, folders or a save_to_disk dataset) in one shot, no training."""
    from ..oneshot import parse_params, read_select_pool, select_pool, write_selection

    data = read_select_pool(pool, fmt, split=split)
    spec = None
    if embedding_text:
        from ..recipe import EmbeddingSpec

        spec = EmbeddingSpec(text=embedding_text)
    picks, manifest = select_pool(data, selector_name, parse_params(params), budget, seed, model_dir, embeddings_file,
                                  scorer_name, spec=spec, log=say)
    manifest_file = write_selection(data, picks, manifest, out)
    echo(f"pool      {', '.join(map(str, data.sources))}: {len(data.rows)} rows, format {data.fmt}"
         f" ({data.stats['empty_skipped']} empty skipped)")
    sel = manifest["selector"]
    echo(f"selected  {len(picks)} rows with {sel['name']}({', '.join(f'{k}={v}' for k, v in sel['params'].items())}),"
         f" seed {seed}, in {sum(manifest['timings'].values()):.1f}s")
    echo(f"subset    {out}")
    echo(f"manifest  {manifest_file}")
