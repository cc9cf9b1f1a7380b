"""Predictor-corrector: a one-step predictor plus Langevin corrector steps at each noise level.

A corrector step is a Langevin step at fixed noise level ``sigma``,
``z <- z + eps score + sqrt(2 eps) xi`` with ``score = (D(z, sigma) - z) / sigma^2``: it is the
identity on ``p_sigma`` (the paper's point), so it can only pull the predictor's state back
towards the right marginal. Step size, two choices:

* ``snr`` given: score_sde's target signal-to-noise ratio ``eps = 2 (snr ||xi|| / ||score||)^2``
  with the norms averaged over the batch as score_sde does (per-example norms are unstable in
  low dimension, where ``||score||`` of one example can be near 0);
* ``snr=None``: the Langevin step of the split at the predictor's own step length, i.e. the
  fixed-``sigma`` Langevin dynamics ``dz = g^2/2 score dtau + g dW`` (``g^2 = 2 sigma`` in VE)
  run for ``dtau = sigma_i - sigma_{i+1}``: ``eps = sigma_i (sigma_i - sigma_{i+1})``.
  Per example, no batch coupling.

As in score_sde the corrector runs at the current level ``sigma_i`` before the predictor steps
to ``sigma_{i+1}``. ``1 + corrector_steps`` evaluations per step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion_lv.samplers.base import Denoiser, denoise, run_one_step_sampler

Array = jax.Array


def _norm(a: Array) -> Array:
    return jnp.sqrt(jnp.sum(jnp.square(a.reshape(a.shape[0], -1)), axis=-1))


def langevin_corrector_step(
    denoiser: Denoiser,
    z: Array,
    sigma: Array,
    key: Array,
    snr: float | None = None,
    split_step: Array | None = None,
) -> Array:
    """One Langevin step at level ``sigma``: SNR-matched (``snr``) or of size ``split_step``."""
    score = (denoise(denoiser, z, sigma) - z) / jnp.square(sigma)
    noise = jax.random.normal(key, z.shape, z.dtype)
    if snr is None:
        step = split_step
    else:
        ratio = snr * jnp.mean(_norm(noise)) / jnp.mean(_norm(score))
        step = 2.0 * jnp.square(ratio)
    return z + step * score + jnp.sqrt(2.0 * step) * noise


def sample_pc(
    denoiser: Denoiser,
    z: Array,
    key: Array,
    sigmas,
    predictor: Callable[[Array, Array, Array, Array], Array],
    corrector_steps: int = 1,
    snr: float | None = 0.16,
    trajectory: bool = False,
) -> tuple[Array, dict]:
    """``predictor(z, sigma, sigma_next, key) -> z_next`` is any one-evaluation step."""
    if corrector_steps < 0:
        raise ValueError(f"corrector_steps={corrector_steps!r} must be >= 0")
    if snr is not None and not snr > 0:
        raise ValueError(f"snr={snr!r} must be > 0")

    def step(z, sigma, sigma_next, key):
        split_step = sigma * (sigma - sigma_next)

        def correct(j, z):
            key_j = jax.random.fold_in(key, j + 1)
            return langevin_corrector_step(denoiser, z, sigma, key_j, snr, split_step)

        z = jax.lax.fori_loop(0, corrector_steps, correct, z)
        return predictor(z, sigma, sigma_next, jax.random.fold_in(key, 0))

    return run_one_step_sampler(
        step, denoiser, z, key, sigmas, evals_per_step=1 + corrector_steps, trajectory=trajectory
    )
