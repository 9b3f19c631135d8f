"""`python -m diverse_axolotl ...` is the `diverse-axolotl` command (also under torchrun)."""

import os

from .cli import main

if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(prog_name="diverse-axolotl")
