"""`python -m bench.quality [--config FILE | --smoke] [--arms a,b] [--out DIR] ...` (see bench/quality/README.md)."""

import sys

from .benchmark import main

if __name__ == "__main__":
    sys.exit(main())
