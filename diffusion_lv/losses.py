"""One loss for every parameterisation: ``w(t) * ||D_theta(x_t, t) - x0||^2``.

The network's native output (score, eps, x0, velocity, v, edm) is converted to the denoiser
``D_theta`` (convert.py) as the model (a :class:`Parameterization`: schedule, prediction,
sigma_data) says; a *weighting* says how much each noise level counts and a *time sampler* says
where to spend samples (:class:`LossConfig` holds these two). They are separate choices:

* The objective is ``J = E_{t ~ U[t_min, t_max]} E ||...||^2 w(t)``, an integral over the
  schedule's time. A time sampler with density ``q(t)`` is an importance proposal: each term is
  multiplied by ``u(t) / q(t)`` (``u`` the uniform density) so the expected loss is unchanged.
* With ``importance_weighted=False`` the proposal density becomes part of the objective instead
  (EDM's log-normal training and DDPM's uniform-t training are of this form).

Every weighting is written in x0 space. Maximum likelihood is
``w_ML = g^2 alpha^2 / (2 sigma^4) = -1/2 dSNR/dt`` (from ``-dKL/dt = g^2/2 E||s_p - s_q||^2``
and ``s_theta - s = alpha (D_theta - x0) / sigma^2``). The others are what the familiar losses
are in x0 space: eps-MSE ``SNR``, score-MSE ``alpha^2/sigma^4``, velocity-MSE
``(alpha' - sigma' alpha/sigma)^2``, Salimans-v ``(alpha^2+sigma^2)^2/sigma^2``, EDM
``(sigma_ve^2 + sigma_data^2) / (sigma_ve sigma_data)^2``, min-SNR-gamma ``min(SNR, gamma)``.
Losses are mean squared errors over the data dimensions (``||.||^2 / d``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr, ndtri

from diffusion_lv import checks, convert
from diffusion_lv.parameterization import Parameterization
from diffusion_lv.schedules import Schedule, expand_to

Array = jax.Array


# -- weightings (x0 space) -------------------------------------------------------------


def _snr(schedule: Schedule, t):
    return jnp.square(schedule.alpha(t) / schedule.sigma(t))


def weight_ml(schedule: Schedule, t, sigma_data: float) -> Array:
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    return schedule.g2(t) * jnp.square(alpha) / (2.0 * sigma**4)


def weight_eps(schedule, t, sigma_data):
    return _snr(schedule, t)


def weight_score(schedule, t, sigma_data):
    return jnp.square(schedule.alpha(t)) / schedule.sigma(t) ** 4


def weight_x0(schedule, t, sigma_data):
    return jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(float)))


def weight_velocity(schedule, t, sigma_data):
    alpha, sigma, dalpha, dsigma = schedule.alpha_sigma_derivatives(t)
    return jnp.square(dalpha - dsigma * alpha / sigma)


def weight_v(schedule, t, sigma_data):
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    return jnp.square(jnp.square(alpha) + jnp.square(sigma)) / jnp.square(sigma)


def weight_edm(schedule, t, sigma_data):
    sigma_ve = schedule.sigma_ve(t)
    return (jnp.square(sigma_ve) + sigma_data**2) / jnp.square(sigma_ve * sigma_data)


def weight_min_snr(schedule, t, sigma_data, gamma: float = 5.0):
    return jnp.minimum(_snr(schedule, t), gamma)


WEIGHTINGS: dict[str, Callable] = {
    "ml": weight_ml,
    "eps": weight_eps,
    "score": weight_score,
    "x0": weight_x0,
    "velocity": weight_velocity,
    "v": weight_v,
    "edm": weight_edm,
    "min_snr": weight_min_snr,
}


def weighting(name: str, schedule: Schedule, t, sigma_data: float) -> Array:
    """``w(t)`` of the weighting ``name``; ``sigma_data`` is read by ``edm`` only."""
    checks.choice("weighting", name, WEIGHTINGS)
    return WEIGHTINGS[name](schedule, t, sigma_data)


# -- time samplers ---------------------------------------------------------------------
# Each proposal is a pair of functions of ``(sampler, ., model)``: ``inverse_cdf`` maps
# ``u ~ U[0, 1)`` to times in ``[t_min, t_max]`` and ``density`` is its normalised ``q(t)``.
# Keeping the pair in one registry entry keeps the two in step.


def _log_snr_ends(schedule: Schedule):
    """``(lambda(t_max), lambda(t_min))``: the log-SNR range, low end first."""
    return schedule.log_snr(schedule.t_max), schedule.log_snr(schedule.t_min)


def _dlam_dt(schedule: Schedule, t) -> Array:
    """``|d lambda / dt| = g^2 / sigma^2``, for every schedule."""
    return schedule.g2(t) / jnp.square(schedule.sigma(t))


def _uniform_times(sampler, u, model):
    t_lo, t_hi = model.schedule.t_min, model.schedule.t_max
    return t_lo + (t_hi - t_lo) * u


def _uniform_density(sampler, t, model):
    t_lo, t_hi = model.schedule.t_min, model.schedule.t_max
    return jnp.full_like(jnp.asarray(t, dtype=jnp.result_type(float)), 1.0 / (t_hi - t_lo))


def _log_snr_times(sampler, u, model):
    lam_lo, lam_hi = _log_snr_ends(model.schedule)
    return model.schedule.t_from_log_snr(lam_lo + (lam_hi - lam_lo) * u)


def _log_snr_density(sampler, t, model):
    lam_lo, lam_hi = _log_snr_ends(model.schedule)
    return _dlam_dt(model.schedule, t) / (lam_hi - lam_lo)


def _lognormal_bounds(sampler, schedule: Schedule):
    """Normal CDF values of the domain's ends (the normal is truncated to the domain)."""
    log_lo = jnp.log(schedule.sigma_ve(schedule.t_min))
    log_hi = jnp.log(schedule.sigma_ve(schedule.t_max))
    return (
        ndtr((log_lo - sampler.p_mean) / sampler.p_std),
        ndtr((log_hi - sampler.p_mean) / sampler.p_std),
    )


def _lognormal_times(sampler, u, model):
    schedule = model.schedule
    a, b = _lognormal_bounds(sampler, schedule)
    z = ndtri(a + (b - a) * u)
    sigma_ve = jnp.exp(sampler.p_mean + sampler.p_std * z)
    return jnp.clip(schedule.t_from_sigma_ve(sigma_ve), schedule.t_min, schedule.t_max)


def _lognormal_density(sampler, t, model):
    schedule = model.schedule
    a, b = _lognormal_bounds(sampler, schedule)
    log_s = 0.5 * (-schedule.log_snr(t))
    z = (log_s - sampler.p_mean) / sampler.p_std
    pdf = jnp.exp(-0.5 * z**2) / (sampler.p_std * math.sqrt(2 * math.pi))
    return pdf * 0.5 * _dlam_dt(schedule, t) / (b - a)


def _ml_importance_cdf_ends(model):
    """``c = -2 log sigma_data`` and the CDF's ends ``log(e^lambda + e^c)`` over the domain."""
    c = -2.0 * math.log(model.sigma_data)
    lam_lo, lam_hi = _log_snr_ends(model.schedule)
    return c, jnp.logaddexp(lam_lo, c), jnp.logaddexp(lam_hi, c)


def _ml_importance_times(sampler, u, model):
    c, f_lo, f_hi = _ml_importance_cdf_ends(model)
    f = f_lo + (f_hi - f_lo) * u
    return model.schedule.t_from_log_snr(f + jnp.log(-jnp.expm1(c - f)))


def _ml_importance_density(sampler, t, model):
    schedule = model.schedule
    c, f_lo, f_hi = _ml_importance_cdf_ends(model)
    return _dlam_dt(schedule, t) * jax.nn.sigmoid(schedule.log_snr(t) - c) / (f_hi - f_lo)


class Proposal(NamedTuple):
    inverse_cdf: Callable  # (sampler, u, model) -> t
    density: Callable  # (sampler, t, model) -> q(t)


TIME_SAMPLERS: dict[str, Proposal] = {
    "uniform": Proposal(_uniform_times, _uniform_density),
    "log_snr": Proposal(_log_snr_times, _log_snr_density),
    "lognormal": Proposal(_lognormal_times, _lognormal_density),
    "ml_importance": Proposal(_ml_importance_times, _ml_importance_density),
}


@dataclasses.dataclass(frozen=True)
class TimeSampler:
    """Draws times in ``[t_min, t_max]`` and knows its density there (for importance weights).

    name: ``uniform`` (in t), ``log_snr`` (uniform log-SNR), ``lognormal`` (EDM: log sigma_ve
    normal with ``p_mean``, ``p_std``, truncated to the domain), ``ml_importance`` (density
    proportional to ``w_ML(t) * mmse(t)``, where ``mmse = sigma_data^2 sigma_ve^2 /
    (sigma_data^2 + sigma_ve^2)`` is the error of the optimal denoiser for Gaussian data of
    standard deviation ``sigma_data``: the zero-variance proposal for the ML loss on such data;
    its CDF in log-SNR is ``log(e^lambda + 1/sigma_data^2)``, inverted in closed form).
    The schedule and ``sigma_data`` are the model's (a :class:`Parameterization`).
    """

    name: str = "uniform"
    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self):
        checks.choice("name", self.name, TIME_SAMPLERS)
        checks.number("p_mean", self.p_mean)
        checks.number("p_std", self.p_std, lo=0.0, lo_open=True)

    def sample(self, key: Array, n: int, model: Parameterization) -> Array:
        """``n`` times drawn from ``q``."""
        u = jax.random.uniform(key, (n,), dtype=jnp.result_type(float))
        return TIME_SAMPLERS[self.name].inverse_cdf(self, u, model)

    def density(self, t: Array, model: Parameterization) -> Array:
        """``q(t)`` on ``[t_min, t_max]`` (normalised)."""
        return TIME_SAMPLERS[self.name].density(self, t, model)


# -- the loss --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The training objective's weighting and time sampling; what the network outputs and the
    schedule it lives in are the model's (a :class:`Parameterization`)."""

    weighting: str = "ml"
    time_sampler: TimeSampler = TimeSampler()
    importance_weighted: bool = True

    def __post_init__(self):
        checks.choice("weighting", self.weighting, WEIGHTINGS)
        if not isinstance(self.time_sampler, TimeSampler):
            raise ValueError(f"time_sampler={self.time_sampler!r} is not valid; valid: a "
                             "TimeSampler")


def squared_error(denoised: Array, x0: Array) -> Array:
    """Per-example ``||D - x0||^2 / d``."""
    return jnp.mean(jnp.square(denoised - x0).reshape(x0.shape[0], -1), axis=-1)


def loss_weight(config: LossConfig, model: Parameterization, t: Array) -> Array:
    """``w(t)``, times the importance weight ``u(t)/q(t)`` when the config asks for it."""
    schedule = model.schedule
    w = weighting(config.weighting, schedule, t, model.sigma_data)
    if config.importance_weighted:
        uniform = 1.0 / (schedule.t_max - schedule.t_min)
        w = w * uniform / config.time_sampler.density(t, model)
    return w


def draw_times_and_noise(
    key: Array, x0: Array, model: Parameterization, config: LossConfig
) -> tuple[Array, Array]:
    """The loss's random draws for a batch: times from the time sampler and Gaussian noise."""
    key_t, key_eps = jax.random.split(key)
    t = config.time_sampler.sample(key_t, x0.shape[0], model).astype(x0.dtype)
    return t, jax.random.normal(key_eps, x0.shape, x0.dtype)


def loss_at(
    model_fn: Callable[[Array, Array], Array],
    x0: Array,
    t: Array,
    eps: Array,
    model: Parameterization,
    config: LossConfig,
) -> Array:
    """Per-example ``w(t) ||D_theta(x_t, t) - x0||^2 / d`` at given times and noise."""
    schedule = model.schedule
    x_t = perturb(x0, eps, t, schedule)
    denoised = convert.to_x0(
        model_fn(x_t, t), model.prediction, x_t, t, schedule, model.sigma_data
    )
    return loss_weight(config, model, t) * squared_error(denoised, x0)


def diffusion_loss(
    model_fn: Callable[[Array, Array], Array],
    x0: Array,
    key: Array,
    model: Parameterization,
    config: LossConfig,
) -> tuple[Array, Array]:
    """Per-example losses and the times drawn: ``w(t) ||D_theta(x_t, t) - x0||^2 / d``.

    ``model_fn(x_t, t)`` returns the network's native output (``model.prediction``) in
    ``model.schedule``'s coordinates.
    """
    t, eps = draw_times_and_noise(key, x0, model, config)
    return loss_at(model_fn, x0, t, eps, model, config), t


def perturb(x0: Array, eps: Array, t: Array, schedule: Schedule) -> Array:
    """``x_t = alpha(t) x0 + sigma(t) eps``."""
    return expand_to(schedule.alpha(t), x0) * x0 + expand_to(schedule.sigma(t), x0) * eps
