"""Cells, verdicts and their markdown: the bookkeeping every table module shares.

A ``Cell`` is one printed entry of a table: its formula as printed, the schedules (or source →
target pairs) it is checked on, and a check ``check(ctx, case) -> max relative error`` (None for
a definitional cell). A printed cell that disagrees carries a correction, which is checked too.
``evaluate`` turns a cell into a ``Result`` with its verdict; ``table_section`` writes one table.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable

from .measure import Context

# Agreement threshold, from float64 roundoff (1.1e-16) times the conditioning of the formulas at
# the lowest noise levels the points reach: a score computed through the denoiser, -(x - alpha D)
# / sigma^2, cancels x against alpha D and loses about lambda/sigma_ve^2 (data variance over noise
# variance) digits, 2.6e6 at cosine_vp's sigma_ve(t_min) = 6.2e-4; the printed forms in 1 - alpha_t
# lose 1/(1 - alpha_t), as much. Times a few operations this stays below 1e-8; a printed typo
# changes a cell at order one.
TOLERANCE = 1e-8


def format_error(error: float, exact: bool = False) -> str:
    """An error for the report: its measured value above ``TOLERANCE``, else the bound.

    Errors at most the tolerance are float64 roundoff, and their values change with the machine,
    its vector instructions and the XLA version (the same points, a different last digit or two),
    so the committed report prints them as the bound and stays byte-identical across runs;
    ``exact`` prints the measured value. Errors above the tolerance are set by the random points
    (a printed cell off at order one), which are the same on every machine.
    """
    if exact or error > TOLERANCE:
        return f"{error:.1e}"
    return f"≤ {TOLERANCE:.0e}"


@dataclasses.dataclass(frozen=True)
class Cell:
    table: int
    name: str  # "row / column"
    printed: str  # the formula as printed
    cases: tuple = ()  # schedule names, or (source, target) pairs
    check: Callable | None = None  # check(ctx, case) -> max relative error; None: a definition
    correction: str | None = None
    corrected_check: Callable | None = None

    @property
    def key(self) -> str:
        return f"{self.table}: {self.name}"


def cell(table, name, printed, cases, check, *args, correction=None, corrected=None) -> Cell:
    """A checked cell: ``check(*args, ctx, case)``, ``args`` starting with the printed function.

    ``corrected`` replaces the printed function (the first of ``args``) in the corrected check.
    """
    checker = functools.partial(check, *args)
    corrected_checker = None
    if corrected is not None:
        corrected_checker = functools.partial(check, corrected, *args[1:])
    return Cell(table, name, printed, tuple(cases), checker, correction, corrected_checker)


def definition(table, name, printed) -> Cell:
    """A definitional cell: listed, nothing to check."""
    return Cell(table, name, printed)


@dataclasses.dataclass(frozen=True)
class Result:
    cell: Cell
    error: float | None  # None for a definition
    corrected_error: float | None = None

    @property
    def agrees(self) -> bool:
        return self.error is not None and self.error <= TOLERANCE

    @property
    def verdict(self) -> str:
        return self.verdict_text()

    def verdict_text(self, exact: bool = False) -> str:
        """``definition``, ``agrees`` or ``DISAGREES: ...`` with the correction and its error
        (``format_error``: the bound when it agrees, unless ``exact``)."""
        if self.error is None:
            return "definition"
        if self.agrees:
            return "agrees"
        if self.cell.correction is None:
            return "DISAGREES: no correction recorded"
        return (
            f"DISAGREES: corrected: {self.cell.correction} "
            f"(max rel. error of the correction {format_error(self.corrected_error, exact)})"
        )


def max_error(check: Callable, ctx: Context, cases: Iterable) -> float:
    """The largest error of ``check(ctx, case)`` over the cases."""
    return max(check(ctx, case) for case in cases)


def evaluate(cell: Cell, ctx: Context) -> Result:
    if cell.check is None:
        return Result(cell, None)
    error = max_error(cell.check, ctx, cell.cases)
    corrected = None
    if cell.corrected_check is not None:
        corrected = max_error(cell.corrected_check, ctx, cell.cases)
    return Result(cell, error, corrected)


def case_label(case) -> str:
    return case if isinstance(case, str) else f"{case[0]}→{case[1]}"


def md_escape(text: str) -> str:
    """Text for a markdown table cell (``|`` escaped)."""
    return text.replace("|", "\\|")


def table_section(
    table: int, title: str, compared_with: str, results: Iterable[Result], notes: list[str],
    exact: bool = False,
) -> list[str]:
    """The markdown lines of one table: heading, what it is compared with, rows, notes
    (errors through ``format_error``)."""
    lines = [
        "",
        f"## Table {table}: {title}",
        "",
        f"Compared with {compared_with}",
        "",
        "| cell | printed formula | schedules checked | max rel. error | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if r.cell.table != table:
            continue
        cases = ", ".join(case_label(c) for c in r.cell.cases) or "—"
        error = "—" if r.error is None else format_error(r.error, exact)
        lines.append(
            f"| {md_escape(r.cell.name)} | {md_escape(r.cell.printed)} | {cases} | {error} | "
            f"{md_escape(r.verdict_text(exact))} |"
        )
    return lines + notes
