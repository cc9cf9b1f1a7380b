"""Table 2 of the paper: conversion between forward-process variable parameterizations.

Each cell maps a (state, noise level) pair of one process to the equivalent pair of another: the
state and level at which the other process has the same ``sigma_ve = sigma/alpha``. Convention:
noise levels as the paper writes them (``α_t = alpha(t)^2`` for VP schedules, σ and s the
schedules' own times), so a cell written in ``α_t`` is checked from or to every VP-family
schedule; cases are source → target pairs. The last two cells are the blog's version, written in
VP time t itself (so on vp only), whose σ = √(e^t − 1) fixes the radical the text extraction of
the VP → VE-Karras cell leaves ambiguous.

Derived by ``convert.convert_state``: the target time at equal ``sigma_ve``, the state scaled by
alpha_target/alpha_source.
"""

from __future__ import annotations

import jax.numpy as jnp

from diffusion_lv import convert

from .cells import cell
from .measure import Context, paper_level, rel_error, to_vp, vp_to

TABLE = 2
TITLE = "Conversion between forward-process variable parameterizations"
COMPARED_WITH = (
    "`convert.convert_state`: the target time at equal `sigma_ve = sigma/alpha`, state scaled "
    "by alpha_target/alpha_source; noise levels as the paper writes them (alpha_t = alpha^2 for "
    "VP schedules). Pairs are source → target."
)


# -- the printed cells: (state, noise level) -> (state, noise level) ---------------------------


def t2_vp_to_ve(x_t, alpha_t):
    """Table 2, row VP (x_t, α_t), column Equivalent VE-Karras: z_σ = x_t/√α_t, σ = √((1−α_t)/α_t).

    The text extraction does not show how far the radical of σ extends; σ = √(e^t − 1) in the
    blog's version of this table fixes it to cover the whole fraction.
    """
    return x_t / jnp.sqrt(alpha_t), jnp.sqrt((1 - alpha_t) / alpha_t)


def t2_vp_to_rf(x_t, alpha_t):
    """Table 2, row VP, column Equivalent Rectified-flow.

    r_s = x_t / (√α_t + √(1 − α_t)),  s = √(1 − α_t) / (√α_t + √(1 − α_t)).
    """
    denominator = jnp.sqrt(alpha_t) + jnp.sqrt(1 - alpha_t)
    return x_t / denominator, jnp.sqrt(1 - alpha_t) / denominator


def t2_ve_to_vp(z, sigma):
    """Table 2, row VE-Karras (z_σ, σ), column Equivalent VP: x_t = z_σ/√(1+σ²), α_t = 1/(1+σ²)."""
    return z / jnp.sqrt(1 + sigma**2), 1 / (1 + sigma**2)


def t2_ve_to_rf(z, sigma):
    """Table 2, row VE-Karras, column Equivalent Rectified-flow: r_s = z_σ/(1+σ), s = σ/(1+σ)."""
    return z / (1 + sigma), sigma / (1 + sigma)


def t2_rf_to_vp(r, s):
    """Table 2, row Rectified flow (r_s, s), column Equivalent VP.

    x_t = r_s / √((1−s)² + s²),  α_t = (1−s)² / ((1−s)² + s²).
    """
    return r / jnp.sqrt((1 - s) ** 2 + s**2), (1 - s) ** 2 / ((1 - s) ** 2 + s**2)


def t2_rf_to_ve(r, s):
    """Table 2, row Rectified flow, column Equivalent VE-Karras: z_σ = r_s/(1−s), σ = s/(1−s)."""
    return r / (1 - s), s / (1 - s)


def t2_blog_vp_to_ve(x_t, t):
    """Table 2 (blog version, in VP time t), row VE-Karras: σ = √(e^t − 1), z_σ(t) = x_t e^{t/2}."""
    return x_t * jnp.exp(t / 2), jnp.sqrt(jnp.exp(t) - 1)


def t2_blog_vp_to_rf(x_t, t):
    """Table 2 (blog version, in VP time t), row Flow.

    s = √(e^t − 1) / (1 + √(e^t − 1)),  r_s(t) = x_t e^{t/2} / (1 + √(e^t − 1)).
    """
    root = jnp.sqrt(jnp.exp(t) - 1)
    return x_t * jnp.exp(t / 2) / (1 + root), root / (1 + root)


# -- the checks ---------------------------------------------------------------------------------


def _own_time(name: str, t):
    """Levels as the blog's version writes them: each schedule's own time (VP time t for vp)."""
    return t


def _conversion_error(printed, ctx: Context, case: tuple[str, str], level) -> float:
    """A printed conversion against convert.convert_state; ``level(name, t)`` writes the levels."""
    source, target = case
    p = ctx.points(source, target)
    x_target, t_target = convert.convert_state(p.x, p.t, ctx.schedule(source), ctx.schedule(target))
    state, printed_level = printed(p.x, level(source, p.tc))
    return max(rel_error(state, x_target), rel_error(printed_level, level(target, t_target)))


def check_state_conversion(printed, ctx: Context, case: tuple[str, str]) -> float:
    return _conversion_error(printed, ctx, case, paper_level)


def check_blog_time_conversion(printed, ctx: Context, case: tuple[str, str]) -> float:
    return _conversion_error(printed, ctx, case, _own_time)


# -- the cells ----------------------------------------------------------------------------------

CELLS = (
    cell(TABLE, "VP (x_t, α_t) / Equivalent VE-Karras", "z_σ = x_t/√α_t, σ = √((1 − α_t)/α_t)",
         vp_to("ve"), check_state_conversion, t2_vp_to_ve),
    cell(TABLE, "VP (x_t, α_t) / Equivalent Rectified flow",
         "r_s = x_t/(√α_t + √(1 − α_t)), s = √(1 − α_t)/(√α_t + √(1 − α_t))",
         vp_to("rf"), check_state_conversion, t2_vp_to_rf),
    cell(TABLE, "VE-Karras (z_σ, σ) / Equivalent VP", "x_t = z_σ/√(1 + σ²), α_t = 1/(1 + σ²)",
         to_vp("ve"), check_state_conversion, t2_ve_to_vp),
    cell(TABLE, "VE-Karras (z_σ, σ) / Equivalent Rectified flow",
         "r_s = z_σ/(1 + σ), s = σ/(1 + σ)", [("ve", "rf")], check_state_conversion, t2_ve_to_rf),
    cell(TABLE, "Rectified flow (r_s, s) / Equivalent VP",
         "x_t = r_s/√((1 − s)² + s²), α_t = (1 − s)²/((1 − s)² + s²)",
         to_vp("rf"), check_state_conversion, t2_rf_to_vp),
    cell(TABLE, "Rectified flow (r_s, s) / Equivalent VE-Karras",
         "z_σ = r_s/(1 − s), σ = s/(1 − s)", [("rf", "ve")], check_state_conversion, t2_rf_to_ve),
    cell(TABLE, "blog, in VP time t / VE-Karras", "σ = √(e^t − 1), z_σ(t) = x_t e^{t/2}",
         [("vp", "ve")], check_blog_time_conversion, t2_blog_vp_to_ve),
    cell(TABLE, "blog, in VP time t / Flow",
         "s = √(e^t − 1)/(1 + √(e^t − 1)), r_s(t) = x_t e^{t/2}/(1 + √(e^t − 1))",
         [("vp", "rf")], check_blog_time_conversion, t2_blog_vp_to_rf),
)


def notes(measured: dict[str, float]) -> list[str]:
    """Markdown lines after the table: how the garbled radical is read."""
    return [
        "",
        "The text extraction of VP → VE-Karras does not show how far the radical of σ extends; "
        "the blog's σ = √(e^t − 1) fixes it as √((1 − α_t)/α_t).",
    ]
