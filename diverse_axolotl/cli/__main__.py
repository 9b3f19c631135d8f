"""`python -m diverse_axolotl.cli ...` is the `diverse-axolotl` command."""

import os

from . import main

if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(prog_name="diverse-axolotl")
