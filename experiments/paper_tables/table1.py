"""Table 1 of the paper: forward processes across model parameterizations.

For VP, VE-Karras and rectified flow: the noise-level parameter, the forward process (the marginal
``state = a x_0 + b ε``) and the forward SDE. Convention: the paper's VP noise level ``α_t =
e^{−t}`` is ``alpha(t)^2`` in the code, so a cell written in ``α_t`` holds for every VP-family
schedule (vp, linear_vp, cosine_vp) and is checked on all three, a cell written in ``t`` on vp
only; VE-Karras and rectified flow take the schedule's own time (σ, s) as their noise level, so
those two Noise-level cells are definitions. SDE cells return (drift, diffusion coefficient).

Derived from ``(alpha, sigma)`` alone: ``losses.perturb`` and the forward SDE ``f = d log
alpha/dt``, ``g^2 = d sigma^2/dt - 2 f sigma^2`` (``Schedule.f``, ``Schedule.g2``). Tables 6 and
7 reuse ``check_forward_process`` for their identical Forward-process cells.
"""

from __future__ import annotations

import jax.numpy as jnp

from diffusion_lv import losses

from .cells import cell, definition
from .measure import VP_FAMILY, Context, paper_level, rel_error, sde_error

TABLE = 1
TITLE = "Forward processes across model parameterizations"
COMPARED_WITH = (
    "the schedule's alpha(t)^2, `losses.perturb` (alpha x0 + sigma eps) and the forward SDE "
    "`f = d log alpha/dt`, `g^2 = d sigma^2/dt - 2 f sigma^2` (`Schedule.f`, `Schedule.g2`, by "
    "autodiff)."
)


# -- the printed cells --------------------------------------------------------------------------


def t1_vp_noise_level(t):
    """Table 1, row VP, column Noise-level parameter: α_t = e^{−t}."""
    return jnp.exp(-t)


def t1_vp_forward_process(x0, eps, alpha_t):
    """Table 1, row VP, column Forward process: x_t = √α_t x_0 + √(1 − α_t) ε."""
    return jnp.sqrt(alpha_t) * x0 + jnp.sqrt(1 - alpha_t) * eps


def t1_vp_forward_sde(x, t):
    """Table 1, row VP, column Forward SDE: dx_t = −½ x_t dt + dW_t."""
    return -0.5 * x, 1.0


def t1_ve_forward_process(z0, eps, sigma):
    """Table 1, row VE-Karras, column Forward process: z_σ = z_0 + σ ε."""
    return z0 + sigma * eps


def t1_ve_forward_sde(z, sigma):
    """Table 1, row VE-Karras, column Forward SDE: dz_σ = √(2σ) dW_σ."""
    return jnp.zeros_like(z), jnp.sqrt(2 * sigma)


def t1_rf_forward_process(r0, eps, s):
    """Table 1, row Rectified flow, column Forward process: r_s = (1 − s) r_0 + s ε."""
    return (1 - s) * r0 + s * eps


def t1_rf_forward_sde(r, s):
    """Table 1, row Rectified flow, column Forward SDE: dr_s = −r_s/(1−s) ds + √(2s/(1−s)) dW_s."""
    return -r / (1 - s), jnp.sqrt(2 * s / (1 - s))


# -- the checks ---------------------------------------------------------------------------------


def check_noise_level(printed, ctx: Context, name: str) -> float:
    p = ctx.points(name)
    return rel_error(printed(p.tc), paper_level(name, p.t))


def check_forward_process(printed, ctx: Context, name: str) -> float:
    """``printed(x0, eps, level)`` against ``losses.perturb`` (Tables 1, 6 and 7)."""
    p = ctx.points(name)
    level = paper_level(name, p.tc)
    derived = losses.perturb(p.x0, p.eps, p.t, ctx.schedule(name))
    return rel_error(printed(p.x0, p.eps, level), derived)


def check_forward_sde(printed, ctx: Context, name: str) -> float:
    p, schedule = ctx.points(name), ctx.schedule(name)
    g2 = schedule.g2(p.t)
    derived = (schedule.f(p.t)[:, None] * p.x, jnp.sqrt(g2))
    return sde_error(printed(p.x, p.tc), derived, p.x, g2)


# -- the cells ----------------------------------------------------------------------------------

CELLS = (
    cell(TABLE, "VP / Noise-level parameter", "α_t = e^{−t}", ["vp"], check_noise_level,
         t1_vp_noise_level),
    cell(TABLE, "VP / Forward process", "x_t = √α_t x_0 + √(1 − α_t) ε", VP_FAMILY,
         check_forward_process, t1_vp_forward_process),
    cell(TABLE, "VP / Forward SDE", "dx_t = −½ x_t dt + dW_t", ["vp"], check_forward_sde,
         t1_vp_forward_sde),
    definition(TABLE, "VE-Karras / Noise-level parameter", "σ (the schedule's own time)"),
    cell(TABLE, "VE-Karras / Forward process", "z_σ = z_0 + σ ε", ["ve"], check_forward_process,
         t1_ve_forward_process),
    cell(TABLE, "VE-Karras / Forward SDE", "dz_σ = √(2σ) dW_σ", ["ve"], check_forward_sde,
         t1_ve_forward_sde),
    definition(TABLE, "Rectified flow / Noise-level parameter", "s (the schedule's own time)"),
    cell(TABLE, "Rectified flow / Forward process", "r_s = (1 − s) r_0 + s ε", ["rf"],
         check_forward_process, t1_rf_forward_process),
    cell(TABLE, "Rectified flow / Forward SDE", "dr_s = −r_s/(1 − s) ds + √(2s/(1 − s)) dW_s",
         ["rf"], check_forward_sde, t1_rf_forward_sde),
)


def notes(measured: dict[str, float]) -> list[str]:
    """Markdown lines after the table: none."""
    return []
