"""The reverse split of Langevin dynamics by Euler-Maruyama, in any schedule's coordinates.

With rate ``c >= 1`` the reverse split of a schedule (forward SDE ``dx = f x dt + g dW``) is
``dx = (c g^2/2 score - f x) dtau + sqrt(c - 1) g dW`` while ``t`` decreases by ``dtau``:
``c = 1`` is the probability-flow ODE (Euler), ``c = 2`` the reverse SDE (Euler-Maruyama),
``c > 2`` adds Langevin churn. The step is taken in ``step_schedule``'s own state ``x = alpha z``
and time ``t`` (the grid's ``sigma_ve`` levels mapped to its times), so Euler in VP and Euler in
VE are different integrators of the same process: on a single data point the VE and
rectified-flow trajectories are straight lines (Euler is exact) while VP's bend (the paper's
Fig. 5). In VE coordinates at ``c = 1`` this is k-diffusion's / EDM's Euler,
``z' = z + (sigma' - sigma) (z - D) / sigma``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv.langevin import is_one, reverse_drift_from_denoiser
from diffusion_lv.samplers.adams import adams_plan
from diffusion_lv.samplers.base import (
    Denoiser,
    check_rate,
    denoise,
    resolve_schedule,
    run_one_step_sampler,
)
from diffusion_lv.samplers.multistep import Plan
from diffusion_lv.schedules import Schedule, VEKarras, expand_to

Array = jax.Array


def split_euler_step(
    denoiser: Denoiser,
    z: Array,
    sigma: Array,
    sigma_next: Array,
    key: Array,
    c: float = 1.0,
    step_schedule: Schedule | None = None,
) -> Array:
    """One Euler-Maruyama step of the reverse split from ``sigma`` to ``sigma_next`` (VE levels).

    The state is moved to ``step_schedule``'s coordinates, stepped there with
    ``langevin.reverse_drift_from_denoiser`` and moved back to ``z``.
    """
    schedule = VEKarras() if step_schedule is None else step_schedule
    t, t_next = schedule.t_from_sigma_ve(sigma), schedule.t_from_sigma_ve(sigma_next)
    x = z * expand_to(schedule.alpha(t), z)
    drift = reverse_drift_from_denoiser(schedule, denoise(denoiser, z, sigma), x, t, c)
    dt = t - t_next
    x_next = x - dt * drift
    if not is_one(c):
        noise = jax.random.normal(key, z.shape, z.dtype)
        x_next = x_next + jnp.sqrt((c - 1.0) * schedule.g2(t) * dt) * noise
    return x_next / expand_to(schedule.alpha(t_next), z)


def check_euler(c, step_schedule) -> None:
    check_rate(c)
    resolve_schedule(step_schedule)


def sample_euler(
    denoiser: Denoiser,
    z: Array,
    key: Array,
    sigmas,
    *,
    c: float = 1.0,
    step_schedule: str | Schedule | None = None,
    trajectory: bool = False,
) -> tuple[Array, dict]:
    """Euler (c = 1) / Euler-Maruyama (c > 1) on the reverse split, one model call per step."""
    check_euler(c, step_schedule)
    schedule = resolve_schedule(step_schedule)

    def step(z, sigma, sigma_next, key):
        return split_euler_step(denoiser, z, sigma, sigma_next, key, c, schedule)

    return run_one_step_sampler(step, denoiser, z, key, sigmas, trajectory=trajectory)


def euler_plan(levels, xp=np, *, c: float = 1.0, step_schedule=None) -> Plan:
    """Euler on the PF-ODE in VE coordinates as a one-step ``multistep.Plan``
    (``z' = z + (sigma' - sigma) eps``: first-order Adams), for grid fitting; other settings
    have none."""
    schedule = resolve_schedule(step_schedule)
    if not is_one(c) or not (schedule is None or schedule.name == "ve"):
        raise ValueError(
            f"c={c!r}, step_schedule={step_schedule!r}: only deterministic Euler in VE "
            "coordinates (c=1, step_schedule None or 've') is a linear plan"
        )
    return adams_plan(levels, xp, order=1, order_limit="history")
