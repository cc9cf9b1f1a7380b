"""``sample``: any model, in any schedule, with any sampler, as one jit-able function.

    cfg = SamplerConfig(name="dpmpp_3m", nfe=20, grid="log_snr")
    x0, info = sample(model_fn, "velocity", RectifiedFlow(), key, (batch, dim), cfg)

``model_fn(x, t)`` returns the native prediction of kind ``prediction`` in ``schedule``'s own
coordinates (a trained network, or ``GaussianMixture.model_fn(schedule, kind)``); it is seen by
every sampler as the canonical denoiser ``D(z, sigma_ve)`` (``convert.as_ve_denoiser``).

Conventions:

* ``nfe`` is the budget of model evaluations, final denoise included; each sampler spends it in
  whole steps and ``info["nfe"]`` is the exact count used (a Python int). The adaptive ``ode``
  reference ignores ``nfe`` and reports a traced count.
* Noise levels: the grid runs from ``sigma_max`` to ``sigma_min`` (default: the model schedule's
  safe range ``[sigma_ve(t_min), sigma_ve(t_max)]``); ``final_denoise=True`` ends with
  ``D(z, sigma_min)`` (one evaluation), ``False`` returns the state at ``sigma_min``.
* Randomness: ``x_T = sigma_max * N(0, I)`` from ``fold_in(key, 0)`` whatever the sampler and
  budget; steps draw from ``fold_in(key, 1)`` folded with the step index.
* The output is in data space (``alpha(0) = 1`` for every schedule).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion_lv import convert
from diffusion_lv.samplers import ddim, euler, grids, heun, multistep, ode, pc, smld
from diffusion_lv.schedules import Schedule, get_schedule

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: how a budget becomes grid levels, and how to run it."""

    run: Callable  # (denoiser, z, key, sigmas, cfg) -> (z, info)
    levels_for_budget: Callable  # (evals after the final denoise, cfg) -> number of levels
    uses_c: bool  # accepts a rate c != 1
    default_c: float = 1.0
    description: str = ""
    min_levels: int = 2  # a step needs two levels; SMLD can run at a single level


def _steps_plus_one(evals_per_step: int):
    def levels(budget, cfg):
        return budget // evals_per_step + 1

    return levels


def _heun_levels(budget, cfg):
    return (budget + 1) // 2 + 1  # an odd budget ends with one Euler step


def _pc_levels(budget, cfg):
    return budget // (1 + cfg.corrector_steps) + 1


def _smld_levels(budget, cfg):
    return budget // cfg.langevin_steps


def _ode_levels(budget, cfg):
    return 2


def _run_euler(denoiser, z, key, sigmas, cfg):
    return euler.sample_euler(
        denoiser, z, key, sigmas, cfg.rate, cfg.resolved_step_schedule, cfg.trajectory
    )


def _run_heun(denoiser, z, key, sigmas, cfg):
    budget = cfg.nfe - (1 if cfg.final_denoise else 0)
    return heun.sample_heun(
        denoiser, z, key, sigmas, cfg.s_churn, cfg.s_tmin, cfg.s_tmax, cfg.s_noise,
        cfg.resolved_step_schedule, euler_last=budget % 2 == 1, trajectory=cfg.trajectory,
    )


def _run_ddim(denoiser, z, key, sigmas, cfg):
    return ddim.sample_ddim(denoiser, z, key, sigmas, cfg.eta, cfg.trajectory)


def _run_ddpm(denoiser, z, key, sigmas, cfg):
    return ddim.sample_ddpm(denoiser, z, key, sigmas, cfg.trajectory)


def _run_dpmpp_2m(denoiser, z, key, sigmas, cfg):
    return multistep.sample_dpmpp_2m(denoiser, z, key, sigmas, cfg.trajectory)


def _exponential(order):
    def run(denoiser, z, key, sigmas, cfg):
        return multistep.sample_exponential_multistep(
            denoiser, z, key, sigmas, order, cfg.rate, cfg.trajectory
        )

    return run


def _predictor(denoiser, cfg):
    if cfg.predictor == "euler":
        schedule = cfg.resolved_step_schedule
        return lambda z, s, s_next, k: euler.split_euler_step(
            denoiser, z, s, s_next, k, cfg.rate, schedule
        )
    eta = cfg.eta if cfg.predictor == "ddim" else 1.0
    return lambda z, s, s_next, k: ddim.ddim_step(denoiser, z, s, s_next, k, eta)


def _run_pc(denoiser, z, key, sigmas, cfg):
    return pc.sample_pc(
        denoiser, z, key, sigmas, _predictor(denoiser, cfg), cfg.corrector_steps, cfg.snr,
        cfg.trajectory,
    )


def _run_smld(denoiser, z, key, sigmas, cfg):
    return smld.sample_smld(denoiser, z, key, sigmas, cfg.langevin_steps, cfg.langevin_step_size)


def _run_ode(denoiser, z, key, sigmas, cfg):
    return ode.sample_ode(
        denoiser, z, key, sigmas, cfg.rtol, cfg.atol, cfg.ode_solver, cfg.max_steps,
        cfg.trajectory,
    )


_ONE = _steps_plus_one(1)

SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec(
        _run_euler, _ONE, uses_c=True,
        description="Euler(-Maruyama) on the reverse split with rate c, in step_schedule's "
        "coordinates (c=1 PF-ODE, c=2 reverse SDE, c>2 Langevin churn)",
    ),
    "heun": SamplerSpec(
        _run_heun, _heun_levels, uses_c=False,
        description="Heun on the PF-ODE (2 evaluations per step); s_churn > 0: EDM's "
        "stochastic Heun",
    ),
    "ddim": SamplerSpec(
        _run_ddim, _ONE, uses_c=False,
        description="DDIM(eta): exact Gaussian transitions keeping q(z_sigma' | x0 = D)",
    ),
    "ddpm": SamplerSpec(
        _run_ddpm, _ONE, uses_c=False, description="DDPM ancestral sampling (DDIM, eta = 1)"
    ),
    "dpmpp_2m": SamplerSpec(
        _run_dpmpp_2m, _ONE, uses_c=False,
        description="DPM-Solver++(2M) exactly as published (the usual baseline)",
    ),
    "dpmpp_3m": SamplerSpec(
        _exponential(3), _ONE, uses_c=True,
        description="third-order exponential multistep in log-SNR (DPM-Solver++(3M), "
        "derived); c > 1: its SDE variant",
    ),
    "dpmpp_2m_sde": SamplerSpec(
        _exponential(2), _ONE, uses_c=True, default_c=2.0,
        description="second-order exponential multistep on the reverse split with rate c "
        "(default 2: reverse SDE), exact in the linear part",
    ),
    "dpmpp_3m_sde": SamplerSpec(
        _exponential(3), _ONE, uses_c=True, default_c=2.0,
        description="third-order exponential multistep on the split with rate c (default 2)",
    ),
    "pc": SamplerSpec(
        _run_pc, _pc_levels, uses_c=True,
        description="predictor (euler with rate c, ddim or ddpm) + Langevin corrector steps "
        "at the current level (target snr)",
    ),
    "smld": SamplerSpec(
        _run_smld, _smld_levels, uses_c=False, min_levels=1,
        description="annealed Langevin dynamics (SMLD): langevin_steps per noise level",
    ),
    "ode": SamplerSpec(
        _run_ode, _ode_levels, uses_c=False,
        description="adaptive PF-ODE solve with diffrax (rtol, atol); ignores nfe",
    ),
}
PREDICTORS = ("euler", "ddim", "ddpm")


def _resolve_schedule(value, what: str) -> Schedule | None:
    if value is None or isinstance(value, Schedule):
        return value
    if isinstance(value, str):
        try:
            return get_schedule(value)
        except ValueError as err:
            raise ValueError(f"{what}: {err}") from None
    raise ValueError(f"{what}={value!r} must be a schedule name, a Schedule or None")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Every sampler setting; frozen and hashable, validated on construction.

    Fields used by only some samplers are ignored by the others, except ``c``: a sampler that
    has no rate rejects ``c != 1``.
    """

    name: str = "euler"
    nfe: int = 50
    grid: str = "karras"
    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float = 7.0
    c: float | None = None  # rate of the split (None: the sampler's default, 1 = ODE)
    final_denoise: bool = True
    step_schedule: str | Schedule | None = None  # euler/heun step coordinates (None: VE)
    grid_schedule: str | Schedule | None = None  # grid="uniform_t": whose time (None: model's)
    trajectory: bool = False  # info["trajectory"]: z after every step
    # ddim / pc with the ddim predictor
    eta: float = 0.0
    # heun: EDM's stochastic churn (s_churn = 0: deterministic Heun)
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    # pc
    predictor: str = "euler"
    corrector_steps: int = 1
    snr: float | None = 0.16  # None: corrector step of the split's length (see pc.py)
    # smld
    langevin_steps: int = 5
    langevin_step_size: float = 0.1  # Langevin step at level sigma: langevin_step_size * sigma^2
    # ode (adaptive reference)
    rtol: float = 1e-5
    atol: float = 1e-5
    ode_solver: str = "tsit5"
    max_steps: int = 4096

    def __post_init__(self):
        if self.name not in SAMPLERS:
            raise ValueError(f"unknown sampler name={self.name!r}; valid choices: {list(SAMPLERS)}")
        grids.check_grid_name(self.grid)
        if not isinstance(self.nfe, int) or isinstance(self.nfe, bool) or self.nfe <= 0:
            raise ValueError(f"nfe={self.nfe!r} must be a positive int")
        for key in ("sigma_min", "sigma_max"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{key}={value!r} must be a positive finite float or None")
        if (
            self.sigma_min is not None
            and self.sigma_max is not None
            and not self.sigma_min < self.sigma_max
        ):
            raise ValueError(
                f"sigma_min={self.sigma_min!r} must be < sigma_max={self.sigma_max!r}"
            )
        if not self.rho > 0:
            raise ValueError(f"rho={self.rho!r} must be > 0")
        if self.c is not None:
            if not self.c >= 1.0:
                raise ValueError(f"c={self.c!r} must be >= 1 (1: ODE, 2: reverse SDE)")
            if self.c != 1.0 and not SAMPLERS[self.name].uses_c:
                with_c = [n for n, s in SAMPLERS.items() if s.uses_c]
                raise ValueError(
                    f"sampler {self.name!r} has no rate: c={self.c!r} must be 1 or None; "
                    f"samplers with a rate: {with_c}"
                )
        ddim.check_eta(self.eta)
        if not (self.s_churn >= 0 and self.s_noise >= 0 and self.s_tmin <= self.s_tmax):
            raise ValueError(
                f"need s_churn >= 0, s_noise >= 0, s_tmin <= s_tmax; got s_churn={self.s_churn!r}"
                f", s_noise={self.s_noise!r}, s_tmin={self.s_tmin!r}, s_tmax={self.s_tmax!r}"
            )
        if self.predictor not in PREDICTORS:
            raise ValueError(
                f"unknown predictor={self.predictor!r}; valid choices: {list(PREDICTORS)}"
            )
        for key in ("corrector_steps", "langevin_steps", "max_steps"):
            value = getattr(self, key)
            minimum = 0 if key == "corrector_steps" else 1
            if not isinstance(value, int) or value < minimum:
                raise ValueError(f"{key}={value!r} must be an int >= {minimum}")
        for key in ("snr", "langevin_step_size", "rtol", "atol"):
            value = getattr(self, key)
            if not (value is None and key == "snr") and not value > 0:
                raise ValueError(f"{key}={value!r} must be > 0")
        if self.ode_solver not in ode.SOLVERS:
            raise ValueError(
                f"unknown ode_solver={self.ode_solver!r}; valid choices: {sorted(ode.SOLVERS)}"
            )
        _resolve_schedule(self.step_schedule, "step_schedule")
        _resolve_schedule(self.grid_schedule, "grid_schedule")
        _ = self.num_levels  # raises if the budget buys no step

    @property
    def spec(self) -> SamplerSpec:
        return SAMPLERS[self.name]

    @property
    def rate(self) -> float:
        return self.spec.default_c if self.c is None else float(self.c)

    @property
    def resolved_step_schedule(self) -> Schedule | None:
        return _resolve_schedule(self.step_schedule, "step_schedule")

    @property
    def num_levels(self) -> int:
        """Positive noise levels of the grid this budget buys."""
        budget = self.nfe - (1 if self.final_denoise else 0)
        levels = self.spec.levels_for_budget(budget, self)
        if levels < self.spec.min_levels:
            raise ValueError(
                f"nfe={self.nfe!r} buys no step of sampler {self.name!r} "
                f"(final_denoise={self.final_denoise}); increase nfe"
            )
        return levels

    def sigma_range(self, schedule: Schedule) -> tuple[float, float]:
        sigma_min = schedule.sigma_ve_min if self.sigma_min is None else float(self.sigma_min)
        sigma_max = schedule.sigma_ve_max if self.sigma_max is None else float(self.sigma_max)
        return sigma_min, sigma_max

    def sigmas(self, schedule: Schedule):
        """The concrete grid (NumPy) for a model in ``schedule``, trailing 0 if final denoise."""
        sigma_min, sigma_max = self.sigma_range(schedule)
        grid_schedule = _resolve_schedule(self.grid_schedule, "grid_schedule") or schedule
        return grids.get_sigmas(
            self.grid, self.num_levels, sigma_min, sigma_max, self.rho, grid_schedule,
            with_final_zero=self.final_denoise,
        )


def _check_range(schedule: Schedule, sigma_min: float, sigma_max: float) -> None:
    lo, hi = schedule.sigma_ve_min, schedule.sigma_ve_max
    tol = 1e-6
    if sigma_min < lo * (1 - tol) or sigma_max > hi * (1 + tol) or not sigma_min < sigma_max:
        raise ValueError(
            f"noise range [sigma_min={sigma_min!r}, sigma_max={sigma_max!r}] must lie inside the "
            f"model schedule's safe range [{lo}, {hi}] of {schedule.describe()}"
        )


def initial_noise(key: Array, shape, sigma_max: float, dtype=None) -> Array:
    """``x_T = sigma_max * N(0, I)`` from ``fold_in(key, 0)``: the same for every sampler/budget."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    return sigma_max * jax.random.normal(jax.random.fold_in(key, 0), shape, dtype)


def sample(
    model_fn: Callable[[Array, Array], Array],
    prediction: str,
    schedule: Schedule,
    key: Array,
    shape,
    cfg: SamplerConfig,
    sigma_data: float = convert.DEFAULT_SIGMA_DATA,
    dtype=None,
) -> tuple[Array, dict]:
    """Draw ``shape[0]`` samples from a model of native output ``prediction`` in ``schedule``.

    Pure and traceable: jit it (or an outer function) with ``cfg``, ``schedule`` and ``shape``
    static. Returns ``(x0, info)`` with ``info["nfe"]`` the exact number of model evaluations.
    """
    convert.check_prediction(prediction)
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule={schedule!r} must be a Schedule")
    if not isinstance(cfg, SamplerConfig):
        raise ValueError(f"cfg={cfg!r} must be a SamplerConfig")
    shape = tuple(shape)
    if len(shape) < 2 or any(not isinstance(n, int) or n <= 0 for n in shape):
        raise ValueError(f"shape={shape!r} must be (batch, ...) with positive ints")
    sigma_min, sigma_max = cfg.sigma_range(schedule)
    _check_range(schedule, sigma_min, sigma_max)
    sigmas = cfg.sigmas(schedule)
    denoiser = convert.as_ve_denoiser(model_fn, prediction, schedule, sigma_data)
    z = initial_noise(key, shape, float(sigmas[0]), dtype)
    return cfg.spec.run(denoiser, z, jax.random.fold_in(key, 1), sigmas, cfg)
