"""Table 6 of the paper: training targets and losses under different parameterizations.

For VP, VE-Karras and rectified flow: the noise-state relation, the score in terms of the network
output (s_θ, ε_θ, v_θ), the conditional score ∇ log p(x_t | x_0) and the loss L_t with its weight.
Convention: noise levels as the paper writes them (``α_t = alpha(t)^2`` for VP schedules, σ and s
otherwise); losses are per-example integrands, ``‖·‖²`` summed over the data axes; the network is
imperfect (the exact prediction plus a 10% random error), so a loss is compared where it is not
zero. The printed weights ½, 1/σ and (1 − s)/s are the maximum-likelihood weight written in the
native output's space.

Derived by ``losses.perturb``, ``convert`` (network output → score, ``from_x0``), autodiff of log
N(x_t; alpha x0, sigma^2 I), and the ML integrand in score space (g²/2 ‖s_θ − ∇ log p(x_t|x_0)‖²,
the paper's eq. 19) and x0 space (``losses.weighting('ml')`` ‖D_θ − x0‖²). Table 7 reuses
``loss_error`` and the ML weight in the output's space for its losses up to a weight factor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.stats import norm

from diffusion_lv import convert, losses

from .cells import cell, definition
from .measure import (
    DATA_DIM,
    NATIVE,
    VP_FAMILY,
    Array,
    Context,
    Points,
    paper_level,
    rel_error,
    schedule_of,
    sum_sq,
)
from .table1 import check_forward_process

TABLE = 6
TITLE = "Training targets and losses under different parameterizations"
COMPARED_WITH = (
    "`losses.perturb`; `convert.convert_prediction` (network output → score) on an imperfect "
    "network (exact prediction + 10% random error); ∇ log p(x_t|x_0) by autodiff of "
    "log N(x_t; alpha x0, sigma^2 I) and by `convert.from_x0(x0, 'score')`; the maximum-"
    "likelihood integrand g²/2 ‖s_θ − ∇ log p(x_t|x_0)‖² (eq. 19, g² from the schedule) and "
    "`losses.weighting('ml')` · ‖D_θ − x0‖² (x0 space, as `losses.diffusion_loss`). 'Loss "
    "weight' compares the printed weight with the ML weight written in the output's space, "
    "w_ML / k², where the output error is k times the denoiser error (k from `convert.from_x0`)."
)


# -- the printed cells --------------------------------------------------------------------------


def t6_vp_relation(x0, eps, alpha_t):
    """Table 6, row VP, column Noise-state relation: x_t = √α_t x_0 + √(1 − α_t) ε."""
    return jnp.sqrt(alpha_t) * x0 + jnp.sqrt(1 - alpha_t) * eps


def t6_vp_conditional_score(eps, alpha_t):
    """Table 6, row VP, column ∇ log p(x_t | x_0): −ε/√(1 − α_t)."""
    return -eps / jnp.sqrt(1 - alpha_t)


def t6_vp_weight(alpha_t):
    """Table 6, row VP, column Loss L_t: the weight ½ in front of the score-space norm."""
    return 0.5 * jnp.ones_like(alpha_t)


def t6_vp_loss(x0, eps, s_theta, alpha_t):
    """Table 6, row VP, column Loss L_t: ½ E ‖−ε/√(1 − α_t) − s_θ(x_t, t)‖²."""
    return 0.5 * sum_sq(-eps / jnp.sqrt(1 - alpha_t) - s_theta)


def t6_ve_relation(z0, eps, sigma):
    """Table 6, row VE-Karras, column Noise-state relation: z_σ = z_0 + σ ε."""
    return z0 + sigma * eps


def t6_ve_score_from_network(z, eps_theta, sigma):
    """Table 6, row VE-Karras, column s_θ w.r.t. NN: −ε_θ(z_σ, σ)/σ."""
    return -eps_theta / sigma


def t6_ve_conditional_score(eps, sigma):
    """Table 6, row VE-Karras, column ∇ log p(x_t | x_0): −ε/σ."""
    return -eps / sigma


def t6_ve_weight(sigma):
    """Table 6, row VE-Karras, column Loss L_t: the weight 1/σ in front of the noise-space norm."""
    return 1 / sigma


def t6_ve_loss(z0, eps, eps_theta, sigma):
    """Table 6, row VE-Karras, column Loss L_t: 1/σ E ‖ε_θ(z_σ, σ) − ε‖²."""
    return 1 / sigma * sum_sq(eps_theta - eps)


def t6_rf_relation(r0, eps, s):
    """Table 6, row Rectified flow, column Noise-state relation: r_s = (1 − s) r_0 + s ε."""
    return (1 - s) * r0 + s * eps


def t6_rf_score_from_network(r, v_theta, s):
    """Table 6, row Rectified flow, column s_θ w.r.t. NN: (−v_θ(r_s, s)(1 − s) − r_s)/s."""
    return (-v_theta * (1 - s) - r) / s


def t6_rf_conditional_score(eps, s):
    """Table 6, row Rectified flow, column ∇ log p(x_t | x_0): −ε/s."""
    return -eps / s


def t6_rf_weight(s):
    """Table 6, row Rectified flow, column Loss L_t: the weight (1 − s)/s on the velocity norm."""
    return (1 - s) / s


def t6_rf_loss(r0, eps, v_theta, s):
    """Table 6, row Rectified flow, column Loss L_t: (1 − s)/s E ‖ε − r_0 − v_θ(r_s, s)‖²."""
    return (1 - s) / s * sum_sq(eps - r0 - v_theta)


# -- the maximum-likelihood objective -----------------------------------------------------------


def _denoiser_step_coefficient(name: str, kind: str, t: Array) -> Array:
    """``k(t)``: a prediction of ``kind`` is affine in the denoiser output D with slope k."""
    schedule, zeros = schedule_of(name), jnp.zeros((t.shape[0], 1))
    one = convert.from_x0(jnp.ones_like(zeros), kind, zeros, t, schedule)
    return (one - convert.from_x0(zeros, kind, zeros, t, schedule))[:, 0]


# The ML weight does not read sigma_data (only the edm weighting does).
UNUSED_SIGMA_DATA = convert.DEFAULT_SIGMA_DATA


def ml_weight_in_output_space(name: str, kind: str, t: Array) -> Array:
    """``w_ML(t) / k(t)^2``: the maximum-likelihood weight on ``‖prediction error‖²``.

    losses.weighting('ml') is the ML weight on ``‖D_theta - x0‖²`` (``g^2 alpha^2 / 2 sigma^4``);
    a prediction error is ``k`` times the denoiser error.
    """
    w_x0 = losses.weighting("ml", schedule_of(name), t, UNUSED_SIGMA_DATA)
    return w_x0 / jnp.square(_denoiser_step_coefficient(name, kind, t))


def ml_loss_integrands(ctx: Context, name: str, kind: str, p: Points, output: Array):
    """The ML integrand for a network output, in score space and in x0 space (summed ‖·‖²).

    Score space: ``g^2/2 ‖s_theta - ∇ log p(x_t | x0)‖²`` (the paper's eq. 19, with g^2 from the
    schedule); x0 space: ``w_ML ‖D_theta - x0‖²`` as losses.diffusion_loss computes it.
    """
    schedule = schedule_of(name)
    s_theta = convert.convert_prediction(output, kind, "score", p.x, p.t, schedule)[0]
    conditional = convert.from_x0(p.x0, "score", p.x, p.t, schedule)
    score_space = 0.5 * schedule.g2(p.t) * jnp.sum(jnp.square(s_theta - conditional), -1)
    denoised = convert.to_x0(output, kind, p.x, p.t, schedule)
    x0_space = (
        losses.weighting("ml", schedule, p.t, UNUSED_SIGMA_DATA) * DATA_DIM
        * losses.squared_error(denoised, p.x0)
    )
    return score_space, x0_space


def imperfect_native_output(ctx: Context, name: str) -> tuple[Points, str, Array]:
    """The points of ``name``, its native output kind, and an imperfect network's output there."""
    p, kind = ctx.points(name), NATIVE[name]
    return p, kind, ctx.imperfect_output(name, kind, p)


def loss_error(printed, ctx: Context, name: str, up_to_weight: bool) -> float:
    """A printed loss integrand on an imperfect native network against the ML integrand.

    ``up_to_weight``: the printed loss is unweighted (Table 7), so the ML integrand must be
    ``w(t)`` times it, with ``w`` the ML weight in the output's space.
    """
    p, kind, output = imperfect_native_output(ctx, name)
    value = printed(p.x0, p.eps, output, paper_level(name, p.tc))
    if up_to_weight:
        value = ml_weight_in_output_space(name, kind, p.t)[:, None] * value
    return max(rel_error(value, d) for d in ml_loss_integrands(ctx, name, kind, p, output))


# -- the checks ---------------------------------------------------------------------------------


def check_score_from_network(printed, ctx: Context, name: str) -> float:
    """A Table 6 's_θ w.r.t. NN' cell, on an imperfect network, against convert."""
    p, kind, output = imperfect_native_output(ctx, name)
    derived = convert.convert_prediction(output, kind, "score", p.x, p.t, ctx.schedule(name))[0]
    value = printed(p.x, output, p.tc)
    return rel_error(value, derived)


def check_conditional_score(printed, ctx: Context, name: str) -> float:
    """∇ log p(x_t | x_0) against autodiff of log N(x_t; alpha x0, sigma^2 I) and convert."""
    schedule, p = ctx.schedule(name), ctx.points(name)
    alpha, sigma = schedule.alpha(p.tc), schedule.sigma(p.tc)
    log_density = lambda x: jnp.sum(norm.logpdf(x, alpha * p.x0, sigma))
    autodiff = jax.grad(log_density)(p.x)
    from_denoiser = convert.from_x0(p.x0, "score", p.x, p.t, schedule)
    value = printed(p.eps, paper_level(name, p.tc))
    return max(rel_error(value, autodiff), rel_error(value, from_denoiser))


def check_loss_weight(printed, ctx: Context, name: str) -> float:
    """The printed weight against the ML weight written in the native output's space."""
    p = ctx.points(name)
    derived = ml_weight_in_output_space(name, NATIVE[name], p.t)
    return rel_error(printed(paper_level(name, p.tc)), derived)


def check_loss(printed, ctx: Context, name: str) -> float:
    """A printed weighted loss integrand against the ML integrand in score and x0 space."""
    return loss_error(printed, ctx, name, up_to_weight=False)


# -- the cells ----------------------------------------------------------------------------------

CELLS = (
    definition(TABLE, "all rows / Network output", "s_θ(x_t, t), ε_θ(z_σ, σ), v_θ(r_s, s); "
               "VP's s_θ w.r.t. NN is s_θ itself"),
    cell(TABLE, "VP / Noise-state relation", "x_t = √α_t x_0 + √(1 − α_t) ε", VP_FAMILY,
         check_forward_process, t6_vp_relation),
    cell(TABLE, "VP / ∇ log p(x_t | x_0)", "−ε/√(1 − α_t)", VP_FAMILY, check_conditional_score,
         t6_vp_conditional_score),
    cell(TABLE, "VP / Loss weight", "½ (on ‖score error‖²)", ["vp"], check_loss_weight,
         t6_vp_weight),
    cell(TABLE, "VP / Loss L_t", "½ E ‖−ε/√(1 − α_t) − s_θ(x_t, t)‖²", ["vp"], check_loss,
         t6_vp_loss),
    cell(TABLE, "VE-Karras / Noise-state relation", "z_σ = z_0 + σ ε", ["ve"],
         check_forward_process, t6_ve_relation),
    cell(TABLE, "VE-Karras / s_θ w.r.t. NN", "−ε_θ(z_σ, σ)/σ", ["ve"], check_score_from_network,
         t6_ve_score_from_network),
    cell(TABLE, "VE-Karras / ∇ log p(x_t | x_0)", "−ε/σ", ["ve"], check_conditional_score,
         t6_ve_conditional_score),
    cell(TABLE, "VE-Karras / Loss weight", "1/σ (on ‖noise error‖²)", ["ve"], check_loss_weight,
         t6_ve_weight),
    cell(TABLE, "VE-Karras / Loss L_t", "1/σ E ‖ε_θ(z_σ, σ) − ε‖²", ["ve"], check_loss,
         t6_ve_loss),
    cell(TABLE, "Rectified flow / Noise-state relation", "r_s = (1 − s) r_0 + s ε", ["rf"],
         check_forward_process, t6_rf_relation),
    cell(TABLE, "Rectified flow / s_θ w.r.t. NN", "(−v_θ(r_s, s)(1 − s) − r_s)/s", ["rf"],
         check_score_from_network, t6_rf_score_from_network),
    cell(TABLE, "Rectified flow / ∇ log p(x_t | x_0)", "−ε/s", ["rf"], check_conditional_score,
         t6_rf_conditional_score),
    cell(TABLE, "Rectified flow / Loss weight", "(1 − s)/s (on ‖velocity error‖²)", ["rf"],
         check_loss_weight, t6_rf_weight),
    cell(TABLE, "Rectified flow / Loss L_t", "(1 − s)/s E ‖ε − r_0 − v_θ(r_s, s)‖²", ["rf"],
         check_loss, t6_rf_loss),
)


def notes(measured: dict[str, float]) -> list[str]:
    """Markdown lines after the table: the printed weights are the ML weight."""
    return [
        "",
        "The printed weights ½, 1/σ and (1 − s)/s are exactly the maximum-likelihood weight "
        "g²/2 ‖s_θ − ∇ log p(x_t|x_0)‖² written in score, noise and velocity space (Table 1: "
        "g² = 1, 2σ, 2s/(1 − s)); in x0 space all three are w_ML = g² alpha² / (2 sigma⁴).",
    ]
