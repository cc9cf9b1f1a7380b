"""Step grids fitted to a model (``grid="optimized"``): one grid per (sampler, NFE).

Given a model, a deterministic multistep sampler (any ``SAMPLERS`` entry with a ``plan``) and a
budget, the grid is chosen to minimise the distance between the sampler's output and a fine-step
solve from the same noise (the ODE-error surrogate)::

    loss(grid) = mean_n sqrt(||x_grid(x_T^n) - x_ref(x_T^n)||^2 / d + 1e-12)

over a few batches of ``x_T`` (``initial_noise`` from ``fold_in(key, b)``), by Adam in
log-sigma inside one compiled ``lax.scan``. The grid keeps its ends (``sigma_max``,
``sigma_min`` of the configuration: the last step reaches the data end like every grid) and is
parameterised by the softmax of free logits times the total log-sigma span, so every iterate is
a strictly decreasing grid; the coefficients of the sampler's plan are recomputed from the
traced levels at every iterate (``multistep.run_plan``), so the solve is differentiated through
the grid exactly. Each fit starts from the named fixed grids in ``init`` and keeps the best
(never worse than its starting grid on the fitting batches). The reference defaults to UniPC
(order 3, fourth-order convergence) with 250 steps on the log-SNR grid over the same range.

A fitted grid is a property of a model: store it with the run (``save_fitted``/``load_fitted``,
one JSON file keyed by ``"<sampler>@<nfe>"``) and sample with
``with_fitted(cfg, path)`` (``cfg`` with ``grid="optimized"`` and ``fitted_sigmas`` set).
Check that it generalises by evaluating ``evaluate_grid`` on fresh noise (another key).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_lv.parameterization import Parameterization
from diffusion_lv.samplers import grids
from diffusion_lv.samplers.api import FITTED_GRID, SAMPLERS, SamplerConfig, initial_noise
from diffusion_lv.samplers.multistep import run_plan

Array = jax.Array
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class FittedGrid:
    """A grid fitted for one sampler configuration and budget.

    ``sigmas``: the positive levels, largest first (the trailing 0 of a final denoise is not
    stored); ``loss``/``init_loss``: the fitting loss of the fitted and of the starting grid.
    """

    sampler: str
    nfe: int
    options: dict
    final_denoise: bool
    sigmas: tuple[float, ...]
    loss: float
    init_loss: float
    init_grid: str
    reference: str

    @property
    def key(self) -> str:
        return grid_key(self.sampler, self.nfe)


def grid_key(sampler: str, nfe: int) -> str:
    return f"{sampler}@{int(nfe)}"


def fittable() -> list[str]:
    """Samplers whose grid can be fitted (deterministic linear multistep plans)."""
    return [name for name, spec in SAMPLERS.items() if spec.plan is not None]


def _check_fittable(cfg: SamplerConfig) -> None:
    if cfg.spec.plan is None:
        raise ValueError(
            f"name={cfg.name!r} has no fittable grid; valid choices: {fittable()}"
        )


def _plan(cfg: SamplerConfig, levels, xp):
    options = cfg.resolved_options
    plan = cfg.spec.plan(levels, xp, **options)
    if plan.noise_std is not None:
        raise ValueError(
            f"c={options.get('c')!r}: grids are fitted for deterministic samplers only (c=1)"
        )
    return plan


def solve_on_levels(denoiser, z_T: Array, levels, cfg: SamplerConfig) -> Array:
    """The output of sampler ``cfg`` on the positive levels ``levels`` (traced or concrete)."""
    plan = _plan(cfg, levels, jnp if isinstance(levels, jax.Array) else np)
    return run_plan(denoiser, z_T, None, levels, plan, cfg.final_denoise)[0]


def _levels_from_logits(logits, log_max: float, log_min: float, xp=jnp):
    weights = xp.exp(logits - xp.max(logits))
    increments = weights / xp.sum(weights) * (log_min - log_max)
    ends = [xp.full((1,), bound, logits.dtype) for bound in (log_max, log_min)]
    # the last level is sigma_min exactly, not a rounded sum
    return xp.exp(xp.concatenate([ends[0], log_max + xp.cumsum(increments[:-1]), ends[1]]))


def _logits_from_levels(levels: np.ndarray) -> np.ndarray:
    increments = -np.diff(np.log(levels))
    return np.log(increments / increments.sum())


def default_reference(cfg: SamplerConfig) -> SamplerConfig:
    """UniPC-3 with 250 steps on the log-SNR grid over ``cfg``'s noise range."""
    return SamplerConfig(name="unipc", nfe=251 if cfg.final_denoise else 250, grid="log_snr",
                         sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max,
                         final_denoise=cfg.final_denoise)


def _distance(x, ref):
    d = math.prod(x.shape[1:])
    squared = jnp.sum(jnp.square((x - ref).reshape(x.shape[0], -1)), axis=1) / d
    return jnp.mean(jnp.sqrt(squared + 1e-12))


def _draws(key, shape, batches, sigma_max, dtype):
    return jnp.stack([initial_noise(jax.random.fold_in(key, b), shape, sigma_max, dtype)
                      for b in range(batches)])


def fit_grid(
    model_fn: Callable[[Array, Array], Array],
    model: Parameterization,
    key: Array,
    shape,
    cfg: SamplerConfig,
    *,
    batches: int = 4,
    iterations: int = 300,
    learning_rate: float = 0.05,
    init: Sequence[str] = ("karras", "log_snr"),
    reference: SamplerConfig | None = None,
    dtype=None,
) -> FittedGrid:
    """Fit the grid of sampler ``cfg`` (its name, options, ``nfe``, noise range) for a model.

    ``model_fn``/``model`` as in ``sample``; ``shape`` is one batch ``(batch, ...)``; the fit
    uses ``batches`` batches of noise drawn from ``key``. Returns a ``FittedGrid``.
    """
    _check_fittable(cfg)
    if not isinstance(model, Parameterization):
        raise ValueError(f"model={model!r} is not valid; valid: a Parameterization")
    for name in init:
        grids.check_grid_name(name)
    reference = default_reference(cfg) if reference is None else reference
    schedule = model.schedule
    sigma_min, sigma_max = cfg.sigma_range(schedule)
    if reference.sigma_range(schedule) != (sigma_min, sigma_max):
        raise ValueError(f"reference={reference!r} must span the same noise range as cfg")
    if reference.final_denoise != cfg.final_denoise:
        raise ValueError(f"reference={reference!r} must have final_denoise={cfg.final_denoise}")
    denoiser = model.ve_denoiser(model_fn)
    dtype = jnp.result_type(float) if dtype is None else dtype
    shape = tuple(shape)
    z_T = _draws(key, shape, batches, sigma_max, dtype)
    ref_sigmas = reference.sigmas(schedule)
    ref_solve = jax.jit(lambda z: reference.run(denoiser, z, None, ref_sigmas)[0])
    refs = jnp.stack([ref_solve(z) for z in z_T])
    log_max, log_min = math.log(sigma_max), math.log(sigma_min)

    def loss_fn(logits, z, ref):
        levels = _levels_from_logits(logits, log_max, log_min)
        return _distance(solve_on_levels(denoiser, z, levels, cfg), ref)

    def full_loss(logits):
        per_batch = jax.vmap(lambda z, ref: loss_fn(logits, z, ref))(z_T, refs)
        return jnp.mean(per_batch)

    optimizer = optax.adam(learning_rate)

    @jax.jit
    def fit(logits0):
        def step(carry, it):
            logits, state = carry
            b = it % batches
            grad = jax.grad(loss_fn)(logits, z_T[b], refs[b])
            updates, state = optimizer.update(grad, state, logits)
            return (optax.apply_updates(logits, updates), state), None

        (logits, _), _ = jax.lax.scan(step, (logits0, optimizer.init(logits0)),
                                      jnp.arange(iterations))
        return logits, full_loss(logits0), full_loss(logits)

    best = None
    for name in init:
        start = grids.get_sigmas(name, cfg.num_levels, sigma_min, sigma_max, cfg.rho, schedule)
        logits0 = jnp.asarray(_logits_from_levels(start), dtype)
        logits, loss0, loss1 = fit(logits0)
        loss0, loss1 = float(loss0), float(loss1)
        candidate = (loss1, logits, loss0, name) if loss1 <= loss0 else (loss0, logits0, loss0,
                                                                            name)
        if best is None or candidate[0] < best[0]:
            best = candidate
    loss, logits, init_loss, init_name = best
    # In the fit's own precision: a float64 fit keeps its float64 grid.
    levels = _levels_from_logits(np.asarray(logits, np.float64), log_max, log_min, np)
    levels[0], levels[-1] = sigma_max, sigma_min
    return FittedGrid(
        sampler=cfg.name, nfe=cfg.nfe, options=dict(cfg.resolved_options),
        final_denoise=cfg.final_denoise, sigmas=tuple(float(s) for s in levels), loss=loss,
        init_loss=init_loss, init_grid=init_name, reference=repr(reference),
    )


def fit_best(model_fn, model: Parameterization, key: Array, shape,
             cfgs: Sequence[SamplerConfig], **fit_options) -> tuple[SamplerConfig, FittedGrid]:
    """Fit a grid for each configuration in ``cfgs`` (same budget; e.g. the two order rules) on
    the same fitting noise and keep the one with the lowest fitting loss: the choice is made on
    the fitting noise only. Returns ``(cfg on its fitted grid, FittedGrid)``."""
    best = None
    for cfg in cfgs:
        fitted = fit_grid(model_fn, model, key, shape, cfg, **fit_options)
        if best is None or fitted.loss < best[1].loss:
            best = (with_fitted(cfg, fitted), fitted)
    return best


def evaluate_grid(model_fn, model: Parameterization, key: Array, shape, cfg: SamplerConfig,
                  reference: SamplerConfig | None = None, batches: int = 1,
                  dtype=None) -> float:
    """The fitting loss of ``cfg`` (any fittable sampler and grid, fitted or fixed) on noise
    drawn from ``key``: evaluate a fitted grid on a key it was not fitted on."""
    _check_fittable(cfg)
    reference = default_reference(cfg) if reference is None else reference
    denoiser = model.ve_denoiser(model_fn)
    dtype = jnp.result_type(float) if dtype is None else dtype
    sigma_max = cfg.sigma_range(model.schedule)[1]
    z_T = _draws(key, tuple(shape), batches, sigma_max, dtype)
    levels, _ = _positive(cfg.sigmas(model.schedule))
    ref_sigmas = reference.sigmas(model.schedule)

    @jax.jit
    def loss(z):
        x = solve_on_levels(denoiser, z, levels, cfg)
        return _distance(x, reference.run(denoiser, z, None, ref_sigmas)[0])

    return float(np.mean([float(loss(z)) for z in z_T]))


def _positive(sigmas: np.ndarray):
    final = sigmas.shape[0] > 1 and sigmas[-1] == 0.0
    return (sigmas[:-1] if final else sigmas), final


# -- storage ----------------------------------------------------------------------------------


def save_fitted(path: str | os.PathLike, fitted: FittedGrid | Sequence[FittedGrid]) -> None:
    """Add (or replace) grids in the JSON file ``path``, keyed by ``"<sampler>@<nfe>"``."""
    fitted = [fitted] if isinstance(fitted, FittedGrid) else list(fitted)
    existing = {}
    if os.path.exists(path):
        with open(path) as f:
            existing = json.load(f).get("grids", {})
    for grid in fitted:
        existing[grid.key] = dataclasses.asdict(grid)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"version": FORMAT_VERSION, "grids": existing}, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def load_fitted(path: str | os.PathLike) -> dict[tuple[str, int], FittedGrid]:
    """Every grid in the JSON file ``path``, by ``(sampler, nfe)``."""
    with open(path) as f:
        data = json.load(f)
    if data.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: version={data.get('version')!r} is not valid; "
                         f"valid: {FORMAT_VERSION}")
    out = {}
    for record in data["grids"].values():
        record = dict(record, sigmas=tuple(record["sigmas"]))
        grid = FittedGrid(**record)
        out[grid.sampler, grid.nfe] = grid
    return out


def with_fitted(cfg: SamplerConfig, fitted: FittedGrid | str | os.PathLike) -> SamplerConfig:
    """``cfg`` on its fitted grid (a ``FittedGrid`` or the JSON file holding one for
    ``(cfg.name, cfg.nfe)``): ``grid="optimized"``, ``fitted_sigmas`` set. Raises when the grid
    was fitted for other options or another end of the schedule."""
    if not isinstance(fitted, FittedGrid):
        grids_in_file = load_fitted(fitted)
        if (cfg.name, cfg.nfe) not in grids_in_file:
            raise ValueError(
                f"no fitted grid for {grid_key(cfg.name, cfg.nfe)} in {fitted}; it holds "
                f"{sorted(grid_key(*k) for k in grids_in_file)}"
            )
        fitted = grids_in_file[cfg.name, cfg.nfe]
    if (fitted.sampler, fitted.nfe) != (cfg.name, cfg.nfe):
        raise ValueError(f"the grid was fitted for {fitted.key}, not "
                         f"{grid_key(cfg.name, cfg.nfe)}")
    if fitted.options != dict(cfg.resolved_options) or fitted.final_denoise != cfg.final_denoise:
        raise ValueError(
            f"the grid {fitted.key} was fitted with options {fitted.options} and "
            f"final_denoise={fitted.final_denoise}, not {dict(cfg.resolved_options)} and "
            f"{cfg.final_denoise}: fit it again"
        )
    return dataclasses.replace(cfg, grid=FITTED_GRID, fitted_sigmas=fitted.sigmas)
