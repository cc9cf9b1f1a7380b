"""Sequential Monte Carlo inpainting: a particle filter on the known coordinates' noisy path.

Conventions as in samplers.py (known coordinates K with clean values ``y``, unknown U,
canonical ``z = x + sigma * eps``). Where the Langevin-corrected sampler cannot fix the weights
of separated modes (docs/conditional.md), weights can:

* **The observations.** Draw one path of the known part's forward process, ``y_sigma = y +
  W(sigma^2)`` with ``W`` a Brownian motion (sampled from ``sigma_max`` down as its bridge to
  ``W(0) = 0``: ``y' = r y_sigma + (1 - r) y + sqrt(v) xi``, ``r = sigma'^2 / sigma^2``,
  ``v = r (sigma^2 - sigma'^2)``). The forward process noises each coordinate independently, so
  that path carries no information about ``x_U`` beyond ``y``: ``p(x_U | y_{sigma's}) =
  p(x_U | y)``, and at level sigma the filter's target is ``p_sigma(z_U | z_K = y_sigma)``.
* **The model.** The reverse chain's ancestral step (the exact posterior step when the data
  are a point at ``D``): ``z' ~ N(r z + (1 - r) D(z, sigma), v I)``. Its covariance is diagonal,
  so given ``z`` the known part's move ``N(y'; r y_sigma + (1 - r) D_K(z), v)`` and the unknown
  part's move are independent: the fully adapted particle filter weights each particle by the
  former, resamples (systematic, within its group, when the group's effective sample size falls
  below ``resample_threshold`` times its size), then moves the unknown part by the latter with
  fresh noise and sets the known part to ``y'``.
* **Rejuvenation.** Optionally ``langevin_steps`` Langevin steps on ``z_U`` at every new level,
  the known part held at ``y'``: their target is the filter's own target, so they restore the
  diversity resampling removes without changing what is sampled (up to the unadjusted chain's
  ``O(h)``).
* At ``sigma_min`` the particles are resampled by their remaining weights and denoised, the
  known values pasted. **What is exact in which limit**: with exact reverse moves the filter is
  consistent as the particles grow (error ``O(1 / sqrt(particles))``); the ancestral moves are
  exact as the grid refines, and the last level's ``y_{sigma_min}`` differs from ``y`` by
  ``sigma_min``, an ``O(sigma_min^2 / lambda)`` error as for the Langevin-corrected sampler
  (``lambda``: the smallest variance of a component's known block). No mode is trapped: a
  particle in a mode that the path of ``y_sigma`` makes unlikely loses its weight.

Particles: the batch ``(batch, ...)`` is ``batch / particles`` groups of ``particles``
consecutive rows; the rows of a group share their known values (repeat each example
``particles`` times) and are resampled together. ``particles=None``: the whole batch is one
group. Each row of the output is one draw; the rows of a group are correlated by resampling.
One evaluation per step plus the Langevin steps, plus the final denoise: the NFE per row equals
that of the Langevin-corrected sampler with the same steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv import checks
from diffusion_lv.conditional import samplers as cs
from diffusion_lv.conditional.observations import Inpainting, check_inpainting
from diffusion_lv.samplers.base import Denoiser, denoise
from diffusion_lv.samplers.ddim import ddim_moments

Array = jax.Array


def check_smc(particles, resample_threshold, langevin_steps, step_scale, levels=(1.0, 0.5)):
    """The options' checks; the Langevin steps and step scales of each step on ``levels``."""
    checks.number("particles", particles, lo=1, integer=True, optional=True)
    checks.number("resample_threshold", resample_threshold, lo=0.0, hi=1.0)
    return cs.check_langevin(1.0, langevin_steps, step_scale, "clean", 0, 0.5, levels)


def num_groups(particles: int | None, condition: Inpainting, batch: int) -> int:
    """The number of particle groups; a ValueError unless they tile the batch and (when the
    values are concrete) each group shares its known values."""
    if particles is None:
        particles = batch
    if batch % particles:
        raise ValueError(
            f"particles={particles} does not divide the batch of {batch}; valid: a divisor "
            f"of {batch} (each example repeated `particles` times), or None (one group)"
        )
    groups = batch // particles
    values, mask = condition.values, condition.mask
    if not isinstance(values, jax.core.Tracer) and not isinstance(mask, jax.core.Tracer):
        mask = np.broadcast_to(np.asarray(mask), values.shape).reshape(groups, particles, -1)
        known = np.where(mask, np.asarray(values).reshape(mask.shape), 0.0)
        differs = np.any(known != known[:, :1], axis=(1, 2)) | np.any(
            mask != mask[:, :1], axis=(1, 2)
        )
        if differs.any():
            group = int(np.argmax(differs))
            raise ValueError(
                f"the {particles} rows of particle group {group} (rows {group * particles}.."
                f"{(group + 1) * particles - 1}) do not share their mask and known values; "
                "valid: each example repeated `particles` times (np.repeat), or particles=1"
            )
    return groups


def _systematic_resample(key: Array, log_weights: Array, threshold) -> tuple[Array, Array, Array]:
    """Per group (rows of ``log_weights``, shape (groups, particles)): resample systematically
    where the effective sample size is below ``threshold * particles``. Returns the flat row
    indices to take, the new log-weights and whether each group resampled."""
    groups, particles = log_weights.shape
    weights = jax.nn.softmax(log_weights, axis=1)
    ess = 1.0 / jnp.sum(jnp.square(weights), axis=1)
    resample = ess < threshold * particles
    u = (jax.random.uniform(key, (groups, 1), weights.dtype) + jnp.arange(particles)) / particles
    cdf = jnp.cumsum(weights, axis=1)
    chosen = jax.vmap(jnp.searchsorted)(cdf, u)
    chosen = jnp.minimum(chosen, particles - 1)
    chosen = jnp.where(resample[:, None], chosen, jnp.arange(particles))
    rows = (jnp.arange(groups)[:, None] * particles + chosen).reshape(-1)
    centred = log_weights - jnp.max(log_weights, axis=1, keepdims=True)
    log_weights = jnp.where(resample[:, None], 0.0, centred)
    return rows, log_weights, resample


def _group_noise(key: Array, groups: int, particles: int, like: Array) -> Array:
    """Standard normal noise shared by the rows of each group."""
    noise = jax.random.normal(key, (groups, *like.shape[1:]), like.dtype)
    return jnp.repeat(noise, particles, axis=0)


def sample_smc(
    denoiser: Denoiser,
    z: Array,
    key: Array,
    sigmas,
    condition: Inpainting,
    *,
    particles: int | None = None,
    resample_threshold: float = 0.5,
    langevin_steps: int | Sequence[int] = 0,
    step_scale: float | Sequence[float] = 0.5,
    trajectory: bool = False,
) -> tuple[Array, dict]:
    """The particle filter above: one evaluation per step plus ``langevin_steps`` rejuvenation
    steps (one number or one per step), final resampling and denoise. ``info["resampled"]``:
    per group, the number of steps that resampled."""
    levels, final_denoise = cs.check_sigmas(sigmas)
    steps, scales = check_smc(particles, resample_threshold, langevin_steps, step_scale, levels)
    check_inpainting(condition, z.shape)
    batch = z.shape[0]
    groups = num_groups(particles, condition, batch)
    size = batch // groups
    mask = jnp.broadcast_to(condition.mask, z.shape)
    y = condition.values
    sum_known = tuple(range(1, z.ndim))

    path_key = jax.random.fold_in(key, cs.INITIAL)
    y_path = y + levels[0] * _group_noise(path_key, groups, size, z)
    z = jnp.where(mask, y_path, z)
    log_weights = jnp.zeros((groups, size), z.dtype)

    def step(carry, sigma, sigma_next, key, k, scale):
        z, y_path, log_weights, count = carry
        # The known part's path: the same ancestral step with its exact clean value y.
        y_mean, std = ddim_moments(y_path, y, sigma, sigma_next, eta=1.0)
        y_next = y_mean + std * _group_noise(jax.random.fold_in(key, 0), groups, size, z)
        mean, _ = ddim_moments(z, denoise(denoiser, z, sigma), sigma, sigma_next, eta=1.0)
        misfit = jnp.where(mask, jnp.square(y_next - mean), 0.0)
        log_weights = log_weights - jnp.sum(misfit, sum_known).reshape(groups, size) / (
            2.0 * jnp.square(std)
        )
        rows, log_weights, resampled = _systematic_resample(
            jax.random.fold_in(key, 1), log_weights, resample_threshold
        )
        noise = jax.random.normal(jax.random.fold_in(key, 2), z.shape, z.dtype)
        z = jnp.where(mask, y_next, mean[rows] + std * noise)
        h = scale * jnp.square(sigma_next)
        inner_key = jax.random.fold_in(key, 3)
        z = cs.langevin_at(denoiser, z, sigma_next, h, inner_key, condition.mask, k)
        return z, y_next, log_weights, count + resampled.astype(jnp.int32)

    carry = (z, y_path, log_weights, jnp.zeros((groups,), jnp.int32))
    extra = (steps, scales.astype(np.dtype(z.dtype)))
    (z, _, log_weights, count), path = cs.scan_levels(step, carry, key, levels, extra, trajectory)
    # The output is unweighted: resample every group by its remaining weights.
    rows, _, _ = _systematic_resample(jax.random.fold_in(key, cs.FINAL), log_weights, jnp.inf)
    z = z[rows]
    nfe = levels.shape[0] - 1 + int(steps.sum())
    return cs.finish(
        denoiser,
        z,
        condition,
        levels,
        final_denoise,
        nfe,
        path if trajectory else None,
        resampled=count,
    )
