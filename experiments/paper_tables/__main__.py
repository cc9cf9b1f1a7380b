"""``python -m experiments.paper_tables [--out docs/paper_tables.md] [--points N] [--seed S]``."""

import sys

from .runner import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m experiments.paper_tables"))
