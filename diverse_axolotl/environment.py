"""The process environment we run in and record: the offline settings every child process gets, and the versions
a run (or a benchmark) writes beside its results so that numbers can be traced to the software that made them."""

from __future__ import annotations

import platform
from importlib import metadata

#: No hub downloads, no telemetry, no tokenizer threads fighting training's: what every training or benchmark
#: child process is started with (the Makefile exports the same for `make test` / `make demo`).
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}

#: What a run records in run.json.
RUN_PACKAGES = ("torch", "transformers", "peft", "axolotl", "trl", "numpy", "faiss-cpu", "lm_eval")


def versions(packages: tuple[str, ...] = RUN_PACKAGES, ours: bool = True) -> dict[str, str]:
    """{"python": ..., ["diverse-axolotl": ...,] package: version} for the installed ones among `packages`."""
    from . import __version__

    out = {"python": platform.python_version()}
    if ours:
        out["diverse-axolotl"] = __version__
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out
