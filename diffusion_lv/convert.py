"""Exact conversions between schedules (states, times) and between predictions.

States: two schedules describe the same distribution at equal canonical noise level
``sigma_ve = sigma / alpha``; the states differ only by scale, ``x_B = x_A * alpha_B / alpha_A``
(the paper's Table 2, for any pair of schedules).

Predictions: the hub is the denoiser ``D(x, t) = E[x0 | x_t]``, which is the same function of
the canonical state ``z = x / alpha`` in every schedule. With ``eps = (x - alpha D) / sigma``:

==========  ====================================  =============================================
prediction  output from D                          D from output
==========  ====================================  =============================================
x0          D                                      x0
eps         (x - alpha D) / sigma                  (x - sigma eps) / alpha
score       -(x - alpha D) / sigma^2               (x + sigma^2 score) / alpha
velocity    alpha' D + sigma' eps  (flow)           (sigma u - sigma' x) / (sigma a' - sigma' a)
v           alpha eps - sigma D    (Salimans)       (alpha x - sigma v) / (alpha^2 + sigma^2)
edm         F = (D - c_skip z) / c_out             c_skip z + c_out F
==========  ====================================  =============================================

For rectified flow ``velocity`` is the paper's ``v = eps - x0``. ``edm`` is EDM's raw network
output under its preconditioning, with the coefficients in VE coordinates (``z``, ``sigma_ve``).
Converting a prediction between schedules is: to D in the source, move the state, from D in the
target (the paper's Table 5, for any pair). Coefficients broadcast over the trailing axes of ``x``;
``t`` is a scalar or has shape ``(batch,)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion_lv.schedules import Schedule, expand_to

Array = jax.Array

PREDICTIONS = ("x0", "eps", "score", "velocity", "v", "edm")
DEFAULT_SIGMA_DATA = 0.5


def check_prediction(prediction: str, what: str = "prediction") -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown {what} {prediction!r}; valid choices: {list(PREDICTIONS)}")


# -- states and times ---------------------------------------------------------------------


def convert_time(t: Array, source: Schedule, target: Schedule) -> Array:
    """The target schedule's time at the same canonical noise level ``sigma_ve``."""
    return target.t_from_sigma_ve(source.sigma_ve(t))


def convert_state(x: Array, t: Array, source: Schedule, target: Schedule) -> tuple[Array, Array]:
    """Map ``(x, t)`` of ``source`` to the equal-distribution ``(x', t')`` of ``target``."""
    t_target = convert_time(t, source, target)
    scale = target.alpha(t_target) / source.alpha(t)
    return x * expand_to(scale, x), t_target


# -- predictions --------------------------------------------------------------------------


def edm_preconditioning(sigma_ve: Array, sigma_data: float = DEFAULT_SIGMA_DATA):
    """EDM's ``(c_skip, c_out, c_in, c_noise)`` at canonical noise level ``sigma_ve``.

    ``D(z) = c_skip z + c_out F(c_in z, c_noise)`` keeps the network's input and target at unit
    variance for data of standard deviation ``sigma_data`` (Karras et al. 2022, Table 1).
    """
    sigma_ve = jnp.asarray(sigma_ve)
    total = jnp.square(sigma_ve) + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma_ve * sigma_data * jax.lax.rsqrt(total)
    c_in = jax.lax.rsqrt(total)
    c_noise = 0.25 * jnp.log(sigma_ve)
    return c_skip, c_out, c_in, c_noise


def to_x0(
    output: Array,
    prediction: str,
    x: Array,
    t: Array,
    schedule: Schedule,
    sigma_data: float = DEFAULT_SIGMA_DATA,
) -> Array:
    """The denoiser ``D = E[x0 | x_t]`` implied by an ``output`` of kind ``prediction`` at
    ``(x, t)``."""
    check_prediction(prediction)
    alpha, sigma, dalpha, dsigma = (
        expand_to(c, x) for c in schedule.alpha_sigma_derivatives(t)
    )
    if prediction == "x0":
        return output
    if prediction == "eps":
        return (x - sigma * output) / alpha
    if prediction == "score":
        return (x + jnp.square(sigma) * output) / alpha
    if prediction == "velocity":
        return (sigma * output - dsigma * x) / (sigma * dalpha - dsigma * alpha)
    if prediction == "v":
        return (alpha * x - sigma * output) / (jnp.square(alpha) + jnp.square(sigma))
    # edm
    c_skip, c_out, _, _ = edm_preconditioning(sigma / alpha, sigma_data)
    return c_skip * (x / alpha) + c_out * output


def from_x0(
    denoised: Array,
    prediction: str,
    x: Array,
    t: Array,
    schedule: Schedule,
    sigma_data: float = DEFAULT_SIGMA_DATA,
) -> Array:
    """The output of kind ``prediction`` at ``(x, t)`` implied by the denoiser output
    ``denoised``."""
    check_prediction(prediction)
    alpha, sigma, dalpha, dsigma = (
        expand_to(c, x) for c in schedule.alpha_sigma_derivatives(t)
    )
    if prediction == "x0":
        return denoised
    eps = (x - alpha * denoised) / sigma
    if prediction == "eps":
        return eps
    if prediction == "score":
        return -eps / sigma
    if prediction == "velocity":
        return dalpha * denoised + dsigma * eps
    if prediction == "v":
        return alpha * eps - sigma * denoised
    c_skip, c_out, _, _ = edm_preconditioning(sigma / alpha, sigma_data)
    return (denoised - c_skip * (x / alpha)) / c_out


def convert_prediction(
    output: Array,
    source_prediction: str,
    target_prediction: str,
    x: Array,
    t: Array,
    schedule: Schedule,
    target_schedule: Schedule | None = None,
    sigma_data: float = DEFAULT_SIGMA_DATA,
) -> tuple[Array, Array, Array]:
    """Convert an ``output`` at ``(x, t)`` of ``schedule`` to ``target_prediction`` in
    ``target_schedule``.

    Returns ``(output', x', t')``: the converted output and the state and time it refers to.
    """
    denoised = to_x0(output, source_prediction, x, t, schedule, sigma_data)
    target_schedule = schedule if target_schedule is None else target_schedule
    x_target, t_target = convert_state(x, t, schedule, target_schedule)
    converted = from_x0(
        denoised, target_prediction, x_target, t_target, target_schedule, sigma_data
    )
    return converted, x_target, t_target


# -- models seen as denoisers -----------------------------------------------------------

ModelFn = Callable[[Array, Array], Array]


def as_denoiser(
    model_fn: ModelFn, prediction: str, schedule: Schedule, sigma_data: float = DEFAULT_SIGMA_DATA
) -> ModelFn:
    """``D(x, t)`` in the model's own schedule from a network with native output
    ``prediction``."""
    check_prediction(prediction)

    def denoiser(x, t):
        return to_x0(model_fn(x, t), prediction, x, t, schedule, sigma_data)

    return denoiser


def as_ve_denoiser(
    model_fn: ModelFn, prediction: str, schedule: Schedule, sigma_data: float = DEFAULT_SIGMA_DATA
) -> ModelFn:
    """``D(z, sigma_ve)`` in canonical VE coordinates: the one signature every sampler sees.

    The model is evaluated in its own schedule at the time with the same ``sigma_ve``.
    """
    denoiser = as_denoiser(model_fn, prediction, schedule, sigma_data)

    def ve_denoiser(z, sigma_ve):
        t = schedule.t_from_sigma_ve(sigma_ve)
        x = z * expand_to(schedule.alpha(t), z)
        return denoiser(x, t)

    return ve_denoiser


def as_model(
    ve_denoiser: ModelFn,
    prediction: str,
    schedule: Schedule,
    sigma_data: float = DEFAULT_SIGMA_DATA,
) -> ModelFn:
    """The inverse of ``as_ve_denoiser``: a model ``(x, t) -> native output``."""
    check_prediction(prediction)

    def model_fn(x, t):
        alpha = expand_to(schedule.alpha(t), x)
        denoised = ve_denoiser(x / alpha, schedule.sigma_ve(t))
        return from_x0(denoised, prediction, x, t, schedule, sigma_data)

    return model_fn
