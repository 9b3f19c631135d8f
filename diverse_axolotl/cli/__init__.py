"""`diverse-axolotl`: validate, run and inspect data-selection recipes.

The command group lives here; each verb group has its own module (run, select, project, eval), and what they share
(error handling, tables) is in `common`. Verb modules import their heavy dependencies only when they run.
"""

from __future__ import annotations

import click

from ..logs import default_log_dir, only_our_output
from .eval import eval_cmd, report_cmd
from .project import init_cmd, prepare_model_cmd
from .run import run, validate
from .select import select_cmd, selectors


class _Verbs(click.Group):
    """The command group; keeps the verb's own arguments (ctx.meta["verb_args"]) for the group's callback."""

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        ctx.meta["verb_args"] = list(rest)
        return name, command, rest


@click.group(cls=_Verbs, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="show full tracebacks")
@click.version_option(package_name="diverse-axolotl")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Self-evolving data selection for instruction tuning, trained with Axolotl."""
    # Third-party output (warnings at import, log records, C-extension messages) goes to this verb's log file
    # for as long as the verb runs; only our messages reach the terminal.
    # A verb's --help is our output: printed before the verb runs, it would otherwise land in the log file.
    if ctx.invoked_subcommand is not None and not {"-h", "--help"} & set(ctx.meta.get("verb_args", ())):
        from ..distributed import rank  # under torchrun each rank has its own file: run.log, run.rank1.log, ...

        suffix = f".rank{rank()}" if rank() else ""
        ctx.with_resource(only_our_output(default_log_dir() / f"{ctx.invoked_subcommand}{suffix}.log"))


# Every verb (click lists them sorted in --help).
for _command in (validate, run, selectors, select_cmd, prepare_model_cmd, init_cmd, eval_cmd, report_cmd):
    main.add_command(_command)

__all__ = ["main"]
