"""Annealed Langevin dynamics (SMLD, Song & Ermon 2019) over a grid of noise levels.

At each level ``sigma_i`` (largest first) ``langevin_steps`` Langevin steps of
``dz = score dtau + sqrt(2) dW`` run with step ``step_size * sigma_i^2`` (the same
signal-to-noise ratio at every level); the state is never moved between levels by a reverse
step, only re-equilibrated. Wraps ``langevin.annealed_langevin`` with the VE score
``(D(z, sigma) - z) / sigma^2``. ``langevin_steps`` evaluations per level.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_lv.langevin import annealed_langevin
from diffusion_lv.samplers.base import Denoiser, check_sigmas, finish

Array = jax.Array


def sample_smld(
    denoiser: Denoiser,
    z: Array,
    key: Array,
    sigmas,
    langevin_steps: int = 5,
    step_size: float = 0.1,
) -> tuple[Array, dict]:
    if langevin_steps < 1:
        raise ValueError(f"langevin_steps={langevin_steps!r} must be >= 1")
    if not step_size > 0:
        raise ValueError(f"step_size={step_size!r} must be > 0")
    levels, final_denoise = check_sigmas(sigmas)

    def ve_score(z, sigma):
        return (denoiser(z, sigma) - z) / jnp.square(sigma).reshape((-1,) + (1,) * (z.ndim - 1))

    # annealed_langevin's step at level i is epsilon * sigma_i^2 / sigma_min^2.
    epsilon = step_size * float(levels[-1]) ** 2
    z = annealed_langevin(
        ve_score, z, key, jnp.asarray(levels, z.dtype), langevin_steps, epsilon
    )
    return finish(denoiser, z, levels, final_denoise, langevin_steps * levels.shape[0])
