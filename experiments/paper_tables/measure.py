"""Random points, error measures and the exact networks every table's checks share.

Points: times with ``sigma_ve`` log-uniform over the schedule's safe domain (the intersection of
the domains when two schedules are involved), ``x0`` from the Gaussian-mixture oracle, ``x_t =
alpha x0 + sigma eps`` (an exact draw of ``p_t``). Everything runs in float64 with a fixed seed.

Error: per example ``max|printed - derived| / max(|printed|, |derived|, floor)`` over the data
axes, maximised over points. The floor is 0 except where a printed value is legitimately zero:
drifts use ``|x|`` (drift per unit time relative to the state) and diffusion coefficients are
compared as variance rates relative to ``g^2``, the forward variance rate being split.

Printed-cell arrays: states (n, d); per-example levels and times (n, 1) so formulas read as
printed. SDE cells return (drift, diffusion coefficient) of ``dx = drift d tau + diffusion dW``.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion_lv import losses
from diffusion_lv.oracle import GaussianMixture, random_anisotropic
from diffusion_lv.schedules import Schedule, get_schedule

Array = jax.Array

VP_FAMILY = ("vp", "linear_vp", "cosine_vp")
DATA_DIM, DATA_MODES = 3, 4
NETWORK_ERROR = 0.1  # relative size of the error of the imperfect network in Tables 6 and 7

# The paper's processes: the kind of their native network output, and the rate c of the Langevin
# split each row of Tables 3, 4 and 7 uses (VP-SDE 2; VP-ODE, VE-Karras, rectified flow 1).
NATIVE = {"vp": "score", "ve": "eps", "rf": "velocity"}
SPLIT_RATE = {"vp_sde": 2.0, "vp_ode": 1.0, "ve": 1.0, "rf": 1.0}


def vp_to(target: str) -> tuple[tuple[str, str], ...]:
    """Every VP-family schedule as source, ``target`` as target (cells written in alpha_t)."""
    return tuple((s, target) for s in VP_FAMILY)


def to_vp(source: str) -> tuple[tuple[str, str], ...]:
    """``source`` as source, every VP-family schedule as target."""
    return tuple((source, s) for s in VP_FAMILY)


@dataclasses.dataclass(frozen=True)
class Points:
    """Random points of one schedule: ``x = alpha(t) x0 + sigma(t) eps`` is an exact draw of p_t."""

    t: Array  # (n,)
    x0: Array  # (n, d)
    eps: Array  # (n, d)
    x: Array  # (n, d)
    key: Array  # for the noise of Euler-Maruyama steps and the imperfect network

    @property
    def tc(self) -> Array:
        """Times as a column (n, 1), to enter the printed formulas."""
        return self.t[:, None]


class Context:
    """The oracle, the schedules and cached random points (call inside ``jax.enable_x64``)."""

    def __init__(self, num_points: int, seed: int):
        if num_points < 1:
            raise ValueError(f"num_points={num_points!r} must be a positive integer")
        self.num_points = num_points
        self.key = jax.random.PRNGKey(seed)
        self.oracle: GaussianMixture = random_anisotropic(seed, DATA_DIM, DATA_MODES)
        self._points: dict[tuple[str, ...], Points] = {}

    @staticmethod
    def schedule(name: str) -> Schedule:
        return schedule_of(name)

    def points(self, name: str, *others: str) -> Points:
        """Points of ``name`` at noise levels every schedule in ``others`` also reaches."""
        cache_key = (name, *others)
        if cache_key not in self._points:
            self._points[cache_key] = self._draw(cache_key)
        return self._points[cache_key]

    def _draw(self, names: tuple[str, ...]) -> Points:
        schedules = [self.schedule(n) for n in names]
        lo = max(s.sigma_ve(jnp.asarray(s.t_min, jnp.float64)) for s in schedules)
        hi = min(s.sigma_ve(jnp.asarray(s.t_max, jnp.float64)) for s in schedules)
        key = jax.random.fold_in(self.key, zlib.crc32("/".join(names).encode()))
        k_t, k_data, k_eps, k_step = jax.random.split(key, 4)
        u = jax.random.uniform(k_t, (self.num_points,), jnp.float64)
        sigma_ve = jnp.exp(jnp.log(lo) + (jnp.log(hi) - jnp.log(lo)) * u)
        s = schedules[0]
        t = jnp.clip(s.t_from_sigma_ve(sigma_ve), s.t_min, s.t_max)
        x0 = self.oracle.sample(k_data, self.num_points)
        eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
        return Points(t, x0, eps, losses.perturb(x0, eps, t, s), k_step)

    # -- the exact networks, in a schedule's own variables --------------------------------
    def network(self, name: str, kind: str) -> Callable[[Array, Array], Array]:
        """``(x, t) -> exact prediction``; accepts times as (n,) or (n, 1)."""
        schedule, oracle = self.schedule(name), self.oracle
        return lambda x, t: oracle.predict(x, jnp.reshape(t, (-1,)), schedule, kind)

    def exact(self, name: str, kind: str, p: Points) -> Array:
        """The exact prediction of ``kind`` at the points ``p`` of schedule ``name``."""
        return self.network(name, kind)(p.x, p.t)

    def imperfect_output(self, name: str, kind: str, p: Points) -> Array:
        """An imperfect network's output: the exact prediction plus a 10% random error."""
        exact = self.exact(name, kind, p)
        scale = jnp.sqrt(jnp.mean(jnp.square(exact), axis=-1, keepdims=True))
        noise = jax.random.normal(jax.random.fold_in(p.key, 1), exact.shape, exact.dtype)
        return exact + NETWORK_ERROR * scale * noise


@functools.cache
def schedule_of(name: str) -> Schedule:
    """The named schedule, built once."""
    return get_schedule(name)


def paper_level(name: str, t: Array) -> Array:
    """The paper's noise-level variable: ``alpha_t = alpha(t)^2`` for VP schedules, else t."""
    return schedule_of(name).alpha(t) ** 2 if name in VP_FAMILY else t


def sum_sq(a: Array) -> Array:
    """``‖a‖²`` over the data axis, per example (n, 1): the paper's squared norms."""
    return jnp.sum(jnp.square(a), axis=-1, keepdims=True)


def _per_example(a, n: int) -> Array:
    a = jnp.asarray(a, jnp.float64)
    if a.ndim == 0:
        return jnp.full((n, 1), a)
    return a[:, None] if a.ndim == 1 else a.reshape(n, -1)


def rel_error(printed, derived, floor=0.0) -> float:
    """``max |printed - derived| / max(|printed|, |derived|, floor)`` (inf norms per example)."""
    n = max(jnp.shape(a)[0] for a in (printed, derived, floor) if jnp.ndim(a) > 0)
    p, d = jnp.broadcast_arrays(_per_example(printed, n), _per_example(derived, n))
    floor = _per_example(floor, n)[:, 0]
    scale = jnp.maximum(jnp.maximum(jnp.max(jnp.abs(p), -1), jnp.max(jnp.abs(d), -1)), floor)
    diff = jnp.max(jnp.abs(p - d), -1)
    return float(jnp.max(jnp.where(diff > 0, diff / jnp.maximum(scale, 1e-300), 0.0)))


def sde_error(printed, derived, x, g2) -> float:
    """Largest of the drift error (floor ``|x|``) and the variance-rate error (floor ``g^2``)."""
    (p_drift, p_diffusion), (d_drift, d_diffusion) = printed, derived
    floor_x = jnp.max(jnp.abs(x), axis=-1)
    return max(
        rel_error(p_drift, d_drift, floor_x),
        rel_error(jnp.square(p_diffusion), jnp.square(d_diffusion), g2),
    )


def step_sde(step: Callable[[float], Array], x: Array, key: Array) -> tuple[Array, Array]:
    """Drift and diffusion coefficient of an Euler-Maruyama step ``x + a h + b sqrt(h) n``.

    Two step sizes separate the parts exactly (``a`` scales with h, the noise with sqrt(h)); ``n``
    is ``jax.random.normal(key, x.shape, x.dtype)``, the draw of every step in langevin.py.
    """
    inc1, inc4 = step(1.0) - x, step(4.0) - x
    drift = 0.5 * (inc4 - 2.0 * inc1)
    noise_term = inc1 - drift
    n = jax.random.normal(key, x.shape, x.dtype)
    diffusion = jnp.sum(noise_term * n, -1) / jnp.sum(n * n, -1)
    residual = jnp.max(jnp.abs(noise_term - diffusion[:, None] * n))
    if residual > 1e-9 * float(jnp.max(jnp.abs(noise_term)) + jnp.max(jnp.abs(x))):
        raise RuntimeError(
            "a langevin.py step no longer adds b * jax.random.normal(key, x.shape, x.dtype): "
            "update step_sde to the step's noise draw"
        )
    return drift, diffusion
