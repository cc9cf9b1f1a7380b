"""Heun's second-order method on the probability-flow ODE, with EDM's stochastic churn.

EDM (Karras et al. 2022, Algorithm 2): at level ``sigma_i`` inside ``[s_tmin, s_tmax]`` the
state is first pushed up to ``sigma_hat = sigma_i (1 + gamma)``,
``gamma = min(s_churn / steps, sqrt(2) - 1)``, by adding noise of variance
``(sigma_hat^2 - sigma_i^2) s_noise^2`` (a forward step: ``s_churn > 0`` is the split family's
Langevin churn with a Heun ODE step); then one Heun step of the ODE goes from ``sigma_hat`` to
``sigma_{i+1}``. ``s_churn = 0`` is deterministic Heun and draws no noise. The ODE step is
taken in ``step_schedule``'s coordinates (default VE, where it is EDM's
``dz/dsigma = (z - D) / sigma``). Two model evaluations per step; ``euler_last=True`` makes
the last step a one-evaluation Euler step (EDM does this for the step into ``sigma = 0``; here it
spends an odd budget exactly).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv import checks
from diffusion_lv.langevin import reverse_drift_from_denoiser
from diffusion_lv.samplers.base import (
    Denoiser,
    check_sigmas,
    denoise,
    finish,
    resolve_schedule,
)
from diffusion_lv.schedules import Schedule, VEKarras, expand_to

Array = jax.Array


def _ode_derivative(denoiser, schedule, x, t, sigma):
    """``dx/dt`` of the probability-flow ODE in the schedule's coordinates."""
    z = x / expand_to(schedule.alpha(t), x)
    return reverse_drift_from_denoiser(schedule, denoise(denoiser, z, sigma), x, t, 1.0)


def heun_step(
    denoiser: Denoiser,
    z: Array,
    sigma: Array,
    sigma_next: Array,
    schedule: Schedule,
    second_order: bool = True,
) -> Array:
    """One deterministic Heun (or Euler) step of the PF-ODE from ``sigma`` to ``sigma_next``."""
    t, t_next = schedule.t_from_sigma_ve(sigma), schedule.t_from_sigma_ve(sigma_next)
    x = z * expand_to(schedule.alpha(t), z)
    dt = t_next - t
    d = _ode_derivative(denoiser, schedule, x, t, sigma)
    x_next = x + dt * d
    if second_order:
        d_next = _ode_derivative(denoiser, schedule, x_next, t_next, sigma_next)
        x_next = x + 0.5 * dt * (d + d_next)
    return x_next / expand_to(schedule.alpha(t_next), z)


def churn_gammas(levels: np.ndarray, s_churn: float, s_tmin: float, s_tmax: float) -> np.ndarray:
    """EDM's per-step ``gamma_i`` (static: computed from the concrete grid)."""
    steps = levels.shape[0] - 1
    gamma = min(s_churn / max(steps, 1), math.sqrt(2.0) - 1.0)
    inside = (levels[:-1] >= s_tmin) & (levels[:-1] <= s_tmax)
    return np.where(inside, gamma, 0.0)


def check_heun(s_churn, s_tmin, s_tmax, s_noise, step_schedule) -> None:
    checks.number("s_churn", s_churn, lo=0.0)
    checks.number("s_noise", s_noise, lo=0.0)
    checks.number("s_tmin", s_tmin)
    if s_tmax != math.inf:  # inf: churn up to the largest level (EDM's default)
        checks.number("s_tmax", s_tmax)
    if not s_tmin <= s_tmax:
        raise ValueError(f"s_tmin={s_tmin!r} must be <= s_tmax={s_tmax!r}")
    resolve_schedule(step_schedule)


def sample_heun(
    denoiser: Denoiser,
    z: Array,
    key: Array,
    sigmas,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    step_schedule: str | Schedule | None = None,
    euler_last: bool = False,
    trajectory: bool = False,
) -> tuple[Array, dict]:
    """Heun / EDM stochastic Heun; ``2 * steps`` evaluations (one less with ``euler_last``)."""
    check_heun(s_churn, s_tmin, s_tmax, s_noise, step_schedule)
    levels, final_denoise = check_sigmas(sigmas)
    schedule = resolve_schedule(step_schedule) or VEKarras()
    steps = levels.shape[0] - 1
    gammas = churn_gammas(levels, s_churn, s_tmin, s_tmax)
    stochastic = bool(np.any(gammas > 0))

    # sigma_hat and sqrt(sigma_hat^2 - sigma^2) = sigma sqrt(gamma (2 + gamma)) in float64 NumPy:
    # the difference of squares, computed in float32 by XLA, can round below 0 (NaN).
    sigma_hats = levels[:-1] * (1.0 + gammas)
    churn_stds = s_noise * levels[:-1] * np.sqrt(gammas * (2.0 + gammas))

    def step(z, inputs, second_order):
        i, sigma_hat, sigma_next, churn_std = inputs
        if stochastic:
            noise = jax.random.normal(jax.random.fold_in(key, i), z.shape, z.dtype)
            z = z + churn_std * noise
        return heun_step(denoiser, z, sigma_hat, sigma_next, schedule, second_order)

    inputs = (
        jnp.arange(steps),
        jnp.asarray(sigma_hats, z.dtype),
        jnp.asarray(levels[1:], z.dtype),
        jnp.asarray(churn_stds, z.dtype),
    )
    num_heun = steps - 1 if euler_last else steps

    def body(z, inputs):
        z = step(z, inputs, True)
        return z, (z if trajectory else None)

    head = jax.tree.map(lambda a: a[:num_heun], inputs)
    z, path = jax.lax.scan(body, z, head)
    if euler_last:
        z = step(z, jax.tree.map(lambda a: a[-1], inputs), False)
        if trajectory:
            path = jnp.concatenate([path, z[None]], axis=0)
    nfe = 2 * num_heun + (1 if euler_last else 0)
    return finish(denoiser, z, levels, final_denoise, nfe, path if trajectory else None)
