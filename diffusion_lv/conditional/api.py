"""``sample_conditional``: any model, any schedule and output kind, any conditional method.

    model = Parameterization(VP(), "eps")
    cfg = ConditionalConfig(method="langevin", nfe=60, langevin_steps=2, final_steps=10)
    x, info = sample_conditional(model_fn, model, key, Inpainting(mask, values), cfg)

As ``samplers.sample``: ``model_fn(x, t)`` is the native prediction, seen by every method as the
canonical denoiser ``model.ve_denoiser(model_fn)``; ``nfe`` is the budget of model evaluations
(final denoise included), spent in whole steps, and ``info["nfe"]`` the exact count used; the
grid is ``grid`` with ``sigma_min``/``sigma_max`` (default: the schedule's safe range);
``x_T = sigma_max * N(0, I)`` from ``fold_in(key, 0)``, the steps draw from ``fold_in(key, 1)``.
A method's options are the keyword-only parameters of its function (``METHODS[m].options``);
one the method does not read is a ValueError. A per-step option (``langevin_steps``,
``step_scale`` given one entry per step: a schedule) fixes the grid's number of steps. DPS's
backward passes are not counted in ``nfe`` (``info["vjp"]`` reports them).
"""

from __future__ import annotations

import dataclasses
import inspect
import types
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from diffusion_lv import checks
from diffusion_lv.conditional import samplers as cs
from diffusion_lv.conditional import smc
from diffusion_lv.conditional.observations import Inpainting, check_observation
from diffusion_lv.parameterization import Parameterization
from diffusion_lv.samplers import grids, initial_noise

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Method:
    family: Callable
    nfe_for_levels: Callable[[np.ndarray, dict], int]  # positive levels, options -> NFE
    check: Callable[[np.ndarray, dict], None]  # positive levels, options
    options: types.MappingProxyType = dataclasses.field(init=False)

    def __post_init__(self):
        params = inspect.signature(self.family).parameters.values()
        options = {
            p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name != "trajectory"
        }
        object.__setattr__(self, "options", types.MappingProxyType(options))


def _langevin_checked(levels, o):
    return cs.check_langevin(
        o["c"],
        o["langevin_steps"],
        o["step_scale"],
        o["hold"],
        o["final_steps"],
        o["final_step_scale"],
        levels,
        o["langevin_sigma_max"],
    )


def _langevin_nfe(levels, o):
    steps, _ = _langevin_checked(levels, o)
    return len(levels) - 1 + int(steps.sum()) + o["final_steps"]


def _smc_checked(levels, o):
    return smc.check_smc(
        o["particles"], o["resample_threshold"], o["langevin_steps"], o["step_scale"], levels
    )


def _smc_nfe(levels, o):
    steps, _ = _smc_checked(levels, o)
    return len(levels) - 1 + int(steps.sum())


METHODS: dict[str, Method] = {
    "replacement": Method(
        cs.sample_replacement, lambda lv, o: len(lv) - 1, lambda lv, o: cs.check_rate(o["c"])
    ),
    "repaint": Method(
        cs.sample_repaint,
        lambda lv, o: o["resamples"] * (len(lv) - 1),
        lambda lv, o: cs.check_repaint(o["c"], o["resamples"]),
    ),
    "langevin": Method(cs.sample_langevin, _langevin_nfe, _langevin_checked),
    "smc": Method(smc.sample_smc, _smc_nfe, _smc_checked),
    "dps": Method(
        cs.sample_dps,
        lambda lv, o: len(lv) - 1 + o["final_steps"],
        lambda lv, o: cs.check_dps(
            o["c"], o["guidance_scale"], o["final_steps"], o["final_step_scale"]
        ),
    ),
}


def scheduled_steps(options: dict) -> int | None:
    """The number of steps a per-step option (a schedule: one entry per step) fixes, or None."""
    lengths = {
        name: len(options[name])
        for name in cs.PER_STEP_OPTIONS
        if isinstance(options.get(name), tuple) and len(options[name]) > 1
    }
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"per-step options of different lengths {lengths}; valid: one entry per step for "
            "each, the same number of steps"
        )
    return next(iter(lengths.values()), None)


@dataclasses.dataclass(frozen=True, init=False)
class ConditionalConfig:
    """A conditional method and its settings (frozen, hashable, checked on construction).

    ``ConditionalConfig(method="repaint", nfe=40, resamples=4)``; ``options`` holds the method
    options set, as sorted ``(name, value)`` pairs (per-step options as tuples)."""

    method: str = "langevin"
    nfe: int = 50
    grid: str = "karras"
    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float = 7.0
    final_denoise: bool = True
    options: tuple[tuple[str, Any], ...] = ()

    def __init__(self, **settings):
        options = dict(settings.pop("options", ()))
        for field in dataclasses.fields(self):
            if field.name != "options":
                object.__setattr__(self, field.name, settings.pop(field.name, field.default))
        options.update(settings)
        checks.choice("method", self.method, METHODS)
        checks.number("nfe", self.nfe, lo=1, integer=True)
        grids.check_grid_name(self.grid)
        for key in ("sigma_min", "sigma_max"):
            checks.number(key, getattr(self, key), lo=0.0, lo_open=True, optional=True)
        checks.number("rho", self.rho, lo=0.0, lo_open=True)
        if not isinstance(self.final_denoise, bool):
            raise ValueError(
                f"final_denoise={self.final_denoise!r} is not valid; valid: True or False"
            )
        valid = METHODS[self.method].options
        for key, value in options.items():
            if key not in valid:
                raise ValueError(
                    f"{key}={value!r} is not read by method {self.method!r}; its "
                    f"options: {sorted(valid)}"
                )
        frozen = {
            k: tuple(v) if isinstance(v, list | np.ndarray) else v for k, v in options.items()
        }
        object.__setattr__(self, "options", tuple(sorted(frozen.items())))
        options = self.resolved_options
        # The checks need a grid only for the length of a schedule; its values do not matter.
        num_steps = scheduled_steps(options) or 1
        METHODS[self.method].check(np.geomspace(2.0, 1.0, num_steps + 1), options)

    @property
    def resolved_options(self) -> dict[str, Any]:
        return {**METHODS[self.method].options, **dict(self.options)}

    def sigmas(self, schedule) -> np.ndarray:
        """The largest grid whose NFE fits the budget (trailing 0 with the final denoise); a
        per-step schedule fixes the number of steps, and the budget must cover it."""
        lo = schedule.sigma_ve_min if self.sigma_min is None else self.sigma_min
        hi = schedule.sigma_ve_max if self.sigma_max is None else self.sigma_max
        if not 0 < lo < hi:
            raise ValueError(f"sigma_min={lo!r} must be < sigma_max={hi!r}")
        budget = self.nfe - int(self.final_denoise)
        method, options = METHODS[self.method], self.resolved_options
        num_steps = scheduled_steps(options)
        sizes = range(budget + 1, 1, -1) if num_steps is None else [num_steps + 1]
        for num_levels in sizes:
            levels = grids.get_sigmas(self.grid, num_levels, lo, hi, self.rho, schedule)
            needed = method.nfe_for_levels(levels, options)
            if needed <= budget:
                return np.append(levels, 0.0) if self.final_denoise else levels
        if num_steps is not None:
            raise ValueError(
                f"nfe={self.nfe!r} is not valid for the {num_steps}-step schedule of method "
                f"{self.method!r}; valid: nfe >= {needed + int(self.final_denoise)}"
            )
        raise ValueError(
            f"nfe={self.nfe!r} buys no step of method {self.method!r} with options "
            f"{dict(self.options)}; increase nfe"
        )

    def run(self, denoiser, z: Array, key: Array, sigmas, condition) -> tuple[Array, dict]:
        return METHODS[self.method].family(
            denoiser, z, key, sigmas, condition, **dict(self.options)
        )


def sample_conditional(
    model_fn: Callable[[Array, Array], Array],
    model: Parameterization,
    key: Array,
    condition,
    cfg: ConditionalConfig,
    shape=None,
) -> tuple[Array, dict]:
    """Samples given ``condition`` (an ``Inpainting``, or an ``Observation`` for ``dps``, then
    with the batch ``shape``); pure and jit-able with ``cfg``, ``model`` and ``shape`` static."""
    if not isinstance(model, Parameterization):
        raise ValueError(f"model={model!r} is not valid; valid: a Parameterization")
    if not isinstance(cfg, ConditionalConfig):
        raise ValueError(f"cfg={cfg!r} is not valid; valid: a ConditionalConfig")
    if isinstance(condition, Inpainting):
        shape = tuple(condition.values.shape)
    elif shape is None:
        check_observation(condition)
        raise ValueError("shape=None is not valid for an Observation; valid: the batch shape")
    sigmas = cfg.sigmas(model.schedule)
    dtype = condition.values.dtype if isinstance(condition, Inpainting) else None
    z = initial_noise(key, tuple(shape), float(sigmas[0]), dtype)
    return cfg.run(model.ve_denoiser(model_fn), z, jax.random.fold_in(key, 1), sigmas, condition)
