"""What every low-level sampler shares: the denoiser call, the grid check, keys, the step loop.

A low-level sampler is ``(denoiser, z_T, key, sigmas, ...) -> (z_0, info)``:

* ``denoiser(z, sigma_ve) -> E[x0 | z]`` in canonical (VE) coordinates ``z = x / alpha``
  (``convert.as_ve_denoiser``); it is always called with ``sigma_ve`` of shape ``(batch,)``;
* ``sigmas`` is a concrete, strictly decreasing array of positive noise levels, optionally
  ending with ``0``: the trailing zero means "finish with ``D(z, sigmas[-2])``" (the final
  denoise, one model evaluation) and is never stepped into, so nothing divides by ``sigma = 0``;
* options are keyword-only, each with its default (``api.py`` derives a sampler's option names
  and defaults from them); a family's checks run first and raise ``ValueError("name=value ...")``;
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

from diffusion_lv import checks, langevin
from diffusion_lv.schedules import Schedule, expand_to, get_schedule

Array = jax.Array
Denoiser = Callable[[Array, Array], Array]


def denoise(denoiser: Denoiser, z: Array, sigma) -> Array:
    """``D(z, sigma)`` with ``sigma`` broadcast to ``(batch,)`` (what trained networks expect)."""
    return denoiser(z, jnp.broadcast_to(jnp.asarray(sigma, z.dtype), (z.shape[0],)))


def score(denoiser: Denoiser, z: Array, sigma) -> Array:
    """Score of ``p_sigma`` in VE coordinates, ``(D - z) / sigma^2`` (``sigma``: scalar or
    ``(batch,)``)."""
    return (denoise(denoiser, z, sigma) - z) / expand_to(jnp.square(sigma), z)


def is_zero(value) -> bool:
    """True when ``value`` (e.g. DDIM's ``eta``) is statically 0: the step draws no noise."""
    return isinstance(value, float | int) and value == 0


def check_rate(c) -> None:
    """The rate of the split: a number passing ``langevin.check_rate``, reported as ``c=...``."""
    if isinstance(c, jax.core.Tracer):  # a traced rate is the caller's to check
        return
    checks.number("c", c)
    try:
        langevin.check_rate(c)
    except ValueError:
        raise ValueError(f"c={c!r} is not valid; valid: >= 1 (1: ODE, 2: reverse SDE)") from None


def resolve_schedule(value, name: str = "step_schedule") -> Schedule | None:
    """A schedule option: a name of ``schedules.SCHEDULES``, a ``Schedule`` or None."""
    if value is None or isinstance(value, Schedule):
        return value
    if isinstance(value, str):
        try:
            return get_schedule(value)
        except ValueError as err:
            raise ValueError(f"{name}={value!r} is not valid; {err}") from None
    raise ValueError(f"{name}={value!r} is not valid; valid: a schedule name, a Schedule or None")


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
