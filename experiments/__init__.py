"""Experiments that reproduce the paper's claims; each module writes table.md and a figure.

Run one as ``python -m experiments.<name> --workdir=runs/<name>
[--config=experiments/configs/<name>.py[:full]]``; see docs/experiments.md.
"""
