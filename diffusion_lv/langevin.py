"""Langevin dynamics and its split into forward (noising) and reverse (denoising) processes.

Langevin dynamics ``dx = (D^2 / 2) score dtau + D dW`` leaves ``p`` invariant when ``score`` is
``grad log p``: it is the identity on the distribution. At a fixed time ``t`` of a schedule with
forward SDE ``dx = f x dt + g dW`` and a rate ``c >= 1`` (``eta^2 = c - 1``)::

    Langevin at fixed t:  dx = c g^2/2 score dtau + sqrt(c) g dW        (keeps p_t)
    forward split:        dx = f x dtau + g dW                          (t increases by dtau)
    reverse split:        dx = (c g^2/2 score - f x) dtau + sqrt(c-1) g dW   (t decreases by dtau)

so one forward step followed by one reverse step is one Langevin step. ``c = 1`` gives the
probability-flow ODE, ``c = 2`` the reverse SDE, ``c > 2`` extra Langevin "churn".

The reverse split is written twice. The score form (``reverse_split_drift``,
``reverse_split_step``) is the paper's specification; ``reverse_drift_from_denoiser`` is the same
drift written through the denoiser ``D = E[x0 | x_t]``, the form the samplers integrate (it stays
finite where ``f`` diverges). tests/test_langevin.py checks that the two agree.

Score functions are ``score_fn(x, t)`` in the schedule's own coordinates; ``t`` is a scalar or has
shape ``(batch,)``. Everything here is a pure, jit-able function of arrays and a PRNG key.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion_lv.schedules import Schedule, expand_to

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def is_one(c) -> bool:
    """True when the rate ``c`` is statically 1 (the deterministic case: draw no noise)."""
    return isinstance(c, float | int) and c == 1


def check_rate(c: float) -> None:
    if isinstance(c, jax.core.Tracer):
        return
    if not c >= 1.0:
        raise ValueError(f"Langevin split rate c={c!r} must be >= 1 (c=1: ODE, c=2: reverse SDE)")


# -- plain Langevin dynamics ----------------------------------------------------------------


def langevin_step(score_fn: Callable[[Array], Array], x: Array, key: Array, step_size) -> Array:
    """One Euler-Maruyama step of ``dx = score dtau + sqrt(2) dW`` with ``dtau = step_size``."""
    noise = jax.random.normal(key, x.shape, x.dtype)
    return x + step_size * score_fn(x) + jnp.sqrt(2.0 * step_size) * noise


def langevin(
    score_fn: Callable[[Array], Array], x: Array, key: Array, step_size, num_steps: int
) -> Array:
    """``num_steps`` Langevin steps in one compiled loop; step ``i`` uses ``fold_in(key, i)``."""

    def body(i, x):
        return langevin_step(score_fn, x, jax.random.fold_in(key, i), step_size)

    return jax.lax.fori_loop(0, num_steps, body, x)


def annealed_langevin(
    ve_score_fn: ScoreFn,
    z: Array,
    key: Array,
    sigmas: Array,
    steps_per_level: int,
    epsilon: float,
) -> Array:
    """SMLD (Song & Ermon 2019): Langevin at each noise level, largest first.

    At level ``sigma_i`` the step is ``epsilon * sigma_i^2 / sigma_min^2`` so that the
    signal-to-noise ratio of a step is the same at every level. ``ve_score_fn(z, sigma)`` is the
    score in VE coordinates; ``sigmas`` is decreasing.
    """
    sigmas = jnp.asarray(sigmas)
    batch = jnp.ones((z.shape[0],), z.dtype)

    def level(z, inputs):
        i, sigma = inputs
        step = epsilon * jnp.square(sigma / sigmas[-1])
        level_key = jax.random.fold_in(key, i)
        z = langevin(lambda u: ve_score_fn(u, sigma * batch), z, level_key, step, steps_per_level)
        return z, None

    z, _ = jax.lax.scan(level, z, (jnp.arange(sigmas.shape[0]), sigmas))
    return z


# -- the split family at a schedule's time ---------------------------------------------------


def split_langevin_step(
    schedule: Schedule, score_fn: ScoreFn, x: Array, t: Array, dtau, key: Array, c: float = 1.0
) -> Array:
    """Langevin at fixed ``t`` with rate c: ``dx = c g^2/2 score dtau + sqrt(c) g dW``."""
    g2 = expand_to(schedule.g2(t), x)
    noise = jax.random.normal(key, x.shape, x.dtype)
    return x + 0.5 * c * g2 * score_fn(x, t) * dtau + jnp.sqrt(c * g2 * dtau) * noise


def forward_split_step(
    schedule: Schedule, x: Array, t: Array, dt, key: Array
) -> tuple[Array, Array]:
    """One Euler-Maruyama step of the forward SDE from ``t`` to ``t + dt``."""
    f = expand_to(schedule.f(t), x)
    g2 = expand_to(schedule.g2(t), x)
    noise = jax.random.normal(key, x.shape, x.dtype)
    return x + f * x * dt + jnp.sqrt(g2 * dt) * noise, t + dt


def reverse_split_drift(
    schedule: Schedule, score_fn: ScoreFn, x: Array, t: Array, c: float = 1.0
) -> Array:
    """Drift of the reverse split per unit of reverse time: ``c g^2/2 score - f x``."""
    f = expand_to(schedule.f(t), x)
    g2 = expand_to(schedule.g2(t), x)
    return 0.5 * c * g2 * score_fn(x, t) - f * x


def reverse_split_step(
    schedule: Schedule,
    score_fn: ScoreFn,
    x: Array,
    t: Array,
    dt,
    key: Array,
    c: float = 1.0,
) -> tuple[Array, Array]:
    """One Euler-Maruyama step of the reverse split from ``t`` to ``t - dt`` (no noise at c=1)."""
    check_rate(c)
    drift = reverse_split_drift(schedule, score_fn, x, t, c)
    x_new = x + drift * dt
    if not is_one(c):
        g2 = expand_to(schedule.g2(t), x)
        noise = jax.random.normal(key, x.shape, x.dtype)
        x_new = x_new + jnp.sqrt((c - 1.0) * g2 * dt) * noise
    return x_new, t - dt


def reverse_drift_from_denoiser(
    schedule: Schedule, denoised: Array, x: Array, t: Array, c: float = 1.0
) -> Array:
    """``dx/dt`` (forward-time derivative) of the reverse split, written through ``D = E[x0|x]``.

    ``f x - c g^2/2 score = alpha' D + sigma' eps + (c - 1) g^2 / (2 sigma) eps`` with
    ``eps = (x - alpha D) / sigma``. The right-hand form never multiplies ``f`` by ``x``, so the
    probability-flow ODE (c = 1) stays finite where ``f`` diverges (rectified flow at s -> 1).
    Integrating it from ``t`` down to ``t - h`` is ``x - h * drift (+ noise when c > 1)``.
    """
    alpha, sigma, dalpha, dsigma = (expand_to(v, x) for v in schedule.alpha_sigma_derivatives(t))
    eps = (x - alpha * denoised) / sigma
    drift = dalpha * denoised + dsigma * eps
    if is_one(c):
        return drift
    g2 = expand_to(schedule.g2(t), x)
    return drift + 0.5 * (c - 1.0) * g2 / sigma * eps


def reverse_diffusion(schedule: Schedule, t: Array, c: float = 1.0) -> Array:
    """Diffusion coefficient ``sqrt(c - 1) g(t)`` of the reverse split."""
    return jnp.sqrt((c - 1.0) * schedule.g2(t))
