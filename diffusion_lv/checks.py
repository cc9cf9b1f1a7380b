"""Argument checks shared by every settings dataclass, with one message format.

A message starts with ``name=value`` and says what is valid, e.g.
``batch_size=0 is not valid; valid: an integer >= 1``. The config layer (experiment.py) puts
``config.<section>.`` in front, so the same check serves the Python API and the command line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def choice(name: str, value, choices: Iterable[str]):
    """``value`` if it is one of ``choices``; else a ValueError listing them."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; valid choices: {sorted(choices)}")
    return value


def number(name: str, value, *, lo=None, hi=None, lo_open=False, hi_open=False,
           integer=False, optional=False):
    """``value`` if it is a number in ``[lo, hi]`` (open ends where asked), an int when
    ``integer``, or None when ``optional``; else a ValueError saying what is valid."""
    if value is None and optional:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (isinstance(value, int) if integer else math.isfinite(value))
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        kind = "an integer" if integer else "a finite number"
        left = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        right = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
        bounds = " and ".join(b for b in (left, right) if b)
        valid = f"{kind}{' ' + bounds if bounds else ''}{' or None' if optional else ''}"
        raise ValueError(f"{name}={value!r} is not valid; valid: {valid}")
    return value
