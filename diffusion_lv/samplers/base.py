"""What every low-level sampler shares: the denoiser call, the grid check, keys, the step loop.

A low-level sampler is ``(denoiser, z_T, key, sigmas, ...) -> (z_0, info)``:

* ``denoiser(z, sigma_ve) -> E[x0 | z]`` in canonical (VE) coordinates ``z = x / alpha``
  (``convert.as_ve_denoiser``); it is always called with ``sigma_ve`` of shape ``(batch,)``;
* ``sigmas`` is a concrete, strictly decreasing array of positive noise levels, optionally
  ending with ``0``: the trailing zero means "finish with ``D(z, sigmas[-2])``" (the final
  denoise, one model evaluation) and is never stepped into, so nothing divides by ``sigma = 0``;
* randomness: step ``i`` uses ``fold_in(key, i)``; a sampler whose settings switch noise off
  draws nothing (and then accepts ``key=None``);
* ``info["nfe"]`` is the exact number of denoiser evaluations (a Python int);
  ``info["trajectory"]`` (only when asked) stacks ``z`` after every step, shape ``(steps, *z)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Denoiser = Callable[[Array, Array], Array]


def denoise(denoiser: Denoiser, z: Array, sigma) -> Array:
    """``D(z, sigma)`` with ``sigma`` broadcast to ``(batch,)`` (what trained networks expect)."""
    return denoiser(z, jnp.broadcast_to(jnp.asarray(sigma, z.dtype), (z.shape[0],)))


def score(denoiser: Denoiser, z: Array, sigma) -> Array:
    """Score of ``p_sigma`` in VE coordinates, ``(D - z) / sigma^2``."""
    return (denoise(denoiser, z, sigma) - z) / jnp.square(sigma)


def check_sigmas(sigmas) -> tuple[np.ndarray, bool]:
    """Validate a grid; return its positive levels and whether it ends with a final denoise."""
    if isinstance(sigmas, jax.core.Tracer):
        raise ValueError("sigmas must be concrete (a NumPy array), not traced: the grid is static")
    sigmas = np.asarray(sigmas, np.float64)
    if sigmas.ndim != 1 or sigmas.shape[0] < 1:
        raise ValueError(f"sigmas must be a non-empty 1-D array, got shape {sigmas.shape}")
    final_denoise = sigmas.shape[0] > 1 and sigmas[-1] == 0.0
    levels = sigmas[:-1] if final_denoise else sigmas
    if not np.all(np.isfinite(levels)) or np.any(levels <= 0.0):
        raise ValueError(f"sigmas must be positive (only a trailing 0 is allowed), got {sigmas}")
    if np.any(np.diff(levels) >= 0.0):
        raise ValueError(f"sigmas must be strictly decreasing, got {sigmas}")
    return levels, bool(final_denoise)


def step_inputs(levels: np.ndarray, dtype) -> tuple[Array, Array, Array]:
    """Scan inputs ``(i, sigma_i, sigma_{i+1})`` for the steps between consecutive levels."""
    n = levels.shape[0] - 1
    return (
        jnp.arange(n),
        jnp.asarray(levels[:-1], dtype),
        jnp.asarray(levels[1:], dtype),
    )


def run_one_step_sampler(
    step: Callable[[Array, Array, Array, Array], Array],
    denoiser: Denoiser,
    z: Array,
    key: Array,
    sigmas,
    evals_per_step: int = 1,
    trajectory: bool = False,
) -> tuple[Array, dict]:
    """Scan a one-step update ``step(z, sigma, sigma_next, key) -> z_next`` over the grid."""
    levels, final_denoise = check_sigmas(sigmas)

    def body(z, inputs):
        i, sigma, sigma_next = inputs
        z = step(z, sigma, sigma_next, None if key is None else jax.random.fold_in(key, i))
        return z, (z if trajectory else None)

    z, path = jax.lax.scan(body, z, step_inputs(levels, z.dtype))
    nfe = evals_per_step * (levels.shape[0] - 1)
    return finish(denoiser, z, levels, final_denoise, nfe, path if trajectory else None)


def finish(denoiser, z, levels, final_denoise, nfe, path=None) -> tuple[Array, dict]:
    """The explicit end of the schedule: ``D(z, sigma_min)`` or ``z`` at ``sigma_min``."""
    if final_denoise:
        z = denoise(denoiser, z, levels[-1])
        nfe += 1
    info = {"nfe": int(nfe), "sigmas": levels}
    if path is not None:
        info["trajectory"] = path
    return z, info
