"""Negative log-likelihood through the probability-flow ODE (instantaneous change of variables).

Conventions. Data sit at ``t = t_min`` of a schedule, not at ``t = 0``: the figure computed is
``-log p_{t_min}(x)``, the density of the data convolved with the schedule's smallest noise
``N(0, sigma(t_min)^2 I)`` (``t = 0`` is outside every schedule's safe domain; score_sde and VDM
evaluate at a small ``t`` for the same reason). ``x`` has shape ``(batch, ...)`` in the
schedule's own coordinates; results are per example.

The ODE. In canonical coordinates ``z = x / alpha``, ``lam = log sigma_ve``, it is the same for
every schedule::

    dz/dlam = z - D(z, sigma_ve),       d log p(z)/dlam = -div(z - D) = -(d - tr dD/dz)

with ``D = E[x0 | z]`` the model's denoiser (any native prediction, converted by convert.py).
It is solved in the variance-preserving form of that one process: time
``tau = log(1 + sigma_ve^2 / sigma_data^2)`` and state ``y = z / sqrt(sigma_ve^2 + sigma_data^2)``
(for ``sigma_data = 1`` exactly the VP schedule's ``t`` and ``x``), whichever schedule the model
lives in; ``sigma_data`` is the model's own (any positive value is exact). ``y`` stays of order
one at every noise level (``z`` grows like ``sigma_ve``), and an adaptive solver needed about 30%
fewer evaluations in ``tau`` than in ``lam`` for the same error on the oracle. Integrating from
``t_min`` to ``t_max``::

    log p_{t_min}(x) = log prior(x_T) + int (d - tr dD/dz) dlam + d log(alpha(t_max)/alpha(t_min))

where ``x_T`` (the latent) is the end state in the schedule's coordinates and the last term is
the Jacobian of ``x = alpha z`` at both ends. The prior is ``schedule.prior_log_prob``
(``N(0, sigma(t_max)^2)``), not the true ``p_{t_max}``: their mismatch is part of the figure, as
in every published one (about ``|E x0| / sigma_ve(t_max)`` nats per point for data of nonzero
mean).

The trace is exact (one JVP per basis vector: for small dimensions) or Hutchinson's unbiased
estimate ``mean_k v_k^T (dD/dz) v_k`` with probes fixed along the trajectory (FFJORD), which
keeps the NLL estimate unbiased. The model must treat examples independently (no batch norm):
one JVP with a probe broadcast over the batch gives every example's term at once.

Discrete data (``num_levels = L``): data ``v_k = low + (high-low) k/(L-1)`` with integer ``k``
(the usual ``pixel/127.5 - 1``) are scored by a bound on ``-log P(k)``,

    -log P(k) <= E_q[ -log p_{t_min}(x') + log q(x' | k) - log P_dec(k | x') ],

with a *dequantiser* ``q(x' | k)`` and a decoder ``P_dec`` back to the level; ``nll`` is the first
term (a density at the dequantised point ``x'``), ``offset`` the other two, and bits/dim is
``(nll + offset) / (d ln 2)``. Two conventions (``dequantization``), each the match of one way of
training (:func:`matched_dequantization` picks it):

* ``"uniform"``, for models trained on uniformly dequantised data (``(k + u) 2/L - 1``):
  ``x' = low + (high-low) (k+u)/L``, bins of width ``w = (high-low)/L``, ``P_dec = 1``,
  ``offset = -d log w``: for 256 levels in ``[-1, 1]`` bits/dim is ``nll/(d ln 2) + 7``, the figure
  score_sde and VDM report.
* ``"centred"``, for models trained on the grid values themselves: ``x'`` is the forward process
  at ``t_min`` started from ``v_k`` (``alpha v_k + sigma eps``: exactly the model's training data at
  ``t_min``), ``q`` its Gaussian density and ``P_dec`` DDPM's discretised decoder, the mass of
  ``N(x'/alpha, sigma_ve^2)`` in the bin of width ``(high-low)/(L-1)`` centred on ``v_k`` (the end
  bins open to infinity). A model sharpening towards its training data then scores better, down
  to the data's entropy; under ``"uniform"`` its figure grows without limit (docs/likelihood.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from diffusion_lv import checks
from diffusion_lv.parameterization import Parameterization
from diffusion_lv.schedules import Schedule

Array = jax.Array
ApplyFn = Callable[[Any, Array, Array], Array]  # (params, x, t) -> native prediction

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
ERROR_NORMS = ("max", "rms")
# How discrete data are scored (module docstring): "uniform" matches training on uniformly
# dequantised data, "centred" training on the grid values.
DEQUANTIZATIONS = ("uniform", "centred")
# (solver, vector-field evaluations per step, evaluations before the first step). Both are
# 7-stage pairs whose last stage is the next step's first (FSAL); the counts are checked in the
# tests by counting the model's calls.
SOLVERS = {"tsit5": (diffrax.Tsit5, 6, 1), "dopri5": (diffrax.Dopri5, 6, 1)}
_PROBE_CHUNK = 32  # probes / basis vectors per vmapped batch of JVPs


@dataclasses.dataclass(frozen=True)
class LikelihoodConfig:
    """How the ODE is solved and the trace estimated; hashable, so one config compiles once.

    ``error_norm="max"`` makes every example meet ``rtol``/``atol`` (the step size follows the
    hardest one); ``"rms"`` is the root mean square over the whole batch, as a host solver of the
    flattened state (scipy ``solve_ivp``) does: cheaper, but one example may exceed the tolerance.
    ``num_levels=None`` means continuous data (no dequantisation, no offset);
    ``dequantization`` is how discrete data are scored (``"uniform"`` or ``"centred"``: the
    module docstring; :func:`matched_dequantization` picks the one that matches the training
    data). What the network outputs, its schedule and ``sigma_data`` are the model's
    (``make_likelihood_fn``'s :class:`Parameterization`), not settings of the solver.
    """

    divergence: str = "exact"
    num_probes: int = 1
    probe: str = "rademacher"
    solver: str = "tsit5"
    rtol: float = 1e-5
    atol: float = 1e-5
    error_norm: str = "max"
    max_steps: int = 4096
    num_levels: int | None = None
    data_range: tuple[float, float] = (-1.0, 1.0)
    dequantization: str = "uniform"

    def __post_init__(self):
        checks.choice("divergence", self.divergence, DIVERGENCES)
        checks.number("num_probes", self.num_probes, lo=1, integer=True)
        checks.choice("probe", self.probe, PROBES)
        checks.choice("solver", self.solver, SOLVERS)
        checks.number("rtol", self.rtol, lo=0.0, lo_open=True)
        checks.number("atol", self.atol, lo=0.0, lo_open=True)
        checks.choice("error_norm", self.error_norm, ERROR_NORMS)
        checks.number("max_steps", self.max_steps, lo=1, integer=True)
        check_discretisation(self.num_levels, self.data_range, self.dequantization)


def check_discretisation(num_levels, data_range, dequantization) -> None:
    """The discrete-data settings shared by the ODE NLL and the bound (likelihood_bound.py)."""
    checks.number("num_levels", num_levels, lo=2, integer=True, optional=True)
    checks.choice("dequantization", dequantization, DEQUANTIZATIONS)
    low, high = data_range
    if not low < high:
        raise ValueError(
            f"data_range={data_range!r} is not valid; valid: (low, high) with low < high"
        )


class LikelihoodResult(NamedTuple):
    nll: Array  # (B,) nats: -log p_{t_min}(x) at the (dequantised) point
    bits_per_dim: Array  # (B,) (nll + offset) / (d ln 2)
    prior_log_prob: Array  # (B,) log prior(latent)
    delta_log_prob: Array  # (B,) log p_{t_min}(x) - log p_{t_max}(latent) along the ODE
    latent: Array  # (B, ...) the ODE's end state x_T in the schedule's coordinates
    nfe: Array  # () vector-field evaluations of the adaptive solver (shared by the batch)
    num_steps: Array  # () solver steps, accepted and rejected
    solved: Array  # () False if max_steps ran out; nll and bits_per_dim are then NaN
    # (B,) nats, log q(x'|k) - log P_dec(k|x') of discrete data (module docstring); 0 if continuous
    offset: Array | None = None


def matched_dequantization(trained_dequantized: bool, requested: str = "auto") -> str:
    """The convention that scores a model by the data it was trained on.

    ``trained_dequantized``: whether training saw uniformly dequantised data (``(k + u) 2/L - 1``)
    rather than the grid values. ``requested="auto"`` returns ``"uniform"`` or ``"centred"``
    accordingly; naming the other one is refused: a model trained on the grid approaches point
    masses, which uniform bins score ever worse as it improves, and a model trained on uniform
    bins is not centred on the levels.
    """
    matched = "uniform" if trained_dequantized else "centred"
    checks.choice("dequantization", requested, ("auto", *DEQUANTIZATIONS))
    if requested not in ("auto", matched):
        how = "uniformly dequantised data" if trained_dequantized else "the grid values"
        raise ValueError(
            f"dequantization={requested!r} does not match the training data ({how}): a better "
            f"model could score worse; valid choices: ['auto', {matched!r}]"
        )
    return matched


def bin_width(num_levels: int, data_range=(-1.0, 1.0), dequantization: str = "uniform") -> float:
    """Width of one level's bin: ``(high-low)/L`` (uniform) or ``(high-low)/(L-1)`` (centred)."""
    low, high = data_range
    return (high - low) / (num_levels if dequantization == "uniform" else num_levels - 1)


def levels_of(x: Array, num_levels: int, data_range=(-1.0, 1.0)) -> Array:
    """The integer level ``k`` (as floats) nearest to each value of ``x`` on the grid."""
    low, high = data_range
    k = jnp.round((x - low) / (high - low) * (num_levels - 1))
    return jnp.clip(k, 0, num_levels - 1)


def _log_mass_between(a: Array, b: Array) -> Array:
    """``log(Phi(b) - Phi(a))`` for ``a < b`` (infinite ends allowed), accurate in both tails."""
    flip = (a + b) > 0  # mostly in the upper tail: use Phi(-a) - Phi(-b)
    lo, hi = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
    log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
    return log_hi + jnp.log1p(-jnp.exp(jnp.minimum(log_lo - log_hi, 0.0)))


def centred_bin_log_prob(y: Array, k: Array, sigma: Array, num_levels: int,
                         data_range=(-1.0, 1.0)) -> Array:
    """DDPM's discretised decoder: ``log P(k | y)``, the mass of ``N(y, sigma^2)`` in the bin
    of width ``(high-low)/(L-1)`` centred on level ``k`` (the end bins open to infinity), summed
    over all but the leading axis. ``y`` is in data units; ``sigma`` a scalar or ``(batch,)``."""
    low, high = data_range
    half = 0.5 * bin_width(num_levels, data_range, "centred")
    centre = low + (high - low) * k / (num_levels - 1)
    lower = jnp.where(k <= 0, -jnp.inf, centre - half)
    upper = jnp.where(k >= num_levels - 1, jnp.inf, centre + half)
    sigma = jnp.reshape(jnp.asarray(sigma, y.dtype), (-1,) + (1,) * (y.ndim - 1))
    per_dim = _log_mass_between((lower - y) / sigma, (upper - y) / sigma)
    return jnp.sum(jnp.reshape(per_dim, (y.shape[0], -1)), axis=-1)


def discretise(key: Array, x: Array, config: LikelihoodConfig,
               schedule: Schedule) -> tuple[Array, Array]:
    """``(x', offset)`` for discrete data ``x``: the dequantised state at ``t_min`` (schedule
    coordinates) and ``log q(x'|k) - log P_dec(k|x')`` per example (module docstring)."""
    levels, data_range = config.num_levels, config.data_range
    dim = math.prod(x.shape[1:])
    if config.dequantization == "uniform":
        width = bin_width(levels, data_range, "uniform")
        offset = jnp.full((x.shape[0],), -dim * math.log(width), x.dtype)
        return dequantize(key, x, levels, data_range), offset
    k = levels_of(x, levels, data_range)
    low, high = data_range
    grid = low + (high - low) * k / (levels - 1)
    t_min = jnp.asarray(schedule.t_min, x.dtype)
    alpha, sigma = schedule.alpha(t_min), schedule.sigma(t_min)
    eps = jax.random.normal(key, x.shape, x.dtype)
    x_min = alpha * grid + sigma * eps
    log_q = -0.5 * jnp.sum(jnp.reshape(jnp.square(eps), (x.shape[0], -1)), axis=-1) - dim * (
        jnp.log(sigma) + 0.5 * math.log(2 * math.pi))
    log_decoder = centred_bin_log_prob(x_min / alpha, k, sigma / alpha, levels, data_range)
    return x_min, log_q - log_decoder


def dequantize(key: Array, x: Array, num_levels: int, data_range=(-1.0, 1.0)) -> Array:
    """Uniform dequantisation of data ``low + (high-low) k/(L-1)`` into bin ``k`` of width
    ``(high-low)/L``: ``low + (high-low) (k+u)/L``."""
    low, high = data_range
    levels = jnp.round((x - low) / (high - low) * (num_levels - 1))
    u = jax.random.uniform(key, x.shape, x.dtype)
    return low + (high - low) * (levels + u) / num_levels


def bits_per_dim(nll: Array, dim: int, num_levels: int | None = None, data_range=(-1.0, 1.0)):
    """Nats per example to bits per dimension; for discrete data add ``log2(L/(high-low))``.

    The offset turns a density into a probability of the bin of width ``(high-low)/L``: a model
    uniform on ``[low, high]^d`` scores exactly ``log2(L)`` bits/dim.
    """
    bpd = nll / (dim * math.log(2.0))
    if num_levels is None:
        return bpd
    low, high = data_range
    return bpd + math.log2(num_levels / (high - low))


def _trace_of_jacobian(jvp_fn, z: Array, probes: Array | None) -> Array:
    """``tr dD/dz`` per example: exact over the basis (probes None) or Hutchinson's mean."""
    batch, dim = z.shape[0], math.prod(z.shape[1:])

    def quadratic_form(v):  # v^T J v per example, v of shape z.shape
        return jnp.sum(jnp.reshape(jvp_fn(v) * v, (batch, dim)), axis=-1)

    if probes is None:
        def diagonal_entry(j):
            e_j = jax.nn.one_hot(j, dim, dtype=z.dtype).reshape(z.shape[1:])
            return quadratic_form(jnp.broadcast_to(e_j, z.shape))

        indices = jnp.arange(dim)
        terms = jax.lax.map(diagonal_entry, indices, batch_size=min(dim, _PROBE_CHUNK))
        return jnp.sum(terms, axis=0)
    terms = jax.lax.map(quadratic_form, probes, batch_size=min(probes.shape[0], _PROBE_CHUNK))
    return jnp.mean(terms, axis=0)


def probability_flow_with_divergence(
    ve_denoiser, tau: Array, y: Array, probes: Array | None, sigma_data: float
) -> tuple[Array, Array]:
    """The probability-flow ODE in the solver's coordinates ``(tau, y)`` (module docstring).

    Returns ``(dy/dtau, rate)`` where ``rate = (d - tr dD/dz) dlam/dtau`` is the divergence of the
    canonical flow per unit of ``tau``: ``d log p(z(tau)) / dtau = -rate``. ``ve_denoiser(z,
    sigma_ve)`` is ``D`` in canonical coordinates; ``probes`` of shape ``(num_probes, *y.shape)``
    give Hutchinson's estimate of the trace, None the exact trace; ``sigma_data`` sets the
    coordinates (the model's own).
    """
    sigma2 = sigma_data**2 * jnp.expm1(tau)  # sigma_ve^2
    total = sigma2 + sigma_data**2
    dlam_dtau = 0.5 / -jnp.expm1(-tau)  # (sigma^2 + sigma_data^2) / (2 sigma^2), finite at tau > 0
    z = y * jnp.sqrt(total)
    sigma_ve = jnp.sqrt(sigma2) * jnp.ones((y.shape[0],), y.dtype)
    denoised, jvp_fn = jax.linearize(lambda u: ve_denoiser(u, sigma_ve), z)
    trace = _trace_of_jacobian(jvp_fn, z, probes)
    # dy/dlam = y sigma_data^2 / total - D / sqrt(total), from dz/dlam = z - D.
    dy = (y * (sigma_data**2 / total) - denoised * jax.lax.rsqrt(total)) * dlam_dtau
    return dy, (math.prod(y.shape[1:]) - trace) * dlam_dtau


def solver_time(sigma_ve: Array, sigma_data: float) -> Array:
    """``tau = log(1 + sigma_ve^2 / sigma_data^2)``, the variable the ODE is solved in."""
    return jnp.log1p(jnp.square(sigma_ve / sigma_data))


def _draw_probes(key: Array, config: LikelihoodConfig, shape, dtype) -> Array:
    shape = (config.num_probes, *shape)
    if config.probe == "rademacher":
        return jax.random.rademacher(key, shape, dtype)
    return jax.random.normal(key, shape, dtype)


def _max_example_rms(scaled_error) -> Array:
    """Error norm: root mean square per example (its state and log-density), max over examples."""
    y, log_density = scaled_error
    batch = log_density.shape[0]
    per_example = jnp.sum(jnp.square(jnp.reshape(y, (batch, -1))), axis=-1)
    per_example = per_example + jnp.square(log_density)
    return jnp.sqrt(jnp.max(per_example) / (math.prod(y.shape[1:]) + 1))


def _rms(scaled_error) -> Array:
    leaves = jax.tree.leaves(scaled_error)
    total = sum(jnp.sum(jnp.square(leaf)) for leaf in leaves)
    return jnp.sqrt(total / sum(leaf.size for leaf in leaves))


def make_likelihood_fn(
    apply_fn: ApplyFn,
    model: Parameterization,
    config: LikelihoodConfig = LikelihoodConfig(),  # noqa: B008 (frozen, hashable)
) -> Callable[[Any, Array, Array | None], LikelihoodResult]:
    """A jitted ``fn(params, x, key=None) -> LikelihoodResult`` for a network with native output.

    ``apply_fn(params, x, t)`` is the network in ``model.schedule``'s coordinates returning its
    native output ``model.prediction`` (``model.model_apply(network.apply)`` for a Flax network);
    ``model.sigma_data`` is read by EDM's preconditioning and sets the solver's coordinates.
    ``x`` is data of shape ``(batch, ...)``; ``key`` draws Hutchinson probes and dequantisation
    noise and may be None when neither is used.
    """
    if not isinstance(model, Parameterization):
        raise ValueError(f"model must be a Parameterization, got {type(model).__name__}")
    if not isinstance(config, LikelihoodConfig):
        raise ValueError(f"config must be a LikelihoodConfig, got {type(config).__name__}")
    schedule, sigma_data = model.schedule, model.sigma_data
    needs_key = config.divergence == "hutchinson" or config.num_levels is not None
    solver_cls, evals_per_step, evals_at_start = SOLVERS[config.solver]
    norm = _max_example_rms if config.error_norm == "max" else _rms

    def log_likelihood(params, x, key):
        if x.ndim < 2:
            raise ValueError(f"x must have shape (batch, ...), got shape {x.shape}")
        if needs_key and key is None:
            raise ValueError(
                "a PRNG key is needed for Hutchinson probes or dequantisation, got key=None"
            )
        batch, dim = x.shape[0], math.prod(x.shape[1:])
        offset = jnp.zeros((batch,), x.dtype)
        if config.num_levels is not None:
            key, deq_key = jax.random.split(key)
            x, offset = discretise(deq_key, x, config, schedule)
        probes = None
        if config.divergence == "hutchinson":
            probes = _draw_probes(key, config, x.shape, x.dtype)

        denoiser = model.ve_denoiser(lambda x_, t_: apply_fn(params, x_, t_))

        def vector_field(tau, state, _):
            return probability_flow_with_divergence(denoiser, tau, state[0], probes, sigma_data)

        t_min = jnp.asarray(schedule.t_min, x.dtype)
        t_max = jnp.asarray(schedule.t_max, x.dtype)
        alpha_min, alpha_max = schedule.alpha(t_min), schedule.alpha(t_max)
        sigma_min, sigma_max = schedule.sigma_ve(t_min), schedule.sigma_ve(t_max)
        # y = z / sqrt(sigma_ve^2 + sigma_data^2) = x / (alpha sqrt(...)) at both ends.
        to_y_min, to_y_max = (
            jax.lax.rsqrt(jnp.square(s) + sigma_data**2) / a
            for s, a in ((sigma_min, alpha_min), (sigma_max, alpha_max))
        )
        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(vector_field),
            solver_cls(),
            t0=solver_time(sigma_min, sigma_data),
            t1=solver_time(sigma_max, sigma_data),
            dt0=None,
            y0=(x * to_y_min, jnp.zeros((batch,), x.dtype)),
            stepsize_controller=diffrax.PIDController(
                rtol=config.rtol, atol=config.atol, norm=norm
            ),
            saveat=diffrax.SaveAt(t1=True),
            max_steps=config.max_steps,
            throw=False,
        )
        y_end, integral = (leaf[-1] for leaf in solution.ys)
        latent = y_end / to_y_max
        delta = integral + dim * (jnp.log(alpha_max) - jnp.log(alpha_min))
        prior = schedule.prior_log_prob(latent)
        solved = solution.result == diffrax.RESULTS.successful
        nll = jnp.where(solved, -(prior + delta), jnp.nan)
        num_steps = solution.stats["num_steps"]
        return LikelihoodResult(
            nll=nll,
            bits_per_dim=(nll + offset) / (dim * math.log(2.0)),
            prior_log_prob=prior,
            delta_log_prob=delta,
            latent=latent,
            nfe=evals_at_start + evals_per_step * num_steps,
            num_steps=num_steps,
            solved=solved,
            offset=offset,
        )

    jitted = jax.jit(log_likelihood)

    def likelihood_fn(params, x, key=None):
        return jitted(params, x, key)

    likelihood_fn.__doc__ = make_likelihood_fn.__doc__
    return likelihood_fn


def evaluate_likelihood(likelihood_fn, params, batches, key: Array) -> dict[str, float]:
    """Dataset figures from ``likelihood_fn = make_likelihood_fn(...)`` over an iterable of batches.

    Batch ``i`` uses ``fold_in(key, i)`` (probes, dequantisation). Returns the means of ``nll``
    (nats) and ``bits_per_dim`` over all examples with their standard errors, the mean NFE per
    batch, the number of examples and of batches whose solve ran out of ``max_steps`` (their
    examples are left out of the means). Batches of one shape compile once; a smaller last batch
    compiles once more.
    """
    nll, bpd, nfe, unsolved = [], [], [], 0
    for i, x in enumerate(batches):
        result = likelihood_fn(params, x, jax.random.fold_in(key, i))
        if not bool(result.solved):
            unsolved += 1
            continue
        nll.append(np.asarray(result.nll, np.float64))
        bpd.append(np.asarray(result.bits_per_dim, np.float64))
        nfe.append(int(result.nfe))
    if not nll:
        raise ValueError(f"no batch was solved ({unsolved} ran out of max_steps or none given)")
    nll, bpd = np.concatenate(nll), np.concatenate(bpd)
    n = nll.size

    def standard_error(v):
        return float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")

    return {
        "nll": float(nll.mean()),
        "nll_standard_error": standard_error(nll),
        "bits_per_dim": float(bpd.mean()),
        "bits_per_dim_standard_error": standard_error(bpd),
        "nfe": float(np.mean(nfe)),
        "num_examples": n,
        "unsolved_batches": unsolved,
    }
