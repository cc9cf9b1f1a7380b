"""Forward-process schedules: ``x_t = alpha(t) * x0 + sigma(t) * eps``, ``eps ~ N(0, I)``.

Convention: every schedule has data at ``t = 0`` (``alpha(0) = 1``, ``sigma(0) = 0``) and noise
at its end time ``t_max``; time is the schedule's own variable (VP: t, VE-Karras: sigma,
rectified flow: s). A schedule is two scalar functions and nothing else: the forward SDE
``dx = f x dt + g dW``, log-SNR, the canonical (VE) noise level ``sigma_ve = sigma / alpha`` and
its inverse all derive from ``alpha`` and ``sigma`` (derivatives by ``jax.jvp``).

Safe domains are explicit: ``[t_min, t_max]`` is where every derived quantity is finite.
The singular ends are excluded on purpose: ``sigma = 0`` at ``t = 0`` (score, log-SNR infinite)
and, for rectified flow and cosine VP, ``alpha = 0`` at the far end (``f``, ``g``, ``sigma_ve``
infinite). ``check_times`` raises a clear error for concrete times outside the domain.

Schedules are frozen dataclasses: hashable, so they can be static arguments of ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def expand_to(a: Array, x: Array) -> Array:
    """Reshape a per-example coefficient (scalar or shape (B,)) to broadcast against x."""
    a = jnp.asarray(a)
    return a.reshape(a.shape + (1,) * (jnp.ndim(x) - a.ndim))


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Base class: subclasses define ``alpha`` and ``sigma`` (and may give closed-form inverses)."""

    t_min: float
    t_max: float

    name = "schedule"

    # -- the two functions a schedule is made of ------------------------------------------
    def alpha(self, t: Array) -> Array:
        raise NotImplementedError

    def sigma(self, t: Array) -> Array:
        raise NotImplementedError

    # -- derived quantities --------------------------------------------------------------
    def alpha_sigma_derivatives(self, t: Array) -> tuple[Array, Array, Array, Array]:
        """``(alpha, sigma, d alpha/dt, d sigma/dt)`` by forward-mode autodiff, elementwise."""
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        alpha, dalpha = jax.jvp(self.alpha, (t,), (jnp.ones_like(t),))
        sigma, dsigma = jax.jvp(self.sigma, (t,), (jnp.ones_like(t),))
        return alpha, sigma, dalpha, dsigma

    def f(self, t: Array) -> Array:
        """Forward-SDE drift coefficient ``f = d log(alpha) / dt``."""
        alpha, _, dalpha, _ = self.alpha_sigma_derivatives(t)
        return dalpha / alpha

    def g2(self, t: Array) -> Array:
        """Forward-SDE squared diffusion ``g^2 = d(sigma^2)/dt - 2 f sigma^2``."""
        alpha, sigma, dalpha, dsigma = self.alpha_sigma_derivatives(t)
        return 2.0 * sigma * (dsigma - dalpha / alpha * sigma)

    def log_snr(self, t: Array) -> Array:
        """``lambda = 2 log(alpha / sigma)``."""
        return 2.0 * (jnp.log(self.alpha(t)) - jnp.log(self.sigma(t)))

    def sigma_ve(self, t: Array) -> Array:
        """Canonical noise level ``sigma / alpha``: the VE-Karras time at the same distribution."""
        return self.sigma(t) / self.alpha(t)

    def t_from_sigma_ve(self, sigma_ve: Array) -> Array:
        """Inverse of ``sigma_ve(t)``: a jit-able bisection on ``log sigma_ve`` over ``[0, t_max]``.

        Subclasses with a closed form override this; tests check the two agree.
        """
        target = jnp.log(jnp.asarray(sigma_ve, dtype=jnp.result_type(float)))
        lo = jnp.zeros_like(target)
        hi = jnp.full_like(target, self.t_max)
        # 64 halvings reach the float64 resolution of any t in [0, t_max].
        def body(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            below = jnp.log(self.sigma_ve(mid)) < target
            return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

        lo, hi = jax.lax.fori_loop(0, 64, body, (lo, hi))
        return 0.5 * (lo + hi)

    def t_from_log_snr(self, log_snr: Array) -> Array:
        return self.t_from_sigma_ve(jnp.exp(-0.5 * jnp.asarray(log_snr)))

    # -- the end of the forward process ----------------------------------------------------
    def prior_std(self) -> float:
        """Standard deviation of the prior ``N(0, sigma(t_max)^2 I)`` used at the end time."""
        # Eager even inside an outer jit (a Python float is wanted, not a tracer).
        with jax.ensure_compile_time_eval():
            return float(self.sigma(jnp.asarray(self.t_max, jnp.float32)))

    def prior_sample(self, key: Array, shape, dtype=jnp.float32) -> Array:
        return self.prior_std() * jax.random.normal(key, shape, dtype)

    def prior_log_prob(self, x: Array) -> Array:
        """Log density of the prior, summed over all but the leading (batch) axis."""
        s = self.prior_std()
        d = math.prod(x.shape[1:])
        sq = jnp.sum(jnp.reshape(x, (x.shape[0], -1)) ** 2, axis=-1)
        return -0.5 * sq / s**2 - d * (math.log(s) + 0.5 * math.log(2 * math.pi))

    # -- domain --------------------------------------------------------------------------
    @property
    def sigma_ve_min(self) -> float:
        return self._sigma_ve_float(self.t_min)

    @property
    def sigma_ve_max(self) -> float:
        return self._sigma_ve_float(self.t_max)

    def _sigma_ve_float(self, t: float) -> float:
        # Eager even inside an outer jit: callers want a Python float, not a tracer.
        with jax.ensure_compile_time_eval():
            return float(self.sigma_ve(jnp.asarray(t, jnp.float64 if _x64() else jnp.float32)))

    def check_times(self, t, what: str = "t") -> None:
        """Raise ValueError if a concrete time is outside ``[t_min, t_max]`` or not finite."""
        if isinstance(t, jax.core.Tracer):
            return
        given = np.asarray(t)
        arr = given.astype(np.float64)
        # Allow the input's own rounding: float32(t_min) is the domain's end in float32.
        is_float = np.issubdtype(given.dtype, np.floating)
        slack = max(1e-12, float(np.finfo(given.dtype).eps) if is_float else 0.0)
        lo, hi = self.t_min * (1 - slack), self.t_max * (1 + slack)
        bad = ~np.isfinite(arr) | (arr < lo) | (arr > hi)
        if np.any(bad):
            value = arr[bad].ravel()[0]
            raise ValueError(
                f"{what}={value!r} is outside the safe domain of {self.describe()}: "
                f"valid times are [{self.t_min}, {self.t_max}]"
            )

    def describe(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"

    def __post_init__(self):
        if not (0.0 < self.t_min < self.t_max):
            raise ValueError(
                f"{type(self).__name__}: need 0 < t_min < t_max, got t_min={self.t_min}, "
                f"t_max={self.t_max}"
            )
        if self.t_max > self.t_end:
            raise ValueError(
                f"{type(self).__name__}: t_max={self.t_max} exceeds the end of the schedule "
                f"{self.t_end} where alpha reaches 0"
            )

    # Where alpha reaches 0 (infinite for VP/VE); t_max must stay below it.
    t_end = math.inf


def _x64() -> bool:
    return bool(jax.config.jax_enable_x64)


@dataclasses.dataclass(frozen=True)
class VP(Schedule):
    """The paper's variance-preserving process: ``alpha = exp(-t/2)``, ``f = -1/2``, ``g = 1``.

    The paper writes ``alpha_t = e^{-t}`` for what is ``alpha^2`` here.
    """

    t_min: float = 1e-5
    t_max: float = 10.0
    name = "vp"

    def alpha(self, t):
        return jnp.exp(-0.5 * t)

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(-t))

    def t_from_sigma_ve(self, sigma_ve):
        return jnp.log1p(jnp.square(sigma_ve))


@dataclasses.dataclass(frozen=True)
class VEKarras(Schedule):
    """Variance exploding with time equal to the noise level (EDM): ``alpha = 1``, ``sigma = t``."""

    t_min: float = 0.002
    t_max: float = 80.0
    name = "ve"

    def alpha(self, t):
        return jnp.ones_like(t)

    def sigma(self, t):
        return t

    def t_from_sigma_ve(self, sigma_ve):
        return jnp.asarray(sigma_ve)


@dataclasses.dataclass(frozen=True)
class RectifiedFlow(Schedule):
    """Rectified flow / linear interpolant: ``alpha = 1 - s``, ``sigma = s``.

    ``s = 1`` (pure noise) is outside the safe domain: ``f = -1/(1-s)`` and ``sigma_ve`` diverge.
    The default ``t_max = 0.999`` (``sigma_ve`` = 999) leaves a prior mismatch of order 1e-3.
    """

    t_min: float = 1e-4
    t_max: float = 0.999
    name = "rf"
    t_end = 1.0

    def alpha(self, t):
        return 1.0 - t

    def sigma(self, t):
        return t

    def t_from_sigma_ve(self, sigma_ve):
        return sigma_ve / (1.0 + sigma_ve)


@dataclasses.dataclass(frozen=True)
class LinearVP(Schedule):
    """DDPM / score_sde VP, linear ``beta(t) = beta_min + (beta_max - beta_min) t`` on [0, 1]."""

    t_min: float = 1e-5
    t_max: float = 1.0
    beta_min: float = 0.1
    beta_max: float = 20.0
    name = "linear_vp"

    def _integral_beta(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * jnp.square(t)

    def alpha(self, t):
        return jnp.exp(-0.5 * self._integral_beta(t))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(-self._integral_beta(t)))

    def t_from_sigma_ve(self, sigma_ve):
        b = jnp.log1p(jnp.square(sigma_ve))  # integral of beta up to t
        slope = self.beta_max - self.beta_min
        # Root of slope/2 t^2 + beta_min t - b = 0, written to avoid cancellation.
        return 2.0 * b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * slope * b))


@dataclasses.dataclass(frozen=True)
class CosineVP(Schedule):
    """Nichol & Dhariwal cosine VP: ``alpha = cos(phi(t))/cos(phi(0))``, ``phi = (t+s)/(1+s) pi/2``.

    ``alpha`` reaches 0 at ``t = 1``; the default ``t_max = 0.992`` ends at ``sigma_ve`` near 80
    (the original clips betas at 0.999 for the same reason).
    """

    t_min: float = 1e-5
    t_max: float = 0.992
    offset: float = 0.008
    name = "cosine_vp"
    t_end = 1.0

    def _phi(self, t):
        return (t + self.offset) / (1.0 + self.offset) * (0.5 * math.pi)

    # The forms below avoid cancellation at both ends (float32 lost ~10% of sigma near t_min
    # written as sqrt(1 - alpha^2), and ~1e-5 of alpha near t_max written as cos(phi)):
    # cos(phi) = sin(pi/2 - phi) and 1 - alpha^2 = sin(phi - phi0) sin(phi + phi0) / cos^2(phi0).
    def alpha(self, t):
        rest = (1.0 - t) / (1.0 + self.offset) * (0.5 * math.pi)  # pi/2 - phi(t)
        return jnp.sin(rest) / math.cos(self._phi(0.0))

    def sigma(self, t):
        delta = t / (1.0 + self.offset) * (0.5 * math.pi)  # phi(t) - phi(0)
        phi0 = self._phi(0.0)
        return jnp.sqrt(jnp.sin(delta) * jnp.sin(delta + 2.0 * phi0)) / math.cos(phi0)

    def t_from_sigma_ve(self, sigma_ve):
        # tan(phi) = r / cos(phi0) with r = sqrt(sigma_ve^2 + sin^2(phi0)); phi - phi0 from
        # tan(phi - phi0), whose numerator r - sin(phi0) is rewritten without cancellation.
        sigma_ve = jnp.asarray(sigma_ve)
        phi0 = self._phi(0.0)
        sin0, cos0 = math.sin(phi0), math.cos(phi0)
        sv2 = jnp.square(sigma_ve)
        r = jnp.sqrt(sv2 + sin0**2)
        delta = jnp.arctan2(sv2 * cos0 / (r + sin0), cos0**2 + r * sin0)
        return delta / (0.5 * math.pi) * (1.0 + self.offset)


SCHEDULES: dict[str, type[Schedule]] = {
    cls.name: cls for cls in (VP, VEKarras, RectifiedFlow, LinearVP, CosineVP)
}


def get_schedule(name: str, **kwargs) -> Schedule:
    """Build a schedule by name; unknown names and bad keyword arguments raise a clear error."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid choices: {sorted(SCHEDULES)}")
    cls = SCHEDULES[name]
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = set(kwargs) - valid
    if unknown:
        raise ValueError(
            f"schedule {name!r} has no parameter(s) {sorted(unknown)}; valid: {sorted(valid)}"
        )
    return cls(**kwargs)
