"""The variational bound on ``-log q_0(x)`` of the reverse-SDE model, and the ML objective's excess.

What it bounds. The maximum-likelihood weighting ``w_ML = g^2 alpha^2 / (2 sigma^4) = -1/2 dSNR/dt``
makes the denoising loss a bound on the likelihood of one model: prior ``N(0, sigma(t_max)^2)``
at ``t_max``, the reverse SDE (rate ``c = 2`` of the Langevin split) with the learned score down
to ``t_min``, then a decoder from ``x_{t_min}`` to the data (Song et al. 2021, "Maximum likelihood
training of score-based diffusion models", Thm 1; Kingma et al. 2021, VDM, eq. 17). For data
``x`` (in data units)::

    -log q_0(x) <= KL(q(x_T | x) || prior)                             (prior term)
                   + int_{t_min}^{t_max} w_ML(t) E||D_theta(x_t, t) - x||^2 dt (diffusion term)
                   + E[-log dec(x | x_{t_min})]                        (reconstruction)

with ``x_t = alpha x + sigma eps`` and ``||.||^2`` summed over the data dimensions. The decoder is
``N(x_{t_min} / alpha, sigma_ve(t_min)^2)`` (so the reconstruction term is
``d/2 log(2 pi e sigma_ve(t_min)^2)``, no Monte Carlo), or for discrete data DDPM's discretised
decoder (below). The probability-flow ODE (likelihood.py) is the likelihood of a *different* model
(the ``c = 1`` member with the same score): the two agree only as the score becomes exact.

With the exact denoiser the bound is tight: per example it equals, exactly (continuous time, no
discretisation error; the derivation is in docs/likelihood.md),

    E[-log p_{t_min}(x + s_min eps)] + E[log p_T(z_T) - log prior(z_T)],  z_T = x + s_max eps2

(canonical coordinates, ``s = sigma_ve``): the exact NLL at ``t_min``, smoothed once more by the
``t_min`` noise, plus this point's share of the prior mismatch ``KL(p_T || prior)``.
:func:`exact_bound` computes it for a Gaussian mixture; the tests check the bound against it in
VP, VE and RF. For any model the bound's mean over data exceeds the exact one by
``J(theta) - J*``, the ML objective's excess ``int w_ML E||D_theta - D*||^2 dt``
(:func:`make_excess_fn`, exact for mixtures).

Estimation. The diffusion term is importance-sampled in time: ``num_times`` draws per example
from a proposal ``q(t)`` (default the ML proposal of losses.py, ``proportional to w_ML * mmse``
for Gaussian data of the model's ``sigma_data``: near-constant integrand), each term
``w_ML(t)/q(t) ||D_theta - x||^2``, with its own noise. The per-example standard error is that of
the mean of these terms. Nothing is schedule-specific: the weight and the proposal derive from
``(alpha, sigma)`` (losses.py) and any output kind becomes ``D`` through ``convert.to_x0``; one
``jax.jit``, the time draws evaluated by ``lax.map`` in vectorised chunks.

Discrete data: the conventions of likelihood.py, so that the ODE NLL and the bound compare.
``"uniform"``: the data are dequantised into bins of width ``w = (high-low)/L`` and the bound is
taken at the dequantised point, ``offset = -d log w``. ``"centred"``: the bound is taken at the
grid value itself and the decoder is DDPM's: ``P_dec(k | x_{t_min})``, the mass of
``N(x_{t_min}/alpha, sigma_ve^2)`` in the centred bin; ``offset = -d/2 log(2 pi e sigma_ve^2) -
log P_dec`` replaces the Gaussian decoder by it (the VDM/DDPM bound on ``-log P(k)``). In both,
bits/dim is ``(nll + offset) / (d ln 2)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv import checks, convert, likelihood, losses
from diffusion_lv.oracle import GaussianMixture
from diffusion_lv.parameterization import Parameterization
from diffusion_lv.schedules import Schedule, expand_to

Array = jax.Array
ApplyFn = Callable[[Any, Array, Array], Array]  # (params, x, t) -> native prediction

DEFAULT_BAND_EDGES = (0.1, 1.0, 10.0)  # sigma_ve edges of the excess's noise bands


@dataclasses.dataclass(frozen=True)
class BoundConfig:
    """How the bound is estimated; hashable, so one config compiles once.

    ``num_times``: time draws per example (each with its own noise); ``time_sampler``: the
    proposal in time (losses.TimeSampler; the ML proposal by default); ``times_per_call``: draws
    evaluated by one vectorised model call (memory: ``times_per_call * batch`` inputs).
    ``num_levels``, ``data_range``, ``dequantization``: as in ``likelihood.LikelihoodConfig``
    (:meth:`like` copies them from one).
    """

    num_times: int = 64
    time_sampler: losses.TimeSampler = losses.TimeSampler("ml_importance")
    times_per_call: int = 16
    num_levels: int | None = None
    data_range: tuple[float, float] = (-1.0, 1.0)
    dequantization: str = "uniform"

    def __post_init__(self):
        checks.number("num_times", self.num_times, lo=2, integer=True)
        checks.number("times_per_call", self.times_per_call, lo=1, integer=True)
        if not isinstance(self.time_sampler, losses.TimeSampler):
            raise ValueError(
                f"time_sampler={self.time_sampler!r} is not valid; valid: a losses.TimeSampler "
                f"(names {sorted(losses.TIME_SAMPLERS)})"
            )
        likelihood.check_discretisation(self.num_levels, self.data_range, self.dequantization)

    @classmethod
    def like(cls, config: likelihood.LikelihoodConfig, **kwargs) -> BoundConfig:
        """A bound config with the discrete-data settings of an ODE ``LikelihoodConfig``."""
        return cls(num_levels=config.num_levels, data_range=tuple(config.data_range),
                   dequantization=config.dequantization, **kwargs)


class BoundResult(NamedTuple):
    nll: Array  # (B,) nats: prior + diffusion + reconstruction, the bound on -log q_0(x)
    bits_per_dim: Array  # (B,) (nll + offset) / (d ln 2)
    standard_error: Array  # (B,) nats: Monte Carlo standard error of nll + offset
    prior: Array  # (B,) KL(q(x_T | x) || prior)
    diffusion: Array  # (B,) the ML-weighted denoising loss integrated over [t_min, t_max]
    reconstruction: Array  # (B,) d/2 log(2 pi e sigma_ve(t_min)^2)
    offset: Array  # (B,) discrete data: the bin's offset (module docstring); 0 if continuous


# -- the terms -----------------------------------------------------------------------------------


def prior_kl(x: Array, schedule: Schedule) -> Array:
    """``KL(N(alpha_T x, sigma_T^2 I) || N(0, s^2 I))`` per example, ``s`` the prior's std."""
    t_max = jnp.asarray(schedule.t_max, x.dtype)
    alpha, sigma = schedule.alpha(t_max), schedule.sigma(t_max)
    ratio = jnp.square(sigma / schedule.prior_std())
    dim = math.prod(x.shape[1:])
    sq = jnp.sum(jnp.reshape(jnp.square(x), (x.shape[0], -1)), axis=-1)
    return 0.5 * (dim * (ratio - 1.0 - jnp.log(ratio)) + jnp.square(alpha) * sq
                  / schedule.prior_std() ** 2)


def gaussian_reconstruction(schedule: Schedule, dim: int, dtype=jnp.float32) -> Array:
    """``E[-log N(x; x_{t_min}/alpha, sigma_ve^2 I)] = d/2 log(2 pi e sigma_ve(t_min)^2)``."""
    sigma_ve = schedule.sigma_ve(jnp.asarray(schedule.t_min, dtype))
    return 0.5 * dim * (math.log(2 * math.pi) + 1.0 + 2.0 * jnp.log(sigma_ve))


def ml_weight_over_proposal(t: Array, model: Parameterization, sampler: losses.TimeSampler):
    """``w_ML(t) / q(t)``: the importance weight of a time drawn from ``sampler``."""
    w = losses.weight_ml(model.schedule, t, model.sigma_data)
    return w / sampler.density(t, model)


def _squared_norm(a: Array) -> Array:
    return jnp.sum(jnp.reshape(jnp.square(a), (a.shape[0], -1)), axis=-1)


def _time_terms(key, x, model: Parameterization, sampler, num_times, per_call, term_fn):
    """``(num_times, B)`` terms ``term_fn(t, eps, key)`` at times drawn per example from
    ``sampler`` (one draw and one noise per example and time), by ``lax.map`` in chunks."""

    def one_draw(k):
        k_t, k_eps, k_extra = jax.random.split(k, 3)
        t = sampler.sample(k_t, x.shape[0], model).astype(x.dtype)
        eps = jax.random.normal(k_eps, x.shape, x.dtype)
        return term_fn(t, eps, k_extra)

    keys = jax.random.split(key, num_times)
    return jax.lax.map(one_draw, keys, batch_size=min(per_call, num_times))


# -- the bound -----------------------------------------------------------------------------------


def make_bound_fn(
    apply_fn: ApplyFn,
    model: Parameterization,
    config: BoundConfig = BoundConfig(),  # noqa: B008 (frozen, hashable)
) -> Callable[[Any, Array, Array], BoundResult]:
    """A jitted ``fn(params, x, key) -> BoundResult`` for a network with native output.

    ``apply_fn(params, x, t)`` is the network in ``model.schedule``'s coordinates returning its
    native output ``model.prediction`` (``model.model_apply(network.apply)``; the oracle's
    ``GaussianMixture.predict`` in the tests); ``x`` is data of shape ``(batch, ...)`` in data
    units. ``key`` draws the times, the noise and the dequantisation; the times and noise are
    those ``make_excess_fn`` draws from the same key (a paired comparison).
    """
    if not isinstance(model, Parameterization):
        raise ValueError(f"model must be a Parameterization, got {type(model).__name__}")
    if not isinstance(config, BoundConfig):
        raise ValueError(f"config must be a BoundConfig, got {type(config).__name__}")
    schedule = model.schedule

    def bound(params, x, key):
        if x.ndim < 2:
            raise ValueError(f"x must have shape (batch, ...), got shape {x.shape}")
        batch, dim = x.shape[0], math.prod(x.shape[1:])
        # The times and noise come from ``key`` exactly as in make_excess_fn: with one key the
        # two are paired (their difference has no time or noise sampling error of its own).
        key_deq, key_t = jax.random.fold_in(key, 1), key
        t_min = jnp.asarray(schedule.t_min, x.dtype)
        sigma_min = schedule.sigma_ve(t_min)
        offset = jnp.zeros((batch,), x.dtype)
        centred = config.num_levels is not None and config.dequantization == "centred"
        levels = None
        if config.num_levels is not None:
            if centred:
                levels = likelihood.levels_of(x, config.num_levels, config.data_range)
                low, high = config.data_range
                x = low + (high - low) * levels / (config.num_levels - 1)
            else:
                width = likelihood.bin_width(config.num_levels, config.data_range, "uniform")
                x = likelihood.dequantize(key_deq, x, config.num_levels, config.data_range)
                offset = offset - dim * math.log(width)
        reconstruction = gaussian_reconstruction(schedule, dim, x.dtype)

        def term(t, eps, extra_key):
            x_t = expand_to(schedule.alpha(t), x) * x + expand_to(schedule.sigma(t), x) * eps
            denoised = convert.to_x0(apply_fn(params, x_t, t), model.prediction, x_t, t,
                                     schedule, model.sigma_data)
            value = ml_weight_over_proposal(t, model, config.time_sampler) * _squared_norm(
                denoised - x)
            decoder = jnp.zeros_like(value)
            if centred:  # DDPM's decoder at t_min, one draw of x_{t_min} per term
                y = x + sigma_min * jax.random.normal(extra_key, x.shape, x.dtype)
                decoder = -likelihood.centred_bin_log_prob(
                    y, levels, sigma_min, config.num_levels, config.data_range)
            return value, decoder

        terms, decoder_terms = _time_terms(key_t, x, model, config.time_sampler,
                                           config.num_times, config.times_per_call, term)
        diffusion = jnp.mean(terms, axis=0)
        # The decoder's draws are independent of the diffusion term's: one standard error.
        total = terms + decoder_terms
        standard_error = jnp.std(total, axis=0, ddof=1) / math.sqrt(config.num_times)
        if centred:  # the Gaussian decoder is replaced by DDPM's
            offset = offset + jnp.mean(decoder_terms, axis=0) - reconstruction
        prior = prior_kl(x, schedule)
        reconstruction = jnp.broadcast_to(reconstruction, (batch,))
        nll = prior + diffusion + reconstruction
        return BoundResult(
            nll=nll,
            bits_per_dim=(nll + offset) / (dim * math.log(2.0)),
            standard_error=standard_error,
            prior=prior,
            diffusion=diffusion,
            reconstruction=reconstruction,
            offset=offset,
        )

    jitted = jax.jit(bound)

    def bound_fn(params, x, key):
        return jitted(params, x, key)

    bound_fn.__doc__ = make_bound_fn.__doc__
    return bound_fn


def evaluate_bound(bound_fn, params, batches, key: Array) -> dict[str, float]:
    """Dataset figures from ``bound_fn = make_bound_fn(...)`` over an iterable of batches.

    Batch ``i`` uses ``fold_in(key, i)``; a batch given as ``(x, valid)`` counts only its first
    ``valid`` examples (the rest pad it to a shape already compiled). Returns the means of
    ``nll`` (nats) and ``bits_per_dim`` with their standard errors over examples (which include
    the Monte Carlo noise of each example's estimate), the mean per-example Monte Carlo
    standard error in bits/dim, the means of the three terms (nats) and the number of examples.
    """
    fields = ("nll", "bits_per_dim", "standard_error", "prior", "diffusion", "reconstruction")
    values: dict[str, list] = {name: [] for name in fields}
    dim = None
    for i, item in enumerate(batches):
        x, valid = item if isinstance(item, tuple) else (item, None)
        result = bound_fn(params, x, jax.random.fold_in(key, i))
        dim = math.prod(x.shape[1:])
        for name in fields:
            values[name].append(np.asarray(getattr(result, name), np.float64)[:valid])
    if dim is None:
        raise ValueError("no batch was given")
    arrays = {name: np.concatenate(v) for name, v in values.items()}
    n = arrays["nll"].size

    def standard_error(v):
        return float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")

    return {
        "nll": float(arrays["nll"].mean()),
        "nll_standard_error": standard_error(arrays["nll"]),
        "bits_per_dim": float(arrays["bits_per_dim"].mean()),
        "bits_per_dim_standard_error": standard_error(arrays["bits_per_dim"]),
        "monte_carlo_standard_error_bpd": float(
            arrays["standard_error"].mean() / (dim * math.log(2.0))),
        "prior": float(arrays["prior"].mean()),
        "diffusion": float(arrays["diffusion"].mean()),
        "reconstruction": float(arrays["reconstruction"].mean()),
        "num_examples": n,
    }


# -- the exact bound of a Gaussian mixture -------------------------------------------------------


def exact_bound(mixture: GaussianMixture, x: Array, key: Array, schedule: Schedule,
                num_draws: int = 256) -> tuple[Array, Array]:
    """The bound of the exact model at data ``x`` (shape ``(B, D)``): per example its value and
    Monte Carlo standard error, from ``num_draws`` noise draws (module docstring)::

        E[-log p_{t_min}(x + s_min eps)] + E[log p_T(x + s_T eps) - log prior(x + s_T eps)]

    in canonical coordinates (``s = sigma_ve``, the prior ``N(0, (sigma(t_max)/alpha(t_max))^2)``
    there). No model evaluation: the mixture's closed-form density only.
    """
    t_min, t_max = (jnp.asarray(t, x.dtype) for t in (schedule.t_min, schedule.t_max))
    s_min, s_max = schedule.sigma_ve(t_min), schedule.sigma_ve(t_max)
    prior_std = schedule.prior_std() / schedule.alpha(t_max)
    dim = x.shape[1]

    def one(k):
        k_min, k_max = jax.random.split(k)
        z_min = x + s_min * jax.random.normal(k_min, x.shape, x.dtype)
        z_max = x + s_max * jax.random.normal(k_max, x.shape, x.dtype)
        log_prior = -0.5 * jnp.sum(jnp.square(z_max), -1) / prior_std**2 - dim * (
            jnp.log(prior_std) + 0.5 * math.log(2 * math.pi))
        return (-mixture.log_prob_ve(z_min, s_min)
                + mixture.log_prob_ve(z_max, s_max) - log_prior)

    draws = jax.lax.map(one, jax.random.split(key, num_draws), batch_size=min(num_draws, 64))
    return jnp.mean(draws, 0), jnp.std(draws, 0, ddof=1) / math.sqrt(num_draws)


# -- the ML objective's excess over its minimum ----------------------------------------------


class ExcessResult(NamedTuple):
    total: Array  # (B,) nats: int w_ML E||D_theta - D*||^2 dt, at times and noise drawn per example
    bands: Array  # (B, num_bands) the same restricted to each sigma_ve band (they sum to total)
    standard_error: Array  # (B,) Monte Carlo standard error of total


def band_names(edges: Sequence[float]) -> list[str]:
    """``sigma_ve`` bands of the excess: ``below_e0``, ``e0_to_e1``, ..., ``above_eN``
    (characters TensorBoard keeps in a tag, so the metric and the scalar share one name)."""
    edges = list(edges)
    names = [f"below_{edges[0]:g}"] if edges else ["all"]
    names += [f"{a:g}_to_{b:g}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return names + ([f"above_{edges[-1]:g}"] if edges else [])


def make_excess_fn(
    apply_fn: ApplyFn,
    model: Parameterization,
    config: BoundConfig = BoundConfig(),  # noqa: B008 (frozen, hashable)
    band_edges: Sequence[float] = DEFAULT_BAND_EDGES,
) -> Callable[[Any, Array, Array, GaussianMixture], ExcessResult]:
    """A jitted ``fn(params, x0, key, mixture) -> ExcessResult``: ``J(theta) - J*`` per example.

    The ML objective ``J(theta) = int w_ML E||D_theta(x_t, t) - x0||^2 dt`` exceeds its minimum
    (the exact denoiser ``D*``'s) by ``int w_ML E||D_theta - D*||^2 dt`` in expectation over data
    (the cross term vanishes because ``D* = E[x0 | x_t]``); with the exact ``D*`` of a mixture,
    the estimate has no bias and little variance. Its mean over data is also the bound's excess
    over the exact model's bound. ``x0`` are draws of the mixture (shape ``(B, ...)``, data
    units); times and noise as in the bound (``config``'s proposal and ``num_times``);
    ``band_edges`` split it by ``sigma_ve``.
    """
    if not isinstance(model, Parameterization):
        raise ValueError(f"model must be a Parameterization, got {type(model).__name__}")
    if not isinstance(config, BoundConfig):
        raise ValueError(f"config must be a BoundConfig, got {type(config).__name__}")
    edges = tuple(float(e) for e in band_edges)
    if any(not b > a for a, b in zip(edges[:-1], edges[1:], strict=True)) or any(
            not e > 0 for e in edges):
        raise ValueError(f"band_edges={band_edges!r} is not valid; valid: increasing values > 0")
    schedule = model.schedule
    num_bands = len(edges) + 1

    def excess(params, x0, key, mixture):
        if x0.ndim < 2:
            raise ValueError(f"x0 must have shape (batch, ...), got shape {x0.shape}")
        batch = x0.shape[0]

        def term(t, eps, _):
            x_t = expand_to(schedule.alpha(t), x0) * x0 + expand_to(schedule.sigma(t), x0) * eps
            denoised = convert.to_x0(apply_fn(params, x_t, t), model.prediction, x_t, t,
                                     schedule, model.sigma_data)
            exact = mixture.denoise(x_t.reshape(batch, -1), t, schedule).reshape(x0.shape)
            value = ml_weight_over_proposal(t, model, config.time_sampler) * _squared_norm(
                denoised - exact)
            band = jnp.searchsorted(jnp.asarray(edges, t.dtype), schedule.sigma_ve(t),
                                    side="right")
            return value, jax.nn.one_hot(band, num_bands, dtype=value.dtype)

        values, bands = _time_terms(key, x0, model, config.time_sampler, config.num_times,
                                    config.times_per_call, term)
        return ExcessResult(
            total=jnp.mean(values, 0),
            bands=jnp.mean(values[..., None] * bands, 0),
            standard_error=jnp.std(values, 0, ddof=1) / math.sqrt(config.num_times),
        )

    jitted = jax.jit(excess)

    def excess_fn(params, x0, key, mixture):
        return jitted(params, x0, key, mixture)

    excess_fn.__doc__ = make_excess_fn.__doc__
    return excess_fn


def excess_bits_per_dim(result: ExcessResult, dim: int,
                        edges: Sequence[float] = DEFAULT_BAND_EDGES) -> dict[str, float]:
    """Dataset means of an :class:`ExcessResult` of ``dim``-dimensional data in bits/dim:
    ``excess``, its standard error over examples, and one ``excess_<band>`` per ``sigma_ve``
    band."""
    total = np.asarray(result.total, np.float64)
    dim_ln2 = math.log(2.0) * dim
    n = total.size
    out = {"excess": float(total.mean() / dim_ln2),
           "excess_standard_error": float(total.std(ddof=1) / math.sqrt(n) / dim_ln2)
           if n > 1 else float("nan")}
    bands = np.asarray(result.bands, np.float64).mean(0) / dim_ln2
    for name, value in zip(band_names(edges), bands, strict=True):
        out[f"excess_{name}"] = float(value)
    return out

