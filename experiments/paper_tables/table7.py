"""Table 7 of the paper: unified summary of forward process, reverse process, and objective.

For VP-SDE, VP-ODE, VE-Karras and rectified flow: the forward process (as in Table 1), the reverse
process (as in Table 4) and the loss "up to a weight factor" (Table 6's loss without its weight).
Convention: noise levels as the paper writes them (``α_t = alpha(t)^2`` for VP schedules); reverse
time as in Table 4; a loss up to a weight factor agrees when the maximum-likelihood integrand is
the printed loss times the ML weight in the output's space, i.e. the printed loss is the ML
objective reweighted over time only.

Derived by the derivations of Tables 1, 4 and 6 (``check_forward_process``,
``check_reverse_process``, ``loss_error``). The cells are coded as printed here even where they
repeat an earlier table's cell, so that a difference between the tables would show.
"""

from __future__ import annotations

import jax.numpy as jnp

from .cells import cell
from .measure import VP_FAMILY, Context, sum_sq
from .table1 import check_forward_process
from .table4 import check_reverse_process
from .table6 import loss_error

TABLE = 7
TITLE = "Unified summary of forward process, reverse process, and objective"
COMPARED_WITH = (
    "the derivations of Tables 1, 4 and 6; a loss 'up to a weight factor' agrees when the ML "
    "integrand is the printed loss times the ML weight in the output's space (so the printed "
    "loss is the ML objective reweighted over time only)."
)


# -- the printed cells --------------------------------------------------------------------------


def t7_vp_sde_forward(x0, eps, alpha_t):
    """Table 7, row VP-SDE, column Forward Process: x_t = √α_t x_0 + √(1 − α_t) ε."""
    return jnp.sqrt(alpha_t) * x0 + jnp.sqrt(1 - alpha_t) * eps


def t7_vp_sde_reverse(x, t_rev, T, s):
    """Table 7, row VP-SDE, column Reverse Process: dx_t′ = [½x_t′ + s(x_t′, T−t′)] dt′ + dW_t′."""
    return 0.5 * x + s(x, T - t_rev), 1.0


def t7_vp_sde_loss(x0, eps, s_theta, alpha_t):
    """Table 7, row VP-SDE, column Loss (up to a weight factor): E ‖−ε/√(1−α_t) − s_θ(x_t, t)‖²."""
    return sum_sq(-eps / jnp.sqrt(1 - alpha_t) - s_theta)


def t7_vp_ode_forward(x0, eps, alpha_t):
    """Table 7, row VP-ODE, column Forward Process: x_t = √α_t x_0 + √(1 − α_t) ε."""
    return jnp.sqrt(alpha_t) * x0 + jnp.sqrt(1 - alpha_t) * eps


def t7_vp_ode_reverse(x, t_rev, T, s):
    """Table 7, row VP-ODE, column Reverse Process: dx_t′ = ½[x_t′ + s(x_t′, T − t′)] dt′."""
    return 0.5 * (x + s(x, T - t_rev)), 0.0


def t7_vp_ode_loss(x0, eps, s_theta, alpha_t):
    """Table 7, row VP-ODE, column Loss (up to a weight factor): E ‖−ε/√(1−α_t) − s_θ(x_t, t)‖²."""
    return sum_sq(-eps / jnp.sqrt(1 - alpha_t) - s_theta)


def t7_ve_forward(z0, eps, sigma):
    """Table 7, row VE-Karras, column Forward Process: z_σ = z_0 + σ ε."""
    return z0 + sigma * eps


def t7_ve_reverse(z, sigma_rev, Sigma, eps):
    """Table 7, row VE-Karras, column Reverse Process: dz_σ′ = −ε(z_σ′, Σ − σ′) dσ′."""
    return -eps(z, Sigma - sigma_rev), 0.0


def t7_ve_loss(z0, eps, eps_theta, sigma):
    """Table 7, row VE-Karras, column Loss (up to a weight factor): E ‖ε_θ(z_σ, σ) − ε‖²."""
    return sum_sq(eps_theta - eps)


def t7_rf_forward(r0, eps, s):
    """Table 7, row Rectified flow, column Forward Process: r_s = (1 − s) r_0 + s ε."""
    return (1 - s) * r0 + s * eps


def t7_rf_reverse(r, s_rev, v):
    """Table 7, row Rectified flow, column Reverse Process: dr_s′ = −v(r_s′, 1 − s′) ds′."""
    return -v(r, 1 - s_rev), 0.0


def t7_rf_loss(r0, eps, v_theta, s):
    """Table 7, row Rectified flow, column Loss (up to a weight factor): E ‖ε − r_0 − v_θ‖²."""
    return sum_sq(eps - r0 - v_theta)


# -- the checks ---------------------------------------------------------------------------------


def check_loss_up_to_weight(printed, ctx: Context, name: str) -> float:
    """An unweighted printed loss: ML integrand = w(t) × printed, with w the ML output weight."""
    return loss_error(printed, ctx, name, up_to_weight=True)


# -- the cells ----------------------------------------------------------------------------------

CELLS = (
    cell(TABLE, "VP-SDE / Forward Process", "x_t = √α_t x_0 + √(1 − α_t) ε", VP_FAMILY,
         check_forward_process, t7_vp_sde_forward),
    cell(TABLE, "VP-SDE / Reverse Process", "dx_t′ = [½x_t′ + s(x_t′, T − t′)] dt′ + dW_t′",
         ["vp"], check_reverse_process, t7_vp_sde_reverse, "vp_sde"),
    cell(TABLE, "VP-SDE / Loss (up to a weight factor)", "E ‖−ε/√(1 − α_t) − s_θ(x_t, t)‖²",
         ["vp"], check_loss_up_to_weight, t7_vp_sde_loss),
    cell(TABLE, "VP-ODE / Forward Process", "x_t = √α_t x_0 + √(1 − α_t) ε", VP_FAMILY,
         check_forward_process, t7_vp_ode_forward),
    cell(TABLE, "VP-ODE / Reverse Process", "dx_t′ = ½[x_t′ + s(x_t′, T − t′)] dt′", ["vp"],
         check_reverse_process, t7_vp_ode_reverse, "vp_ode"),
    cell(TABLE, "VP-ODE / Loss (up to a weight factor)", "E ‖−ε/√(1 − α_t) − s_θ(x_t, t)‖²",
         ["vp"], check_loss_up_to_weight, t7_vp_ode_loss),
    cell(TABLE, "VE-Karras / Forward Process", "z_σ = z_0 + σ ε", ["ve"], check_forward_process,
         t7_ve_forward),
    cell(TABLE, "VE-Karras / Reverse Process", "dz_σ′ = −ε(z_σ′, Σ − σ′) dσ′", ["ve"],
         check_reverse_process, t7_ve_reverse, "ve"),
    cell(TABLE, "VE-Karras / Loss (up to a weight factor)", "E ‖ε_θ(z_σ, σ) − ε‖²", ["ve"],
         check_loss_up_to_weight, t7_ve_loss),
    cell(TABLE, "Rectified flow / Forward Process", "r_s = (1 − s) r_0 + s ε", ["rf"],
         check_forward_process, t7_rf_forward),
    cell(TABLE, "Rectified flow / Reverse Process", "dr_s′ = −v(r_s′, 1 − s′) ds′", ["rf"],
         check_reverse_process, t7_rf_reverse, "rf"),
    cell(TABLE, "Rectified flow / Loss (up to a weight factor)", "E ‖ε − r_0 − v_θ(r_s, s)‖²",
         ["rf"], check_loss_up_to_weight, t7_rf_loss),
)


def notes(measured: dict[str, float]) -> list[str]:
    """Markdown lines after the table: none."""
    return []
