"""`diverse-axolotl validate` and `diverse-axolotl run`: a recipe checked, then run round by round."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..logs import echo, say
from .common import cell, friendly_errors, print_tables, table


@click.command()
@click.argument("recipe_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--skip-axolotl", is_flag=True, help="check only our block (fast; Axolotl's check imports Axolotl)")
@friendly_errors
def validate(recipe_file: Path, skip_axolotl: bool) -> None:
    """Check a recipe and print what it will run."""
    from ..loop import Loop
    from ..recipe import load_recipe

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
    round0 = "random rows" if sel.round0 == "random" else f"rows by {sel.selector.name} on the base model"
    echo(
        f"  rounds    0..{sel.rounds}: {sel.seed_size} {round0},"
        f" then +{sel.per_round} per round"
        f" -> {sel.total_rows} rows ({100 * sel.total_rows / len(rows):.1f}% of the pool)"
    )
    if loop.heldout is not None:
        echo(f"  held-out  {len(loop.heldout.rows)} rows, {loop.heldout.origin} (never selected)")
    echo(f"  model     {recipe.axolotl['base_model']} (adapter: {recipe.axolotl.get('adapter', 'none')})")
    echo(f"  output    {recipe.output_dir}")
    echo("resolved recipe:")
    echo(json.dumps(recipe.resolved(), indent=2, default=str))


@click.command()
@click.argument("recipe_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--resume", is_flag=True, help="continue an interrupted run from its last finished round")
@click.option("--force", is_flag=True, help="delete what a different recipe's run wrote in output_dir (round folders,"
              " run.json, summary.json; nothing else)")
@friendly_errors
def run(recipe_file: Path, resume: bool, force: bool) -> None:
    """Run every round of a recipe (re-running continues where it stopped)."""
    import contextlib

    from ..distributed import init_from_env, is_rank0, on_rank0, shutdown
    from ..faults import pause_point
    from ..loop import Loop
    from ..recipe import load_recipe

    # Under torchrun every rank runs this verb: one process group for training, embedding and selection; rank 0
    # alone holds the lock, writes the run folder and prints (the others wait for it at barriers).
    init_from_env()
    recipe = load_recipe(recipe_file)
    loop = Loop(recipe, log=say if is_rank0() else (lambda message: None))
    with loop.lock() if is_rank0() else contextlib.nullcontext():  # one run per folder, released however it ends
        pause_point("locked")
        on_rank0(loop.preflight)
        on_rank0(loop.prepare, resume=resume, force=force)
        summary = loop.run()
    if is_rank0():
        print_summary(summary)
        echo(f"run folder: {recipe.output_dir} (summary in {loop.paths.summary.name})")
    shutdown()  # under torchrun: every rank leaves the group together (a no-op in one process)


#: summary.json key -> stage table header
STAGE_HEADERS = {"round": "round", "rows": "rows", "truncated_rows": "trunc", "train_loss": "loss", "train_s": "train",
                 "embed_s": "embed", "score_s": "score", "select_s": "select", "eval_s": "eval", "round_s": "total"}


def print_summary(summary: list[dict]) -> None:
    """The stage table, then (when the recipe evaluates) a table of metrics per round."""
    stages = table(
        "summary (seconds per stage; trunc: rows longer than sequence_len, truncated)",
        list(STAGE_HEADERS.values()),
        [[cell(row.get(col), 4 if col == "train_loss" else 1) for col in STAGE_HEADERS] for row in summary],
    )
    names = list(dict.fromkeys(m for row in summary for m in row.get("metrics", {})))
    if not names:
        print_tables(stages)
        return
    metrics = table(
        "evaluation",
        ["round", "rows", *names],
        [[str(row["round"]), str(row["rows"]), *(cell(row["metrics"].get(n), 4) for n in names)]
         for row in summary if row.get("metrics")],
    )
    print_tables(stages, metrics)
