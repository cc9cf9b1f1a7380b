"""One loss for every parameterisation: ``w(t) * ||D_theta(x_t, t) - x0||^2``.

The network's native output (score, eps, x0, velocity, v, edm) is converted to the denoiser
``D_theta`` (convert.py); a *weighting* says how much each noise level counts and a *time
sampler* says where to spend samples. The two are separate choices:

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

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr, ndtri

from diffusion_lv import convert
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

# The weighting under which each native output's plain MSE is the loss.
NATIVE_WEIGHTING = {
    "x0": "x0", "eps": "eps", "score": "score", "velocity": "velocity", "v": "v", "edm": "edm"
}


def weighting(name: str, schedule: Schedule, t, sigma_data: float = 0.5) -> Array:
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; valid choices: {sorted(WEIGHTINGS)}")
    return WEIGHTINGS[name](schedule, t, sigma_data)


# -- time samplers ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TimeSampler:
    """Draws times in ``[t_min, t_max]`` and knows its density there (for importance weights).

    name: ``uniform`` (in t), ``log_snr`` (uniform log-SNR), ``lognormal`` (EDM: log sigma_ve
    normal with ``p_mean``, ``p_std``, truncated to the domain), ``ml_importance`` (density
    proportional to ``w_ML(t) * mmse(t)``, where ``mmse = sigma_data^2 sigma_ve^2 /
    (sigma_data^2 + sigma_ve^2)`` is the error of the optimal denoiser for Gaussian data of
    standard deviation ``sigma_data``: the zero-variance proposal for the ML loss on such data;
    its CDF in log-SNR is ``log(e^lambda + 1/sigma_data^2)``, inverted in closed form).
    """

    name: str = "uniform"
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5

    def __post_init__(self):
        if self.name not in TIME_SAMPLERS:
            raise ValueError(
                f"unknown time sampler {self.name!r}; valid choices: {list(TIME_SAMPLERS)}"
            )

    def sample(self, key: Array, n: int, schedule: Schedule) -> Array:
        u = jax.random.uniform(key, (n,), dtype=jnp.result_type(float))
        t_lo, t_hi = schedule.t_min, schedule.t_max
        if self.name == "uniform":
            return t_lo + (t_hi - t_lo) * u
        lam_hi, lam_lo = schedule.log_snr(t_lo), schedule.log_snr(t_hi)
        if self.name == "log_snr":
            return schedule.t_from_log_snr(lam_lo + (lam_hi - lam_lo) * u)
        if self.name == "lognormal":
            a, b = self._lognormal_bounds(schedule)
            z = ndtri(a + (b - a) * u)
            return jnp.clip(
                schedule.t_from_sigma_ve(jnp.exp(self.p_mean + self.p_std * z)), t_lo, t_hi
            )
        # ml_importance
        c = -2.0 * math.log(self.sigma_data)
        f_lo, f_hi = jnp.logaddexp(lam_lo, c), jnp.logaddexp(lam_hi, c)
        f = f_lo + (f_hi - f_lo) * u
        lam = f + jnp.log(-jnp.expm1(c - f))
        return schedule.t_from_log_snr(lam)

    def density(self, t: Array, schedule: Schedule) -> Array:
        """``q(t)`` on ``[t_min, t_max]`` (normalised)."""
        t_lo, t_hi = schedule.t_min, schedule.t_max
        if self.name == "uniform":
            return jnp.full_like(jnp.asarray(t, dtype=jnp.result_type(float)), 1.0 / (t_hi - t_lo))
        # |d lambda / dt| = g^2 / sigma^2 for every schedule.
        dlam_dt = schedule.g2(t) / jnp.square(schedule.sigma(t))
        lam_hi, lam_lo = schedule.log_snr(t_lo), schedule.log_snr(t_hi)
        if self.name == "log_snr":
            return dlam_dt / (lam_hi - lam_lo)
        if self.name == "lognormal":
            a, b = self._lognormal_bounds(schedule)
            log_s = 0.5 * (-schedule.log_snr(t))
            z = (log_s - self.p_mean) / self.p_std
            pdf = jnp.exp(-0.5 * z**2) / (self.p_std * math.sqrt(2 * math.pi))
            return pdf * 0.5 * dlam_dt / (b - a)
        c = -2.0 * math.log(self.sigma_data)
        f_lo, f_hi = jnp.logaddexp(lam_lo, c), jnp.logaddexp(lam_hi, c)
        return dlam_dt * jax.nn.sigmoid(schedule.log_snr(t) - c) / (f_hi - f_lo)

    def _lognormal_bounds(self, schedule: Schedule):
        """Normal CDF values of the domain's ends (the normal is truncated to the domain)."""
        log_lo = jnp.log(schedule.sigma_ve(schedule.t_min))
        log_hi = jnp.log(schedule.sigma_ve(schedule.t_max))
        return ndtr((log_lo - self.p_mean) / self.p_std), ndtr((log_hi - self.p_mean) / self.p_std)


TIME_SAMPLERS = ("uniform", "log_snr", "lognormal", "ml_importance")


# -- the loss --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Everything that defines a training objective, independent of the network."""

    prediction: str = "eps"
    weighting: str = "ml"
    time_sampler: TimeSampler = TimeSampler()
    importance_weighted: bool = True
    sigma_data: float = 0.5

    def __post_init__(self):
        convert.check_prediction(self.prediction, "prediction (network output)")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"unknown weighting {self.weighting!r}; valid choices: {sorted(WEIGHTINGS)}"
            )


def squared_error(denoised: Array, x0: Array) -> Array:
    """Per-example ``||D - x0||^2 / d``."""
    return jnp.mean(jnp.square(denoised - x0).reshape(x0.shape[0], -1), axis=-1)


def loss_weight(config: LossConfig, schedule: Schedule, t: Array) -> Array:
    """``w(t)``, times the importance weight ``u(t)/q(t)`` when the config asks for it."""
    w = weighting(config.weighting, schedule, t, config.sigma_data)
    if config.importance_weighted:
        uniform = 1.0 / (schedule.t_max - schedule.t_min)
        w = w * uniform / config.time_sampler.density(t, schedule)
    return w


def draw_times_and_noise(
    key: Array, x0: Array, schedule: Schedule, config: LossConfig
) -> tuple[Array, Array]:
    """The loss's random draws for a batch: times from the time sampler and Gaussian noise."""
    key_t, key_eps = jax.random.split(key)
    t = config.time_sampler.sample(key_t, x0.shape[0], schedule).astype(x0.dtype)
    return t, jax.random.normal(key_eps, x0.shape, x0.dtype)


def loss_at(
    model_fn: Callable[[Array, Array], Array],
    x0: Array,
    t: Array,
    eps: Array,
    schedule: Schedule,
    config: LossConfig,
) -> Array:
    """Per-example ``w(t) ||D_theta(x_t, t) - x0||^2 / d`` at given times and noise."""
    x_t = perturb(x0, eps, t, schedule)
    denoised = convert.to_x0(
        model_fn(x_t, t), config.prediction, x_t, t, schedule, config.sigma_data
    )
    return loss_weight(config, schedule, t) * squared_error(denoised, x0)


def diffusion_loss(
    model_fn: Callable[[Array, Array], Array],
    x0: Array,
    key: Array,
    schedule: Schedule,
    config: LossConfig,
) -> tuple[Array, Array]:
    """Per-example losses and the times drawn: ``w(t) ||D_theta(x_t, t) - x0||^2 / d``.

    ``model_fn(x_t, t)`` returns the network's native output (``config.prediction``).
    """
    t, eps = draw_times_and_noise(key, x0, schedule, config)
    return loss_at(model_fn, x0, t, eps, schedule, config), t


def perturb(x0: Array, eps: Array, t: Array, schedule: Schedule) -> Array:
    """``x_t = alpha(t) x0 + sigma(t) eps``."""
    return expand_to(schedule.alpha(t), x0) * x0 + expand_to(schedule.sigma(t), x0) * eps
