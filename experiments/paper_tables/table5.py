"""Table 5 of the paper: conversion between model predictions.

Each cell turns the native prediction of one process (VP score s_x, VE-Karras noise ε, rectified-
flow velocity v) at a point into the native prediction of another at the equivalent point of
Table 2. Convention: cells take (state, given prediction, paper's noise level of the source:
``α_t = alpha(t)^2`` for VP schedules, σ or s otherwise), so a cell with a VP side is checked from
or to every VP-family schedule; cases are source → target pairs. The text extraction of the VP
score → RF velocity cell does not show how far a radical extends: it is read as √(α_t(1 − α_t)),
and the other reading, √α_t (1 − α_t), is measured for the report's note (it is wrong).

Derived by ``convert.convert_prediction`` (through the denoiser D = E[x0 | x_t]) and by the
oracle's exact prediction of the target kind at the converted point; the given prediction is the
oracle's exact one.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from diffusion_lv import convert

from .cells import cell, max_error
from .measure import NATIVE, VP_FAMILY, Context, paper_level, rel_error, to_vp, vp_to

TABLE = 5
TITLE = "Conversion between model predictions"
COMPARED_WITH = (
    "`convert.convert_prediction` (through the denoiser D = E[x0 | x_t]) and the oracle's "
    "exact prediction of the target kind at the converted point; the given prediction is the "
    "oracle's exact one. Pairs are source → target."
)


# -- the printed cells: (state, given prediction, source level) -> target prediction -----------


def t5_score_to_eps(x_t, s_x, alpha_t):
    """Table 5, row VP score s_x(x_t, α_t), column VE noise: ε(z_σ, σ) = −√(1 − α_t) s_x."""
    return -jnp.sqrt(1 - alpha_t) * s_x


def t5_score_to_velocity(x_t, s_x, alpha_t):
    """Table 5, row VP score, column RF velocity.

    v(r_s, s) = −x_t/√α_t − (1 − α_t + √(α_t(1 − α_t)))/√α_t · s_x(x_t, α_t).
    The text extraction does not show the radical's extent; this reading is the one that agrees.
    """
    return -x_t / jnp.sqrt(alpha_t) - (
        1 - alpha_t + jnp.sqrt(alpha_t * (1 - alpha_t))
    ) / jnp.sqrt(alpha_t) * s_x


def t5_score_to_velocity_other_reading(x_t, s_x, alpha_t):
    """Table 5, VP score → RF velocity, read with the radical over α_t only: √α_t (1 − α_t).

    Not a cell: the alternative reading of the extracted text, reported in a note.
    """
    return -x_t / jnp.sqrt(alpha_t) - (
        1 - alpha_t + jnp.sqrt(alpha_t) * (1 - alpha_t)
    ) / jnp.sqrt(alpha_t) * s_x


def t5_eps_to_score(z, eps, sigma):
    """Table 5, row VE noise ε(z_σ, σ), column VP score: s_x(x_t, α_t) = −√(1 + σ²)/σ · ε."""
    return -jnp.sqrt(1 + sigma**2) / sigma * eps


def t5_eps_to_velocity(z, eps, sigma):
    """Table 5, row VE noise, column RF velocity: v(r_s, s) = (1 + σ) ε(z_σ, σ) − z_σ."""
    return (1 + sigma) * eps - z


def t5_velocity_to_score(r, v, s):
    """Table 5, row RF velocity v(r_s, s), column VP score.

    s_x(x_t, α_t) = −√((1 − s)² + s²)/s · (r_s + (1 − s) v(r_s, s)).
    """
    return -jnp.sqrt((1 - s) ** 2 + s**2) / s * (r + (1 - s) * v)


def t5_velocity_to_eps(r, v, s):
    """Table 5, row RF velocity, column VE noise: ε(z_σ, σ) = r_s + (1 − s) v(r_s, s)."""
    return r + (1 - s) * v


# -- the checks ---------------------------------------------------------------------------------


def _vp_name(name: str) -> str:
    return "vp" if name in VP_FAMILY else name


def check_prediction_conversion(printed, ctx: Context, case: tuple[str, str]) -> float:
    """A Table 5 cell against convert.convert_prediction and the oracle at the converted point."""
    source, target = case
    src_kind, tgt_kind = NATIVE[_vp_name(source)], NATIVE[_vp_name(target)]
    src_schedule, tgt_schedule = ctx.schedule(source), ctx.schedule(target)
    p = ctx.points(source, target)
    given = ctx.exact(source, src_kind, p)
    value = printed(p.x, given, paper_level(source, p.tc))
    derived, x_target, t_target = convert.convert_prediction(
        given, src_kind, tgt_kind, p.x, p.t, src_schedule, tgt_schedule
    )
    truth = ctx.network(target, tgt_kind)(x_target, t_target)
    return max(rel_error(value, derived), rel_error(value, truth))


def other_reading_error(ctx: Context) -> float:
    """Table 5's VP score → RF velocity read with √α_t (1 − α_t): the error that reading has."""
    check = functools.partial(check_prediction_conversion, t5_score_to_velocity_other_reading)
    return max_error(check, ctx, vp_to("rf"))


# -- the cells ----------------------------------------------------------------------------------

CELLS = (
    cell(TABLE, "VP score s_x / Equivalent VE noise ε", "ε(z_σ, σ) = −√(1 − α_t) s_x(x_t, α_t)",
         vp_to("ve"), check_prediction_conversion, t5_score_to_eps),
    cell(TABLE, "VP score s_x / Equivalent RF velocity v",
         "v(r_s, s) = −x_t/√α_t − (1 − α_t + √(α_t(1 − α_t)))/√α_t · s_x(x_t, α_t)",
         vp_to("rf"), check_prediction_conversion, t5_score_to_velocity),
    cell(TABLE, "VE noise ε / Equivalent VP score s_x",
         "s_x(x_t, α_t) = −√(1 + σ²)/σ · ε(z_σ, σ)",
         to_vp("ve"), check_prediction_conversion, t5_eps_to_score),
    cell(TABLE, "VE noise ε / Equivalent RF velocity v", "v(r_s, s) = (1 + σ) ε(z_σ, σ) − z_σ",
         [("ve", "rf")], check_prediction_conversion, t5_eps_to_velocity),
    cell(TABLE, "RF velocity v / Equivalent VP score s_x",
         "s_x(x_t, α_t) = −√((1 − s)² + s²)/s · (r_s + (1 − s) v(r_s, s))",
         to_vp("rf"), check_prediction_conversion, t5_velocity_to_score),
    cell(TABLE, "RF velocity v / Equivalent VE noise ε", "ε(z_σ, σ) = r_s + (1 − s) v(r_s, s)",
         [("rf", "ve")], check_prediction_conversion, t5_velocity_to_eps),
)


def notes(measured: dict[str, float]) -> list[str]:
    """Markdown lines after the table: the reading of the garbled radical, and the other one's
    measured error (``measured['table5_other_reading']``, from ``other_reading_error``)."""
    return [
        "",
        "The text extraction of the VP score → RF velocity cell does not show how far the "
        "radical extends; the cell is read as √(α_t(1 − α_t)). The other reading, "
        f"√α_t (1 − α_t), has max rel. error {measured['table5_other_reading']:.1e} and would "
        "be wrong.",
    ]
