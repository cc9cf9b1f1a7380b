"""Exponential-integrator multistep solvers in log-SNR, in data-prediction (denoiser) form.

Write ``lambda = -log sigma_ve`` (half the log-SNR) and ``h = lambda_{i+1} - lambda_i > 0``.

**The split with rate c, exactly in its linear part.** In VE coordinates the reverse split is
``dz = c (z - D) / sigma dsigma + sqrt(2 (c - 1) sigma) dW`` (``f = 0``, ``g^2 = 2 sigma``),
i.e. in ``lambda``: ``dz/dlambda = c (D - z)`` plus noise. Variation of constants from ``lambda``
to ``lambda + h``::

    z' = e^{-c h} z + int_0^h c e^{-c (h - v)} D(lambda + v) dv + noise,
    noise ~ N(0, sigma'^2 (1 - e^{-2 (c - 1) h}) I),

the noise variance being ``int_{sigma'}^{sigma} (sigma'/u)^{2c} 2 (c - 1) u du``. Replacing
``D`` by the polynomial through the last ``k`` denoiser outputs (Newton form in ``lambda``:
``D(v) = D_0 + D' v + D'' v^2 / 2``) gives the moments
``int_0^h c e^{-c(h-v)} v^m / m! dv = c h^{m+1} phi_{m+1}(c h)`` with
``phi_1(H) = (1 - e^{-H}) / H``, ``phi_{m+1}(H) = (1/m! - phi_m(H)) / H``, so

    z' = e^{-ch} z + c h phi_1 D_0 + c h^2 phi_2 D' + c h^3 phi_3 D'' + noise.

``k = 1`` is DDIM (c = 1) and DDPM ancestral (c = 2: ``z' = r^2 z + (1 - r^2) D + sigma'
sqrt(1 - r^2) xi`` with ``r = sigma'/sigma``). ``k = 2, 3`` at ``c = 1`` are Adams-type
exponential integrators of order 2 and 3 (DPM-Solver++(2M)/(3M)); ``c > 1`` their SDE variants.
The first steps use the orders their history allows (1, then 2). All coefficients depend only
on the concrete grid, so they are computed once in float64 NumPy.

**DPM-Solver++(2M) as published** (Lu et al. 2022, Algorithm 2; k-diffusion's
``sample_dpmpp_2m``) uses instead ``z' = (sigma'/sigma) z - expm1(-h) ((1 + 1/(2 r)) D_0 -
D_1 / (2 r))`` with ``r = h_prev / h``; it differs from the ``k = 2`` form above at third order
per step and is kept verbatim as the baseline (``sample_dpmpp_2m``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv.langevin import is_one
from diffusion_lv.samplers.base import Denoiser, check_rate, check_sigmas, denoise, finish

Array = jax.Array


def phi(m: int, big_h: float) -> float:
    """``phi_m(H) = int_0^1 e^{-H (1 - u)} u^(m-1) / (m-1)! du`` (series near 0)."""
    if abs(big_h) < 0.05:
        return sum((-big_h) ** j / math.factorial(j + m) for j in range(12))
    value = -math.expm1(-big_h) / big_h
    for k in range(1, m):
        value = (1.0 / math.factorial(k) - value) / big_h
    return value


def exponential_weights(hs: np.ndarray, order: int, c: float) -> np.ndarray:
    """Per step ``i``: ``(decay, w_0, w_1, w_2)`` so that ``z' = decay z + sum_j w_j D_{i-j}``."""
    weights = np.zeros((hs.shape[0], 4))
    for i, h in enumerate(hs):
        big_h = c * h
        m1 = -math.expm1(-big_h)
        m2 = c * h**2 * phi(2, big_h)
        m3 = c * h**3 * phi(3, big_h)
        k = min(order, i + 1)
        e = np.eye(3)  # D_0, D_1, D_2 as unit vectors: the update is linear in them
        w = m1 * e[0]
        if k == 2:
            w = w + m2 * (e[0] - e[1]) / hs[i - 1]
        elif k == 3:
            h1, h2 = hs[i - 1], hs[i - 2]
            f01 = (e[0] - e[1]) / h1
            f12 = (e[1] - e[2]) / h2
            f012 = (f01 - f12) / (h1 + h2)
            w = w + m2 * (f01 + h1 * f012) + m3 * 2.0 * f012
        weights[i] = (math.exp(-big_h), *w)
    return weights


def dpmpp_2m_weights(hs: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """DPM-Solver++(2M) as published: ``(sigma'/sigma, w_0, w_1, 0)`` per step."""
    weights = np.zeros((hs.shape[0], 4))
    for i, h in enumerate(hs):
        scale = -math.expm1(-h)
        if i == 0:
            w0, w1 = scale, 0.0
        else:
            half_inv_r = 0.5 * h / hs[i - 1]
            w0, w1 = scale * (1.0 + half_inv_r), -scale * half_inv_r
        weights[i] = (levels[i + 1] / levels[i], w0, w1, 0.0)
    return weights


def multistep_update(denoiser, carry, inputs, key, stochastic: bool):
    """One step ``z' = decay z + w_0 D_i + w_1 D_{i-1} + w_2 D_{i-2} (+ noise)``.

    ``carry = (z, D_{i-1}, D_{i-2})``; ``inputs = (i, sigma_i, (decay, w_0, w_1, w_2), noise_std)``
    with the weights of ``exponential_weights`` / ``dpmpp_2m_weights``. Returns the new carry.
    """
    z, d1, d2 = carry
    i, sigma, (decay, w0, w1, w2), std = inputs
    d0 = denoise(denoiser, z, sigma)
    z = decay * z + w0 * d0 + w1 * d1 + w2 * d2
    if stochastic:
        z = z + std * jax.random.normal(jax.random.fold_in(key, i), z.shape, z.dtype)
    return z, d0, d1


def multistep_inputs(levels, weights, noise_std, dtype):
    """Per-step scan inputs for ``multistep_update`` (stacked along the step axis)."""
    steps = levels.shape[0] - 1
    return (
        jnp.arange(steps),
        jnp.asarray(levels[:-1], dtype),
        jnp.asarray(weights, dtype),
        jnp.asarray(np.zeros(steps) if noise_std is None else noise_std, dtype),
    )


def _run_multistep(denoiser, z, key, levels, final_denoise, weights, noise_std, trajectory):
    stochastic = noise_std is not None

    def body(carry, inputs):
        carry = multistep_update(denoiser, carry, inputs, key, stochastic)
        return carry, (carry[0] if trajectory else None)

    zeros = jnp.zeros_like(z)
    inputs = multistep_inputs(levels, weights, noise_std, z.dtype)
    (z, _, _), path = jax.lax.scan(body, (z, zeros, zeros), inputs)
    steps = levels.shape[0] - 1
    return finish(denoiser, z, levels, final_denoise, steps, path if trajectory else None)


def _log_steps(levels: np.ndarray) -> np.ndarray:
    return np.log(levels[:-1]) - np.log(levels[1:])


def sample_exponential_multistep(
    denoiser: Denoiser,
    z: Array,
    key: Array,
    sigmas,
    *,
    order: int = 3,
    c: float = 1.0,
    trajectory: bool = False,
) -> tuple[Array, dict]:
    """Order-``order`` exponential multistep on the reverse split with rate ``c`` (see module)."""
    if order not in (1, 2, 3):
        raise ValueError(f"order={order!r} must be one of [1, 2, 3]")
    check_rate(c)
    levels, final_denoise = check_sigmas(sigmas)
    hs = _log_steps(levels)
    weights = exponential_weights(hs, order, float(c))
    noise_std = None
    if not is_one(c):
        noise_std = levels[1:] * np.sqrt(-np.expm1(-2.0 * (c - 1.0) * hs))
    return _run_multistep(denoiser, z, key, levels, final_denoise, weights, noise_std, trajectory)


def sample_dpmpp_2m(
    denoiser: Denoiser, z: Array, key: Array, sigmas, *, trajectory: bool = False
) -> tuple[Array, dict]:
    """DPM-Solver++(2M), verbatim (the baseline most people use, with Karras steps)."""
    levels, final_denoise = check_sigmas(sigmas)
    weights = dpmpp_2m_weights(_log_steps(levels), levels)
    return _run_multistep(denoiser, z, key, levels, final_denoise, weights, None, trajectory)
