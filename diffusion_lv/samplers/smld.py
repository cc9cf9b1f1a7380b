"""Annealed Langevin dynamics (SMLD, Song & Ermon 2019) over a grid of noise levels.

At each level ``sigma_i`` (largest first) ``langevin_steps`` Langevin steps of
``dz = score dtau + sqrt(2) dW`` run with step ``langevin_step_size * sigma_i^2`` (the same
signal-to-noise ratio at every level); the state is never moved between levels by a reverse
step, only re-equilibrated. Wraps ``langevin.annealed_langevin`` with the VE score
``(D(z, sigma) - z) / sigma^2``. ``langevin_steps`` evaluations per level. It keeps no
trajectory (the levels' states stay inside ``annealed_langevin``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_lv import checks
from diffusion_lv.langevin import annealed_langevin
from diffusion_lv.samplers.base import Denoiser, check_sigmas, finish, score

Array = jax.Array


def check_smld(langevin_steps, langevin_step_size) -> None:
    checks.number("langevin_steps", langevin_steps, lo=1, integer=True)
    checks.number("langevin_step_size", langevin_step_size, lo=0.0, lo_open=True)


def sample_smld(
    denoiser: Denoiser,
    z: Array,
    key: Array,
    sigmas,
    *,
    langevin_steps: int = 5,
    langevin_step_size: float = 0.1,
) -> tuple[Array, dict]:
    """Langevin step at level ``sigma``: ``langevin_step_size * sigma^2``."""
    check_smld(langevin_steps, langevin_step_size)
    levels, final_denoise = check_sigmas(sigmas)
    # annealed_langevin's step at level i is epsilon * sigma_i^2 / sigma_min^2.
    epsilon = langevin_step_size * float(levels[-1]) ** 2
    z = annealed_langevin(
        lambda z, sigma: score(denoiser, z, sigma), z, key, jnp.asarray(levels, z.dtype),
        langevin_steps, epsilon,
    )
    return finish(denoiser, z, levels, final_denoise, langevin_steps * levels.shape[0])
