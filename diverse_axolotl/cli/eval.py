"""`diverse-axolotl eval` and `diverse-axolotl report` (lm-eval and matplotlib are imported only when they run)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from ..logs import echo, say
from .common import DEFAULT_MODEL_DIR, friendly_errors, print_tables, table


@click.command("eval")
@click.option("--model", "model", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="base model folder (default: the demo model folder models/SmolLM2-135M-Instruct)")
@click.option("--adapter", type=click.Path(file_okay=False, path_type=Path), default=None, help="LoRA adapter folder")
@click.option("--tasks", default="da_arc_easy,heldout_loss", show_default=True,
              help="comma-separated: any lm-eval task by name, our offline da_* tasks (TASK:N for N shots) "
                   "and heldout_loss, t0_exact")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="at most N rows per task (smoke tests)")
@click.option("--batch-size", default="auto", show_default=True, help="lm-eval batch size (auto: 4 on CPU)")
@click.option(
    "--max-gen-toks", type=click.IntRange(min=1), default=None, help="cap on generated tokens (generation tasks)"
)
@click.option("--heldout-n", type=click.IntRange(min=1), default=None, help="held-out rows per source (default 64)")
@click.option("--chat-template", is_flag=True, help="prompt lm-eval tasks through the tokenizer's chat template")
@click.option("--allow-code-execution", is_flag=True, help="run model-written code (da_humaneval, da_mbpp)")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="data folder of our da_* tasks (default: $DIVERSE_AXOLOTL_EVAL_DATA)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("eval.json"),
    show_default=True,
    help="result file (JSON); lm-eval's log goes beside it with suffix .log",
)
@click.option("--list-tasks", is_flag=True, help="list the tasks and exit")
@friendly_errors
def eval_cmd(model, adapter, tasks, limit, batch_size, max_gen_toks, heldout_n, chat_template, allow_code_execution,
             data_dir, device, out, list_tasks) -> None:
    """Evaluate a model (+ LoRA adapter) on local lm-eval tasks and our held-out metrics."""
    from ..evaluation import OUR_METRICS, HeldoutSpec, evaluate, lm_eval_tasks

    if list_tasks:
        echo("\n".join([*lm_eval_tasks(), *OUR_METRICS]))
        return
    if model is None:
        model = DEFAULT_MODEL_DIR
    size: int | str = batch_size
    if batch_size.isdigit():
        size = int(batch_size)
    elif not batch_size.startswith("auto"):
        raise UserError(f"--batch-size {batch_size}: a positive whole number or 'auto'")
    heldout = HeldoutSpec(n_per_source=heldout_n) if heldout_n else HeldoutSpec()
    result = evaluate(
        model, adapter, tasks, limit, size, out, heldout=heldout, max_gen_toks=max_gen_toks,
        apply_chat_template=chat_template, allow_code_execution=allow_code_execution, data_dir=data_dir,
        device=device, log=say,
    )
    _print_metrics(result["metrics"])
    echo(f"results: {out}" + (f" (lm-eval log: {result['meta']['log_file']})" if result["meta"]["log_file"] else ""))


def _print_metrics(metrics: dict[str, float]) -> None:
    rows = [[name, f"{value:.4f}"] for name, value in metrics.items()]
    print_tables(table("evaluation", ["metric", "value"], rows, justify={"metric": "left"}))


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("report"),
    show_default=True,
    help="folder for report.md, report.html and the PNGs",
)
@friendly_errors
def report_cmd(run_dirs: tuple[Path, ...], out: Path) -> None:
    """Plots and tables over one or more run folders (metrics, diversity, embedding maps, timings)."""
    from ..report import write_report

    written = write_report(list(run_dirs), out)
    echo(f"report: {written['markdown']} and {written['html']} ({len(written['pngs'])} plots)")
    for folder, why in written.get("unfinished", {}).items():
        echo(f"note: {folder} is {why}")

