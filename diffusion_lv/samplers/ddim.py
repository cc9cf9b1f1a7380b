"""DDIM(eta) and DDPM ancestral sampling: exact Gaussian transitions between grid levels.

Given the denoised estimate ``D = E[x0 | z_sigma]``, the step to ``sigma' < sigma`` draws from
a Gaussian that keeps the marginal ``q(z_sigma' | x0 = D) = N(D, sigma'^2 I)`` exactly:
``z' = D + sigma_down (z - D) / sigma + sigma_up xi`` with ``sigma_down^2 + sigma_up^2 = sigma'^2``
and ``sigma_up = eta sigma' sqrt(1 - sigma'^2 / sigma^2)``. ``eta = 1`` is the DDPM posterior
``q(z_sigma' | z_sigma, x0 = D)`` (ancestral sampling); ``eta = 0`` is deterministic DDIM, which
in VE coordinates is exactly the Euler step of the probability-flow ODE. Written in VE
coordinates the transition does not depend on the schedule (VP's ``alpha``-bar form divided by
``alpha``). ``eta = 0`` draws no noise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_lv import checks
from diffusion_lv.samplers.base import Denoiser, denoise, is_zero, run_one_step_sampler

Array = jax.Array


def check_eta(eta) -> None:
    """``eta`` in ``[0, 1]`` (0: DDIM, 1: DDPM ancestral)."""
    checks.number("eta", eta, lo=0.0, hi=1.0)


def ddim_moments(z: Array, denoised: Array, sigma, sigma_next, eta: float = 0.0):
    """The mean and standard deviation of the DDIM(eta) transition from ``z`` at ``sigma`` to
    ``sigma_next`` given the denoised estimate (``eta = 1``: the DDPM posterior, mean
    ``r z + (1 - r) denoised`` and variance ``r (sigma^2 - sigma_next^2)``, ``r =
    sigma_next^2 / sigma^2``). The standard deviation is 0 for a static ``eta = 0``."""
    eps = (z - denoised) / sigma
    if is_zero(eta):
        return denoised + sigma_next * eps, 0.0
    ratio2 = jnp.square(sigma_next / sigma)
    sigma_up = eta * sigma_next * jnp.sqrt(1.0 - ratio2)
    sigma_down = sigma_next * jnp.sqrt(1.0 - eta**2 * (1.0 - ratio2))
    return denoised + sigma_down * eps, sigma_up


def ddim_step(
    denoiser: Denoiser, z: Array, sigma: Array, sigma_next: Array, key: Array, eta: float = 0.0
) -> Array:
    mean, std = ddim_moments(z, denoise(denoiser, z, sigma), sigma, sigma_next, eta)
    if is_zero(eta):
        return mean
    return mean + std * jax.random.normal(key, z.shape, z.dtype)


def sample_ddim(
    denoiser: Denoiser, z: Array, key: Array, sigmas, *, eta: float = 0.0,
    trajectory: bool = False,
) -> tuple[Array, dict]:
    check_eta(eta)

    def step(z, sigma, sigma_next, key):
        return ddim_step(denoiser, z, sigma, sigma_next, key, eta)

    return run_one_step_sampler(step, denoiser, z, key, sigmas, trajectory=trajectory)


def sample_ddpm(
    denoiser: Denoiser, z: Array, key: Array, sigmas, *, trajectory: bool = False
) -> tuple[Array, dict]:
    """Ancestral sampling: DDIM with ``eta = 1``."""
    return sample_ddim(denoiser, z, key, sigmas, eta=1.0, trajectory=trajectory)
