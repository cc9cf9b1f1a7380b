"""Table 4 of the paper: reverse diffusion processes across model types.

For VP-SDE, VP-ODE, VE-Karras and rectified flow: the reverse process in reverse time and the
relation of the network each one models to the score. Convention: reverse time runs from the end
of the forward process, ``t′ = T − t``, ``σ′ = Σ − σ``, ``s′ = 1 − s`` (T, Σ the schedule's
``t_max``; 1 for rectified flow), and the reverse processes are the reverse splits of Table 3 at
the row's rate c (VP-SDE 2, the others 1). The networks ``s``, ``ε``, ``v`` are the exact
predictions in each process's own variables, passed as functions (x, forward time) -> prediction;
Reverse Process cells return (drift, diffusion coefficient) per unit reverse time.

Derived by ``langevin.reverse_split_drift`` (score form), ``-langevin.reverse_drift_from_denoiser``
(denoiser form, the one samplers integrate) and ``langevin.reverse_diffusion``, at the forward
time ``T − t′`` the printed formula evaluates. Table 7 reuses ``check_reverse_process``.
"""

from __future__ import annotations

from diffusion_lv import langevin

from .cells import cell, definition
from .measure import NATIVE, SPLIT_RATE, Context, rel_error, sde_error

TABLE = 4
TITLE = "Reverse diffusion processes across model types"
COMPARED_WITH = (
    "`langevin.reverse_split_drift` (score form), `-langevin.reverse_drift_from_denoiser` "
    "(denoiser form) and `langevin.reverse_diffusion` at the rate c of the row, at forward time "
    "t = T − t′; the network functions ε, v are the oracle's exact predictions "
    "(`convert.from_x0` of the exact denoiser)."
)


# -- the printed cells --------------------------------------------------------------------------


def t4_vp_sde_reverse(x, t_rev, T, s):
    """Table 4, row VP-SDE, column Reverse Process: dx_t′ = [½x_t′ + s(x_t′, T−t′)] dt′ + dW_t′."""
    return 0.5 * x + s(x, T - t_rev), 1.0


def t4_vp_ode_reverse(x, t_rev, T, s):
    """Table 4, row VP-ODE, column Reverse Process: dx_t′ = ½[x_t′ + s(x_t′, T − t′)] dt′."""
    return 0.5 * (x + s(x, T - t_rev)), 0.0


def t4_ve_reverse(z, sigma_rev, Sigma, eps):
    """Table 4, row VE-Karras, column Reverse Process: dz_σ′ = −ε(z_σ′, Σ − σ′) dσ′."""
    return -eps(z, Sigma - sigma_rev), 0.0


def t4_rf_reverse(r, s_rev, v):
    """Table 4, row Rectified flow, column Reverse Process: dr_s′ = −v(r_s′, 1 − s′) ds′."""
    return -v(r, 1 - s_rev), 0.0


def t4_ve_network(z, sigma, s_z):
    """Table 4, row VE-Karras, column Relation to Score: ε(z, σ) = −σ s_z(z, σ)."""
    return -sigma * s_z


def t4_rf_network(r, s, s_r):
    """Table 4, row Rectified flow, column Relation to Score: v(r, s) = −(s s_r(r, s) + r)/(1 − s).

    The blog writes r_{s′} for the r in the numerator: the same state, in reverse-time notation.
    """
    return -(s * s_r + r) / (1 - s)


# -- the checks ---------------------------------------------------------------------------------


def check_reverse_process(printed, row: str, ctx: Context, name: str) -> float:
    """A reverse process in reverse time t' = T - t against langevin.py's reverse drifts at rate c.

    Compared with ``reverse_split_drift`` (score form) and ``-reverse_drift_from_denoiser``
    (denoiser form, the one samplers integrate), and ``reverse_diffusion``.
    """
    schedule, p, c = ctx.schedule(name), ctx.points(name), SPLIT_RATE[row]
    end = schedule.t_max if name != "rf" else 1.0  # T, Σ, or 1 for rectified flow
    t_rev = end - p.tc
    if name == "rf":
        p_drift, p_diffusion = printed(p.x, t_rev, ctx.network(name, "velocity"))
    else:
        network = ctx.network(name, NATIVE[name])
        p_drift, p_diffusion = printed(p.x, t_rev, end, network)
    # The derivation at the forward time the printed formula evaluates (T - t' rounds t).
    t = (end - t_rev)[:, 0]
    score = ctx.network(name, "score")
    denoised = ctx.oracle.denoise(p.x, t, schedule)
    g2, diffusion = schedule.g2(t), langevin.reverse_diffusion(schedule, t, c)
    by_score = langevin.reverse_split_drift(schedule, score, p.x, t, c)
    by_denoiser = -langevin.reverse_drift_from_denoiser(schedule, denoised, p.x, t, c)
    return max(
        sde_error((p_drift, p_diffusion), (drift, diffusion), p.x, g2)
        for drift in (by_score, by_denoiser)
    )


def check_network_relation(printed, ctx: Context, name: str) -> float:
    """A Table 4 'Relation to Score' cell, from the exact score, against the exact prediction."""
    p = ctx.points(name)
    score = ctx.exact(name, "score", p)
    return rel_error(printed(p.x, p.tc, score), ctx.exact(name, NATIVE[name], p))


# -- the cells ----------------------------------------------------------------------------------

CELLS = (
    cell(TABLE, "VP-SDE / Reverse Process", "dx_t′ = [½x_t′ + s(x_t′, T − t′)] dt′ + dW_t′",
         ["vp"], check_reverse_process, t4_vp_sde_reverse, "vp_sde"),
    cell(TABLE, "VP-ODE / Reverse Process", "dx_t′ = ½[x_t′ + s(x_t′, T − t′)] dt′", ["vp"],
         check_reverse_process, t4_vp_ode_reverse, "vp_ode"),
    cell(TABLE, "VE-Karras / Reverse Process", "dz_σ′ = −ε(z_σ′, Σ − σ′) dσ′", ["ve"],
         check_reverse_process, t4_ve_reverse, "ve"),
    cell(TABLE, "VE-Karras / Relation to Score", "ε(z, σ) = −σ s_z(z, σ)", ["ve"],
         check_network_relation, t4_ve_network),
    cell(TABLE, "Rectified flow / Reverse Process", "dr_s′ = −v(r_s′, 1 − s′) ds′", ["rf"],
         check_reverse_process, t4_rf_reverse, "rf"),
    cell(TABLE, "Rectified flow / Relation to Score", "v(r, s) = −(s s_r(r, s) + r)/(1 − s)",
         ["rf"], check_network_relation, t4_rf_network),
    definition(TABLE, "VP-SDE, VP-ODE / Relation to Score", "s(x, t) = s_x(x, t)"),
    definition(TABLE, "all rows / Reverse Time, Reverse time domain",
               "t′ = T − t ∈ [0, T]; σ′ = Σ − σ ∈ [0, Σ]; s′ = 1 − s ∈ [0, 1] "
               "(used to evaluate the Reverse Process cells)"),
)


def notes(measured: dict[str, float]) -> list[str]:
    """Markdown lines after the table: the blog's notation for the velocity's numerator."""
    return [
        "",
        "The blog's version writes r_{s′} for the r in the numerator of v(r, s): the same state "
        "in reverse-time notation, not a different formula.",
    ]
