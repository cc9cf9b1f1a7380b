"""Reproduce the paper's Tables 1-7: every printed cell against the general derivation.

A thin entry point: the cells, checks and report live in the package ``experiments.paper_tables``
(one module per table; see its docstring), and ``python -m experiments.paper_tables`` from the
repository root does the same.

Usage: ``python scripts/reproduce_tables.py [--out docs/paper_tables.md] [--points N] [--seed S]
[--exact-errors]``. The report prints errors below the agreement tolerance (float64 roundoff,
whose last digits depend on the machine) as the bound, so ``--out`` rewrites the committed
docs/paper_tables.md byte for byte; ``--exact-errors`` prints the measured values.
"""

from __future__ import annotations

import pathlib
import sys

# Running this file puts scripts/ on sys.path, not the repository root that holds experiments/.
ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments.paper_tables.runner import main  # noqa: E402

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
