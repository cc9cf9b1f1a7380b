"""Step grids: decreasing canonical noise levels ``sigma_ve`` for the samplers.

A grid is a NumPy float64 array of ``num_levels`` strictly decreasing positive noise levels from
``sigma_max`` to ``sigma_min`` (both included), computed once at trace time so that it becomes a
constant of the compiled sampler. The end of the schedule is explicit: ``with_final_zero``
appends ``0``, which every sampler reads as "finish with the denoiser ``D(z, sigma_min)``" (one
more model evaluation) instead of stepping into the singular end ``sigma = 0``.

Named grids (``GRIDS``):

* ``karras``: ``(sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
  (EDM, Karras et al. 2022); ``rho = 1`` is uniform in sigma, ``rho -> inf`` uniform in log sigma.
* ``log_snr``: uniform in log-SNR ``lambda = -2 log sigma_ve`` (geometric in sigma, as SMLD).
* ``uniform_t``: uniform in the time variable of a given schedule (DDPM-style uniform t for VP).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv import checks
from diffusion_lv.schedules import Schedule

GRIDS = ("karras", "log_snr", "uniform_t")


def karras_sigmas(num_levels: int, sigma_min: float, sigma_max: float, rho: float = 7.0):
    ramp = np.linspace(0.0, 1.0, num_levels)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def log_snr_sigmas(num_levels: int, sigma_min: float, sigma_max: float):
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_levels))


def uniform_t_sigmas(num_levels: int, sigma_min: float, sigma_max: float, schedule: Schedule):
    # Evaluated eagerly even inside an outer jit: the grid is a constant of the program.
    with jax.ensure_compile_time_eval():
        t_hi = float(schedule.t_from_sigma_ve(jnp.asarray(sigma_max)))
        t_lo = float(schedule.t_from_sigma_ve(jnp.asarray(sigma_min)))
        ts = np.linspace(t_hi, t_lo, num_levels)
        return np.asarray(schedule.sigma_ve(jnp.asarray(ts)), np.float64)


def check_grid_name(grid: str) -> None:
    checks.choice("grid", grid, GRIDS)


def get_sigmas(
    grid: str,
    num_levels: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    schedule: Schedule | None = None,
    with_final_zero: bool = False,
) -> np.ndarray:
    """The named grid with ``num_levels`` positive levels (plus a trailing 0 if asked)."""
    check_grid_name(grid)
    if num_levels < 1:
        raise ValueError(f"num_levels={num_levels!r} must be >= 1")
    if not 0.0 < sigma_min < sigma_max:
        raise ValueError(
            f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}"
        )
    if num_levels == 1:
        sigmas = np.array([sigma_max], np.float64)
    elif grid == "karras":
        sigmas = karras_sigmas(num_levels, sigma_min, sigma_max, rho)
    elif grid == "log_snr":
        sigmas = log_snr_sigmas(num_levels, sigma_min, sigma_max)
    else:
        if schedule is None:
            raise ValueError("grid='uniform_t' needs the schedule whose time is uniform")
        sigmas = uniform_t_sigmas(num_levels, sigma_min, sigma_max, schedule)
    sigmas = np.array(sigmas, np.float64)  # a writable copy (never a view of a JAX array)
    # Pin the ends exactly (rounding in the power/exp maps moves them by an ulp).
    sigmas[0] = sigma_max
    if num_levels > 1:
        sigmas[-1] = sigma_min
    if with_final_zero:
        sigmas = np.append(sigmas, 0.0)
    return sigmas
