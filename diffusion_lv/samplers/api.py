"""``sample``: any model, in any schedule, with any sampler, as one jit-able function.

    model = Parameterization(RectifiedFlow(), "velocity")
    cfg = SamplerConfig(name="dpmpp_3m", nfe=20, grid="log_snr")
    x0, info = sample(model_fn, model, key, (batch, dim), cfg)

``model_fn(x, t)`` returns the native prediction ``model.prediction`` in ``model.schedule``'s
own coordinates (a trained network through ``Parameterization.model_fn``, or the oracle's
``GaussianMixture.model_fn(schedule, prediction)``); every sampler sees it as the canonical
denoiser ``D(z, sigma_ve)`` (``model.ve_denoiser(model_fn)``).

Settings: ``SamplerConfig`` holds the fields every sampler reads (``COMMON_FIELDS``) and the
options of the chosen sampler. A sampler's options are the keyword-only parameters of its family
function with their defaults (``SAMPLERS[name].options``), so an option is added in one place.
An option the chosen sampler does not read is a ``ValueError``; an option given as None is not
set (the sampler's default applies). ``CONFIG_KEYS`` lists every valid key.

Conventions:

* ``nfe`` is the budget of model evaluations, final denoise included; each sampler spends it in
  whole steps and ``info["nfe"]`` is the exact count used (a Python int). The adaptive ``ode``
  reference ignores ``nfe`` and reports a traced count.
* Noise levels: the grid runs from ``sigma_max`` to ``sigma_min`` (default: the model schedule's
  safe range ``[sigma_ve(t_min), sigma_ve(t_max)]``, checked by ``SamplerConfig.sigma_range``);
  ``final_denoise=True`` ends with ``D(z, sigma_min)`` (one evaluation), ``False`` returns the
  state at ``sigma_min``.
* Randomness: ``x_T = sigma_max * N(0, I)`` from ``fold_in(key, 0)`` whatever the sampler and
  budget; steps draw from ``fold_in(key, 1)`` folded with the step index.
* The output is in data space (``alpha(0) = 1`` for every schedule).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv import checks
from diffusion_lv.parameterization import Parameterization
from diffusion_lv.samplers import (
    adams,
    base,
    ddim,
    euler,
    grids,
    heun,
    multistep,
    ode,
    pc,
    smld,
    unipc,
)
from diffusion_lv.schedules import Schedule

Array = jax.Array

FITTED_GRID = "optimized"  # grid=: the levels in fitted_sigmas (fitted_grid.py)
COMMON_FIELDS = (
    "name", "nfe", "grid", "sigma_min", "sigma_max", "rho", "final_denoise", "grid_schedule",
    "fitted_sigmas", "trajectory",
)


@dataclasses.dataclass(frozen=True, eq=False)
class SamplerSpec:
    """A registered sampler: its family function, how a budget becomes grid levels, its options.

    ``options`` (name -> default, read-only) are the family's keyword-only parameters except
    ``trajectory`` (a common field) and those the sampler sets itself (``fixed``,
    ``fixed_by_budget``); ``defaults`` replaces a family default. ``check(**options)`` validates
    them (the family function runs the same check). ``plan(levels, xp, **options)`` (the
    resolved options; ``fixed`` is the plan's own business), for the
    deterministic linear multistep samplers, is the ``multistep.Plan`` the family scans, from
    levels that may be traced (grid fitting differentiates through it).
    """

    family: Callable  # (denoiser, z, key, sigmas, *, options..., trajectory) -> (z, info)
    levels_for_budget: Callable[[int, Mapping], int]  # (evals after the final denoise, options)
    description: str
    check: Callable[..., None] | None = None
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fixed_by_budget: Mapping[str, Callable[[int], Any]] = dataclasses.field(default_factory=dict)
    min_levels: int = 2  # a step needs two levels; SMLD can run at a single level
    plan: Callable | None = None
    options: Mapping[str, Any] = dataclasses.field(init=False)

    def __post_init__(self):
        parameters = inspect.signature(self.family).parameters.values()
        keywords = {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}
        internal = {"trajectory", *self.fixed, *self.fixed_by_budget}
        options = {k: self.defaults.get(k, v) for k, v in keywords.items() if k not in internal}
        if set(self.defaults) - set(options):
            raise ValueError(f"defaults {sorted(self.defaults)} name no option of {options}")
        object.__setattr__(self, "options", types.MappingProxyType(options))

    @property
    def keeps_trajectory(self) -> bool:
        return "trajectory" in inspect.signature(self.family).parameters

    def fixed_keywords(self, budget: int) -> dict:
        return {**self.fixed, **{k: value(budget) for k, value in self.fixed_by_budget.items()}}


def _one_level_per_eval(budget, options):
    return budget + 1


def _heun_levels(budget, options):
    return (budget + 1) // 2 + 1  # an odd budget ends with one Euler step


def _pc_levels(budget, options):
    return budget // (1 + options["corrector_steps"]) + 1


def _smld_levels(budget, options):
    return budget // options["langevin_steps"]


def _ode_levels(budget, options):
    return 2


def _is_odd(budget):
    return budget % 2 == 1


def _plan(function, **fixed):
    """A spec's ``plan``: ``function(levels, xp, **fixed, **options)``."""
    return lambda levels, xp, **options: function(levels, xp, **fixed, **options)


SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec(
        euler.sample_euler, _one_level_per_eval, check=euler.check_euler,
        plan=_plan(euler.euler_plan),
        description="Euler(-Maruyama) on the reverse split with rate c, in step_schedule's "
        "coordinates (c=1 PF-ODE, c=2 reverse SDE, c>2 Langevin churn)",
    ),
    "heun": SamplerSpec(
        heun.sample_heun, _heun_levels, check=heun.check_heun,
        fixed_by_budget={"euler_last": _is_odd},
        description="Heun on the PF-ODE (2 evaluations per step); s_churn > 0: EDM's "
        "stochastic Heun",
    ),
    "ddim": SamplerSpec(
        ddim.sample_ddim, _one_level_per_eval, check=ddim.check_eta,
        description="DDIM(eta): exact Gaussian transitions keeping q(z_sigma' | x0 = D)",
    ),
    "ddpm": SamplerSpec(
        ddim.sample_ddpm, _one_level_per_eval,
        description="DDPM ancestral sampling (DDIM, eta = 1)",
    ),
    "dpmpp_2m": SamplerSpec(
        multistep.sample_dpmpp_2m, _one_level_per_eval, check=multistep.check_order_limit,
        plan=_plan(multistep.dpmpp_2m_plan, c=1.0, solver_type="midpoint"),
        description="DPM-Solver++(2M) as published (order_limit='history': verbatim)",
    ),
    "dpmpp_3m": SamplerSpec(
        multistep.sample_exponential_multistep, _one_level_per_eval,
        check=multistep.check_rate_and_limit, fixed={"order": 3},
        plan=_plan(multistep.exponential_plan, order=3),
        description="third-order exponential multistep in log-SNR (DPM-Solver++(3M), "
        "derived); c > 1: its SDE variant",
    ),
    "dpmpp_2m_sde": SamplerSpec(
        multistep.sample_dpmpp_2m_sde, _one_level_per_eval, check=multistep.check_dpmpp_2m,
        plan=_plan(multistep.dpmpp_2m_plan),
        description="DPM-Solver++(2M) on the reverse split with rate c (default 2: reverse "
        "SDE), exact in the linear part; solver_type midpoint (k-diffusion's default) or heun",
    ),
    "dpmpp_3m_sde": SamplerSpec(
        multistep.sample_exponential_multistep, _one_level_per_eval,
        check=multistep.check_rate_and_limit, fixed={"order": 3}, defaults={"c": 2.0},
        plan=_plan(multistep.exponential_plan, order=3),
        description="third-order exponential multistep on the split with rate c (default 2)",
    ),
    "unipc": SamplerSpec(
        unipc.sample_unipc, _one_level_per_eval, check=unipc.check_unipc,
        plan=_plan(unipc.unipc_plan),
        description="UniPC: UniP predictor + UniC corrector in log-SNR, data prediction, "
        "B(h) variant bh1/bh2, orders 1-3 (the corrector reuses the next step's evaluation)",
    ),
    "lms": SamplerSpec(
        adams.sample_lms, _one_level_per_eval, check=adams.check_lms,
        plan=_plan(adams.adams_plan),
        description="linear multistep (Adams) on eps in sigma, orders 1-4 (k-diffusion's LMS)",
    ),
    "deis": SamplerSpec(
        adams.sample_deis, _one_level_per_eval, check=adams.check_adams,
        plan=_plan(adams.adams_plan),
        description="DEIS (tAB): eps extrapolated in step_schedule's time (default VP), "
        "integrated exactly in sigma, orders 1-4",
    ),
    "ipndm": SamplerSpec(
        adams.sample_ipndm, _one_level_per_eval, check=adams.check_lms,
        plan=_plan(adams.adams_plan, equal_steps=True),
        description="iPNDM: equal-step Adams-Bashforth weights on eps, steps in sigma, "
        "orders 1-4",
    ),
    "pc": SamplerSpec(
        pc.sample_pc, _pc_levels, check=pc.check_pc,
        description="predictor (euler with rate c, ddim or ddpm) + Langevin corrector steps "
        "at the current level (target snr, or 'split')",
    ),
    "smld": SamplerSpec(
        smld.sample_smld, _smld_levels, check=smld.check_smld, min_levels=1,
        description="annealed Langevin dynamics (SMLD): langevin_steps per noise level",
    ),
    "ode": SamplerSpec(
        ode.sample_ode, _ode_levels, check=ode.check_ode,
        description="adaptive PF-ODE solve with diffrax (rtol, atol); ignores nfe",
    ),
}
PREDICTORS = pc.PREDICTORS
OPTION_KEYS = tuple(sorted({key for spec in SAMPLERS.values() for key in spec.options}))
CONFIG_KEYS = COMMON_FIELDS + OPTION_KEYS  # every key SamplerConfig accepts


def _check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not valid; valid: True or False")


@dataclasses.dataclass(frozen=True, init=False, repr=False)
class SamplerConfig:
    """A sampler and its settings; frozen and hashable, validated on construction.

    Keywords: the common fields below and the options of sampler ``name``
    (``SAMPLERS[name].options``), e.g. ``SamplerConfig(name="heun", nfe=35, s_churn=0.5)``. An
    option given as None is not set. ``options`` holds the options set, as ``(name, value)``
    pairs sorted by name; ``resolved_options`` all of the sampler's options, defaults included.
    """

    name: str = "euler"
    nfe: int = 50
    grid: str = "karras"
    sigma_min: float | None = None  # None: the model schedule's range
    sigma_max: float | None = None
    rho: float = 7.0
    final_denoise: bool = True
    grid_schedule: str | Schedule | None = None  # grid="uniform_t": whose time (None: model's)
    fitted_sigmas: tuple[float, ...] | None = None  # grid="optimized": the fitted levels
    trajectory: bool = False  # info["trajectory"]: z after every step
    options: tuple[tuple[str, Any], ...] = ()

    def __init__(self, **settings):
        options = dict(settings.pop("options", ()))  # dataclasses.replace passes it back
        for field in dataclasses.fields(self):
            if field.name != "options":
                object.__setattr__(self, field.name, settings.pop(field.name, field.default))
        options.update(settings)
        if isinstance(self.fitted_sigmas, list | np.ndarray):  # from a config file / NumPy
            object.__setattr__(self, "fitted_sigmas", tuple(float(s) for s in self.fitted_sigmas))
        self._check_common_fields()
        object.__setattr__(self, "options", self._set_options(options))
        if self.spec.check is not None:
            self.spec.check(**self.resolved_options)
        if self.trajectory and not self.spec.keeps_trajectory:
            raise ValueError(
                f"trajectory=True is not valid for sampler {self.name!r}: it keeps no trajectory"
            )
        _ = self.num_levels  # raises if the budget buys no step
        self._check_fitted_sigmas()

    def _check_fitted_sigmas(self) -> None:
        fitted = self.fitted_sigmas
        if fitted is None:
            return
        if self.grid != FITTED_GRID:
            raise ValueError(
                f"fitted_sigmas={fitted!r} is read by grid={FITTED_GRID!r} only, not "
                f"grid={self.grid!r}"
            )
        levels = np.asarray(fitted, np.float64) if isinstance(fitted, tuple) else None
        valid = (levels is not None and levels.ndim == 1 and np.all(np.isfinite(levels))
                 and np.all(levels > 0) and np.all(np.diff(levels) < 0))
        if not valid or levels.shape[0] != self.num_levels:
            raise ValueError(
                f"fitted_sigmas={fitted!r} is not valid; valid: a tuple of {self.num_levels} "
                f"strictly decreasing positive levels (nfe={self.nfe} of sampler {self.name!r})"
            )

    def _check_common_fields(self) -> None:
        checks.choice("name", self.name, SAMPLERS)
        checks.number("nfe", self.nfe, lo=1, integer=True)
        checks.choice("grid", self.grid, (*grids.GRIDS, FITTED_GRID))
        for key in ("sigma_min", "sigma_max"):
            checks.number(key, getattr(self, key), lo=0.0, lo_open=True, optional=True)
        checks.number("rho", self.rho, lo=0.0, lo_open=True)
        _check_flag("final_denoise", self.final_denoise)
        _check_flag("trajectory", self.trajectory)
        base.resolve_schedule(self.grid_schedule, "grid_schedule")

    def _set_options(self, options: dict) -> tuple[tuple[str, Any], ...]:
        """The options set (not None), validated by name; ints of float options as floats."""
        defaults = self.spec.options
        set_options = {}
        for key, value in sorted(options.items()):
            if key not in OPTION_KEYS:
                raise ValueError(
                    f"{key}={value!r} is not a sampler setting; valid keys: {list(CONFIG_KEYS)}"
                )
            if value is None:
                continue
            if key not in defaults:
                readers = [name for name, spec in SAMPLERS.items() if key in spec.options]
                raise ValueError(
                    f"{key}={value!r} is not read by sampler {self.name!r}; its options: "
                    f"{sorted(defaults)} ({key} is read by {readers})"
                )
            is_int = isinstance(value, int) and not isinstance(value, bool)
            set_options[key] = float(value) if is_int and type(defaults[key]) is float else value
        return tuple(set_options.items())

    def __repr__(self) -> str:
        fields = [(key, getattr(self, key)) for key in COMMON_FIELDS] + list(self.options)
        return f"SamplerConfig({', '.join(f'{k}={v!r}' for k, v in fields)})"

    @property
    def spec(self) -> SamplerSpec:
        return SAMPLERS[self.name]

    @property
    def resolved_options(self) -> dict[str, Any]:
        """Every option of the sampler: the value set, else the sampler's default."""
        return {**self.spec.options, **dict(self.options)}

    @property
    def budget(self) -> int:
        """Model evaluations left for the steps after the final denoise."""
        return self.nfe - (1 if self.final_denoise else 0)

    @property
    def num_levels(self) -> int:
        """Positive noise levels of the grid this budget buys."""
        levels = self.spec.levels_for_budget(self.budget, self.resolved_options)
        if levels < self.spec.min_levels:
            raise ValueError(
                f"nfe={self.nfe!r} buys no step of sampler {self.name!r} "
                f"(final_denoise={self.final_denoise}); increase nfe"
            )
        return levels

    def sigma_range(self, schedule: Schedule) -> tuple[float, float]:
        """``(sigma_min, sigma_max)`` for a model in ``schedule``: the values set, else the
        schedule's safe range; a ValueError unless inside that range and increasing."""
        lo, hi = schedule.sigma_ve_min, schedule.sigma_ve_max
        sigma_min = lo if self.sigma_min is None else float(self.sigma_min)
        sigma_max = hi if self.sigma_max is None else float(self.sigma_max)
        tol = 1e-6  # the range's ends are computed in float64; allow their rounding
        for key, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
            if not lo * (1 - tol) <= value <= hi * (1 + tol):
                raise ValueError(
                    f"{key}={value!r} is outside the schedule's noise range; valid: "
                    f"[{lo:g}, {hi:g}] (sigma_ve of {schedule.describe()})"
                )
        if not sigma_min < sigma_max:
            raise ValueError(f"sigma_min={sigma_min!r} must be < sigma_max={sigma_max!r}")
        return sigma_min, sigma_max

    def sigmas(self, schedule: Schedule):
        """The concrete grid (NumPy) for a model in ``schedule``, trailing 0 if final denoise."""
        sigma_min, sigma_max = self.sigma_range(schedule)
        if self.grid == FITTED_GRID:
            return self._fitted_levels(sigma_min, sigma_max)
        grid_schedule = base.resolve_schedule(self.grid_schedule, "grid_schedule") or schedule
        return grids.get_sigmas(
            self.grid, self.num_levels, sigma_min, sigma_max, self.rho, grid_schedule,
            with_final_zero=self.final_denoise,
        )

    def _fitted_levels(self, sigma_min: float, sigma_max: float) -> np.ndarray:
        if self.fitted_sigmas is None:
            raise ValueError(
                f"grid={FITTED_GRID!r} needs fitted_sigmas: fit a grid for this model with "
                "samplers.fit_grid, or load one with samplers.with_fitted(cfg, path)"
            )
        levels = np.asarray(self.fitted_sigmas, np.float64)
        for end, value in (("sigma_max", sigma_max), ("sigma_min", sigma_min)):
            fitted = levels[0] if end == "sigma_max" else levels[-1]
            if not math.isclose(fitted, value, rel_tol=1e-6):
                raise ValueError(
                    f"fitted_sigmas runs to {end}={fitted!r} but the sampler's {end} is "
                    f"{value!r}: fit the grid for this noise range"
                )
        levels[0], levels[-1] = sigma_max, sigma_min
        return np.append(levels, 0.0) if self.final_denoise else levels

    def run(self, denoiser: base.Denoiser, z: Array, key: Array, sigmas) -> tuple[Array, dict]:
        """The sampler's family function on a grid, with this configuration's options."""
        keywords = {**self.spec.fixed_keywords(self.budget), **self.resolved_options}
        if self.spec.keeps_trajectory:
            keywords["trajectory"] = self.trajectory
        return self.spec.family(denoiser, z, key, sigmas, **keywords)


def initial_noise(key: Array, shape, sigma_max: float, dtype=None) -> Array:
    """``x_T = sigma_max * N(0, I)`` from ``fold_in(key, 0)``: the same for every sampler/budget."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    return sigma_max * jax.random.normal(jax.random.fold_in(key, 0), shape, dtype)


def sample(
    model_fn: Callable[[Array, Array], Array],
    model: Parameterization,
    key: Array,
    shape,
    cfg: SamplerConfig,
    dtype=None,
) -> tuple[Array, dict]:
    """Draw ``shape[0]`` samples from ``model_fn``, read as described by ``model``.

    Pure and traceable: jit it (or an outer function) with ``cfg``, ``model`` and ``shape``
    static. Returns ``(x0, info)`` with ``info["nfe"]`` the exact number of model evaluations.
    """
    if not isinstance(model, Parameterization):
        raise ValueError(f"model={model!r} is not valid; valid: a Parameterization")
    if not isinstance(cfg, SamplerConfig):
        raise ValueError(f"cfg={cfg!r} is not valid; valid: a SamplerConfig")
    shape = tuple(shape)
    if len(shape) < 2 or any(not isinstance(n, int) or n <= 0 for n in shape):
        raise ValueError(f"shape={shape!r} is not valid; valid: (batch, ...) of positive ints")
    sigmas = cfg.sigmas(model.schedule)
    z = initial_noise(key, shape, float(sigmas[0]), dtype)
    return cfg.run(model.ve_denoiser(model_fn), z, jax.random.fold_in(key, 1), sigmas)
