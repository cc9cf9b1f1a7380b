"""Predictor-corrector: a one-step predictor plus Langevin corrector steps at each noise level.

A corrector step is a Langevin step at fixed noise level ``sigma``,
``z <- z + eps score + sqrt(2 eps) xi`` with ``score = (D(z, sigma) - z) / sigma^2``: it is the
identity on ``p_sigma`` (the paper's point), so it can only pull the predictor's state back
towards the right marginal. Step size, two choices:

* ``snr`` given: score_sde's target signal-to-noise ratio ``eps = 2 (snr ||xi|| / ||score||)^2``
  with the norms averaged over the batch as score_sde does (per-example norms are unstable in
  low dimension, where ``||score||`` of one example can be near 0);
* ``snr="split"``: the Langevin step of the split at the predictor's own step length, i.e. the
  fixed-``sigma`` Langevin dynamics ``dz = g^2/2 score dtau + g dW`` (``g^2 = 2 sigma`` in VE)
  run for ``dtau = sigma_i - sigma_{i+1}``: ``eps = sigma_i (sigma_i - sigma_{i+1})``.
  Per example, no batch coupling.

As in score_sde the corrector runs at the current level ``sigma_i`` before the predictor steps
to ``sigma_{i+1}``. ``1 + corrector_steps`` evaluations per step. The predictor (``PREDICTORS``)
is split Euler with rate ``c`` in ``step_schedule``'s coordinates, DDIM(``eta``) or DDPM, or any
one-evaluation step ``(z, sigma, sigma_next, key) -> z_next``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion_lv import checks
from diffusion_lv.langevin import is_one
from diffusion_lv.samplers.base import (
    Denoiser,
    check_rate,
    is_zero,
    resolve_schedule,
    run_one_step_sampler,
    score,
)
from diffusion_lv.samplers.ddim import check_eta, ddim_step
from diffusion_lv.samplers.euler import split_euler_step
from diffusion_lv.schedules import Schedule

Array = jax.Array
Predictor = Callable[[Array, Array, Array, Array], Array]

PREDICTORS = ("euler", "ddim", "ddpm")


def _norm(a: Array) -> Array:
    return jnp.sqrt(jnp.sum(jnp.square(a.reshape(a.shape[0], -1)), axis=-1))


def langevin_corrector_step(
    denoiser: Denoiser,
    z: Array,
    sigma: Array,
    key: Array,
    snr: float | str = 0.16,
    split_step: Array | None = None,
) -> Array:
    """One Langevin step at level ``sigma``: SNR-matched (``snr``) or of size ``split_step``
    (``snr="split"``)."""
    grad = score(denoiser, z, sigma)
    noise = jax.random.normal(key, z.shape, z.dtype)
    if snr == "split":
        step = split_step
    else:
        ratio = snr * jnp.mean(_norm(noise)) / jnp.mean(_norm(grad))
        step = 2.0 * jnp.square(ratio)
    return z + step * grad + jnp.sqrt(2.0 * step) * noise


def check_pc(predictor, c, step_schedule, eta, corrector_steps, snr) -> None:
    if not callable(predictor):
        checks.choice("predictor", predictor, PREDICTORS)
    check_rate(c)
    resolve_schedule(step_schedule)
    check_eta(eta)
    checks.number("corrector_steps", corrector_steps, lo=0, integer=True)
    if snr != "split":
        try:
            checks.number("snr", snr, lo=0.0, lo_open=True)
        except ValueError as err:
            raise ValueError(f"{err} or 'split' (the split's own step length)") from None
    # Each predictor reads its own settings: one set for another predictor is a mistake.
    unread = {
        "c": (c, predictor != "euler" and not is_one(c)),
        "step_schedule": (step_schedule, predictor != "euler" and step_schedule is not None),
        "eta": (eta, predictor != "ddim" and not is_zero(eta)),
    }
    for name, (value, is_unread) in unread.items():
        if is_unread:
            raise ValueError(
                f"{name}={value!r} is not read by predictor={predictor!r}; predictor='euler' "
                "reads c and step_schedule, predictor='ddim' reads eta"
            )


def _predictor_step(denoiser, predictor, c, step_schedule, eta) -> Predictor:
    if callable(predictor):
        return predictor
    if predictor == "euler":
        schedule = resolve_schedule(step_schedule)
        return lambda z, s, s_next, k: split_euler_step(denoiser, z, s, s_next, k, c, schedule)
    eta = eta if predictor == "ddim" else 1.0
    return lambda z, s, s_next, k: ddim_step(denoiser, z, s, s_next, k, eta)


def sample_pc(
    denoiser: Denoiser,
    z: Array,
    key: Array,
    sigmas,
    *,
    predictor: str | Predictor = "euler",
    c: float = 1.0,
    step_schedule: str | Schedule | None = None,
    eta: float = 0.0,
    corrector_steps: int = 1,
    snr: float | str = 0.16,
    trajectory: bool = False,
) -> tuple[Array, dict]:
    """Predictor-corrector; ``1 + corrector_steps`` evaluations per step."""
    check_pc(predictor, c, step_schedule, eta, corrector_steps, snr)
    predict = _predictor_step(denoiser, predictor, c, step_schedule, eta)

    def step(z, sigma, sigma_next, key):
        split_step = sigma * (sigma - sigma_next)

        def correct(j, z):
            key_j = jax.random.fold_in(key, j + 1)
            return langevin_corrector_step(denoiser, z, sigma, key_j, snr, split_step)

        z = jax.lax.fori_loop(0, corrector_steps, correct, z)
        return predict(z, sigma, sigma_next, jax.random.fold_in(key, 0))

    return run_one_step_sampler(
        step, denoiser, z, key, sigmas, evals_per_step=1 + corrector_steps, trajectory=trajectory
    )
