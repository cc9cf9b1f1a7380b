"""Linear multistep solvers: one engine, and the exponential integrators in log-SNR on top of it.

**The engine.** Every multistep method here (DPM-Solver++(2M/3M) and their SDE variants, UniPC,
LMS, DEIS, iPNDM) advances the state by a linear combination of the state and the last few
model outputs::

    z_{i+1} = a_i z_i + sum_{j=0}^{3} w_ij F_{i-j} (+ noise_i),    F_i = D(z_i, sigma_i) or eps_i

with ``F`` the denoiser output ("data") or ``eps = (z - D) / sigma`` ("eps"). The coefficients
depend only on the grid, so a method is a *plan*, ``(coefficients (steps, 5), kind, history)``,
computed once from the levels, and ``run_plan`` scans it: one ``lax.scan``, one model call per
level. A plan is computed in float64 NumPy for a concrete grid, or with ``jax.numpy`` from traced
levels (``fitted_grid.py`` differentiates the solve with respect to the grid): the coefficient
functions take the array module ``xp`` and are vectorised over steps.

**Stable start and order limiting** (``order_limit``, ``step_orders``). A ``k``-step method
extrapolates the last ``k`` outputs by a polynomial over the next step. The plan uses at step
``i`` the order ``k_i``:

* ``"history"``: ``k_i = min(order, i + 1)``, what the history allows (k-diffusion, the papers);
* ``"auto"`` (default), the history and two limits:

  - *step ratio*: first order wherever a step is more than ``RATIO_MAX = 2`` times the previous
    one (the polynomial would be extrapolated over more than twice its node spacing; its error
    and the weights it puts on old outputs grow like the ratio to the power ``k - 1``), and the
    order then climbs back by one per step, as at the start; methods whose weights assume equal
    steps (iPNDM) drop to first order wherever consecutive steps differ by more than a factor
    ``EQUAL_STEP_RATIO = 1.5`` (the weights' error is ``(1 - ratio)`` times the extrapolation);
  - *step length in lambda* (the methods that extrapolate ``D`` in ``lambda``: DPM-Solver++,
    UniPC): order ``k`` only where ``(k - 1) h <= LAMBDA_UNIT = 1``. Near the data end ``D``
    approaches its limit like ``e^{-2 lambda}`` (``sigma^2``), and through a sharp mode
    boundary it switches over a unit of ``lambda``: no polynomial in ``lambda`` follows it over
    longer steps, and those are the last steps of the Karras and log-SNR grids at low NFE. The
    Adams methods extrapolate ``eps`` in ``sigma``, whose last steps are the shortest.

  On the split with ``c > 1`` (the SDE variants) the step-length limit stops at second order:
  the state contracts by ``e^{-ch}`` per step and fresh noise replaces what it loses, and first
  order on the long last steps leaves the output law too narrow. Measured on the 64-D Gaussian
  of the benchmark (exact KL, c = 2, Karras grid, 6 NFE): ``dpmpp_2m_sde`` 11 at second order
  against 35 at first order; ``dpmpp_3m_sde`` 99 at third order against 11 at second.

  Measured on the benchmark problems in docs/samplers.md. Fine grids are unaffected (the
  asymptotic order is kept).

**The split with rate c, exactly in its linear part.** Write ``lambda = -log sigma_ve`` (half the
log-SNR) and ``h = lambda_{i+1} - lambda_i > 0``. In VE coordinates the reverse split is
``dz = c (z - D) / sigma dsigma + sqrt(2 (c - 1) sigma) dW``, i.e. in ``lambda``:
``dz/dlambda = c (D - z)`` plus noise. Variation of constants from ``lambda`` to ``lambda + h``::

    z' = e^{-c h} z + int_0^h c e^{-c (h - v)} D(lambda + v) dv + noise,
    noise ~ N(0, sigma'^2 (1 - e^{-2 (c - 1) h}) I),

the noise variance being ``int_{sigma'}^{sigma} (sigma'/u)^{2c} 2 (c - 1) u du``. Replacing
``D`` by the polynomial through the last ``k`` denoiser outputs (Newton form in ``lambda``:
``D(v) = D_0 + D' v + D'' v^2 / 2``) gives the moments
``int_0^h c e^{-c(h-v)} v^m / m! dv = c h^{m+1} phi_{m+1}(c h)`` with
``phi_1(H) = (1 - e^{-H}) / H``, ``phi_{m+1}(H) = (1/m! - phi_m(H)) / H``, so

    z' = e^{-ch} z + c h phi_1 D_0 + c h^2 phi_2 D' + c h^3 phi_3 D'' + noise.

``k = 1`` is DDIM (c = 1) and DDPM ancestral (c = 2: ``z' = r^2 z + (1 - r^2) D + sigma'
sqrt(1 - r^2) xi`` with ``r = sigma'/sigma``). ``k = 3`` at ``c = 1`` is the Adams-type
exponential integrator of order 3 (``dpmpp_3m``); ``c > 1`` its SDE variant.

**Second order: DPM-Solver++(2M) as published** (Lu et al. 2022, Algorithm 2; k-diffusion's
``sample_dpmpp_2m``, and its ``sample_dpmpp_2m_sde`` with ``solver_type='midpoint'``) uses the
"midpoint" correction ``z' = e^{-ch} z + (1 - e^{-ch}) (D_0 + (D_0 - D_1) h / (2 h_prev))``;
``solver_type='heun'`` is the ``k = 2`` moment above (``c h^2 phi_2(ch) D'``). They differ at
third order per step; the midpoint form is the second-order step of every exponential method
here (also where ``dpmpp_3m`` runs at order 2): with steps ``h`` near 1 it measured more
accurate on the benchmark problems, and never worse than Euler where the moment form was.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv import checks
from diffusion_lv.langevin import is_one
from diffusion_lv.samplers.base import Denoiser, check_rate, check_sigmas, denoise

Array = jax.Array

HISTORY = 4  # outputs a plan may combine: F_i, F_{i-1}, F_{i-2}, F_{i-3}
ORDER_LIMITS = ("auto", "history")
RATIO_MAX = 2.0  # "auto": first order where a step is more than this times the previous one
EQUAL_STEP_RATIO = 1.5  # "auto", equal-step weights: first order where steps differ by more
LAMBDA_UNIT = 1.0  # "auto", methods in lambda: order k only where (k - 1) h <= LAMBDA_UNIT
SOLVER_TYPES = ("midpoint", "heun")


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """What ``run_plan`` scans: ``z' = c[0] z + sum_j c[1 + j] F_{i-j} + noise_std[i] xi``.

    ``coefficients`` (steps, 5); ``kind`` "data" (F = D) or "eps" (F = (z - D) / sigma);
    ``history`` how many outputs the plan combines (static); ``noise_std`` (steps,) or None.
    """

    coefficients: Any
    kind: str
    history: int
    noise_std: Any = None


# -- coefficient helpers (NumPy float64 or jax.numpy, vectorised over steps) -------------------


def phi(m: int, big_h, xp=np):
    """``phi_m(H) = int_0^1 e^{-H (1 - u)} u^(m-1) / (m-1)! du``, elementwise (series near 0)."""
    big_h = xp.asarray(big_h)
    small = xp.abs(big_h) < 1.0  # the recursion cancels for small H; the series converges fast
    safe = xp.where(small, 1.0, big_h)  # no 0/0 in the unused branch (nor in its gradient)
    value = -xp.expm1(-safe) / safe
    for k in range(1, m):
        value = (1.0 / math.factorial(k) - value) / safe
    tiny = xp.where(small, big_h, 0.0)
    series = sum((-tiny) ** j * (1.0 / math.factorial(j + m)) for j in range(22))
    return xp.where(small, series, value)


def shifted(a, k: int, fill: float, xp=np):
    """``a`` delayed by ``k`` steps along axis 0 (``out[i] = a[i - k]``), ``fill`` before."""
    if k == 0:
        return a
    pad = xp.full((k,) + tuple(a.shape[1:]), fill, dtype=a.dtype)
    return xp.concatenate([pad, a[:-k]], axis=0)


def padded_levels(levels, xp=np):
    """The levels with three fictitious larger levels in front (distinct, decreasing), so that
    per-step formulas reading ``sigma_{i-3}`` stay finite at the first steps (unused there)."""
    first, second = levels[0], levels[1]
    gap = first - second
    front = xp.stack([first + 3.0 * gap, first + 2.0 * gap, first + gap])
    return xp.concatenate([front, levels])


def check_order_limit(order_limit) -> None:
    checks.choice("order_limit", order_limit, ORDER_LIMITS)


def check_order(order, orders) -> None:
    if not (isinstance(order, int) and not isinstance(order, bool)) or order not in orders:
        raise ValueError(f"order={order!r} is not valid; valid choices: {list(orders)}")


def step_orders(steps, order: int, order_limit: str = "auto", xp=np, *, unit=None,
                unit_floor: int = 1, equal_steps: bool = False):
    """The order used at each step (``order_limit``: see the module docstring).

    ``steps`` (n,) are the step lengths in the variable the method extrapolates in. ``unit``
    (the methods in ``lambda``: 1): order ``k`` only where ``(k - 1) h <= unit``, but never
    below ``unit_floor`` by this limit.
    ``equal_steps`` (weights that assume equal steps, iPNDM): first order also where a step
    differs from the previous one by more than a factor ``EQUAL_STEP_RATIO``.
    """
    steps = xp.abs(xp.asarray(steps))
    n = steps.shape[0]
    index = xp.arange(n)
    orders = xp.minimum(order, index + 1)
    if order_limit == "history" or order == 1:
        return orders
    previous = shifted(steps, 1, 1.0, xp)
    jump = (steps > RATIO_MAX * previous) & (index > 0)
    if equal_steps:
        ratio = steps / previous
        jump = jump | (((ratio > EQUAL_STEP_RATIO) | (ratio * EQUAL_STEP_RATIO < 1.0))
                       & (index > 0))
    # After a first-order step the order climbs back one per step: k_i <= i - last_jump + 1.
    last_jump = _cumulative_max(xp.where(jump, index, -1), xp)
    ramp = xp.where(jump, 1, index - last_jump + 1)
    orders = xp.where(last_jump >= 0, xp.minimum(orders, ramp), orders)
    if unit is not None:
        cap = xp.maximum(unit_floor, 1 + xp.floor(unit / steps).astype(orders.dtype))
        orders = xp.minimum(orders, cap)
    return orders


def _cumulative_max(a, xp):
    if xp is np:
        return np.maximum.accumulate(a)
    return jax.lax.cummax(a)


def select_by_order(orders, candidates, xp=np):
    """Row ``i`` of ``candidates[orders[i] - 1]`` (each candidate (steps, 5))."""
    out = candidates[0]
    for k, candidate in enumerate(candidates[1:], start=2):
        out = xp.where((orders == k)[:, None], candidate, out)
    return out


def _columns(decay, weights, xp):
    """Stack ``(decay, w_0, ..., w_3)`` into (steps, 5), padding missing weights with zeros."""
    zeros = xp.zeros_like(decay)
    weights = list(weights) + [zeros] * (HISTORY - len(weights))
    return xp.stack([decay, *weights], axis=1)


# -- the exponential integrators in log-SNR ---------------------------------------------------


def lambda_limit(c: float) -> dict:
    """The step-length limit of the order rule (``step_orders`` keywords): down to first order
    on the ODE (``c = 1``), down to second order on the SDE variants (module docstring)."""
    return {"unit": LAMBDA_UNIT, "unit_floor": 1 if is_one(c) else 2}


def log_steps(levels, xp=np):
    """``h_i = log sigma_i - log sigma_{i+1}`` (> 0)."""
    log_levels = xp.log(levels)
    return log_levels[:-1] - log_levels[1:]


def exponential_candidates(levels, c: float, xp=np, solver_type: str = "midpoint"):
    """Coefficients (steps, 5) of the order 1, 2, 3 exponential multistep.

    Order 3: the Newton form of the module docstring. Order 2: ``solver_type`` "midpoint", the
    published DPM-Solver++(2M) correction ``(1 - e^{-ch}) (D_0 - D_1) h / (2 h_prev)``, or
    "heun", the exact moment ``c h^2 phi_2(ch) (D_0 - D_1) / h_prev`` of the linear polynomial.
    """
    hs = log_steps(levels, xp)
    h1, h2 = shifted(hs, 1, 1.0, xp), shifted(hs, 2, 1.0, xp)
    big_h = c * hs
    decay = xp.exp(-big_h)
    m1 = -xp.expm1(-big_h)
    m2 = c * hs**2 * phi(2, big_h, xp)
    m3 = c * hs**3 * phi(3, big_h, xp)
    zero = xp.zeros_like(hs)
    first = _columns(decay, [m1], xp)
    correction = 0.5 * m1 * hs / h1 if solver_type == "midpoint" else m2 / h1
    second = _columns(decay, [m1 + correction, -correction], xp)
    # Newton form: D(v) = D_0 + (f01 + h1 f012) v + f012 v^2 with divided differences
    # f01 = (D_0 - D_1)/h1, f12 = (D_1 - D_2)/h2, f012 = (f01 - f12)/(h1 + h2).
    f01 = (1.0 / h1, -1.0 / h1, zero)
    f12 = (zero, 1.0 / h2, -1.0 / h2)
    f012 = tuple((a - b) / (h1 + h2) for a, b in zip(f01, f12, strict=True))
    third_w = [m2 * (a + h1 * b) + 2.0 * m3 * b for a, b in zip(f01, f012, strict=True)]
    third_w[0] = third_w[0] + m1
    third = _columns(decay, third_w, xp)
    return first, second, third


def exponential_plan(levels, xp=np, *, order: int = 3, c: float = 1.0,
                     order_limit: str = "auto") -> Plan:
    """The order-``order`` exponential multistep on the split with rate ``c`` (module doc)."""
    orders = step_orders(log_steps(levels, xp), order, order_limit, xp, **lambda_limit(c))
    coefficients = select_by_order(orders, exponential_candidates(levels, c, xp)[:order], xp)
    noise_std = None
    if not is_one(c):
        hs = log_steps(levels, xp)
        noise_std = levels[1:] * xp.sqrt(-xp.expm1(-2.0 * (c - 1.0) * hs))
    return Plan(coefficients, "data", order, noise_std)


def dpmpp_2m_plan(levels, xp=np, *, c: float = 1.0, solver_type: str = "midpoint",
                  order_limit: str = "auto") -> Plan:
    """DPM-Solver++(2M) with rate ``c``: the published midpoint correction or the exact ``heun``
    moment (module doc)."""
    hs = log_steps(levels, xp)
    orders = step_orders(hs, 2, order_limit, xp, **lambda_limit(c))
    candidates = exponential_candidates(levels, c, xp, solver_type)[:2]
    noise_std = None
    if not is_one(c):
        noise_std = levels[1:] * xp.sqrt(-xp.expm1(-2.0 * (c - 1.0) * hs))
    return Plan(select_by_order(orders, candidates, xp), "data", 2, noise_std)


# -- the engine -------------------------------------------------------------------------------


def plan_step(denoiser: Denoiser, plan: Plan, key: Array | None = None):
    """One step of ``plan`` as a scan body: ``((z, past), (i, sigma_i, coefficients_i,
    noise_std_i)) -> (z_next, past_next)``, ``past`` the last ``history - 1`` outputs."""
    history, kind = plan.history, plan.kind
    stochastic = plan.noise_std is not None

    def step(carry, inputs):
        z, past = carry
        i, sigma, coeff, std = inputs
        d = denoise(denoiser, z, sigma)
        f = d if kind == "data" else (z - d) / sigma
        outputs = (f, *past)
        z_next = coeff[0] * z
        for j in range(history):
            z_next = z_next + coeff[1 + j] * outputs[j]
        if stochastic:
            noise = jax.random.normal(jax.random.fold_in(key, i), z.shape, z.dtype)
            z_next = z_next + std * noise
        return z_next, outputs[: history - 1]

    return step


def plan_inputs(levels, plan: Plan, dtype):
    """The per-step scan inputs of ``plan_step`` (stacked along the step axis)."""
    steps = levels.shape[0] - 1
    if isinstance(plan.coefficients, np.ndarray) and plan.history < HISTORY:
        assert not np.any(plan.coefficients[:, 1 + plan.history:]), "plan uses more history"
    noise_std = plan.noise_std if plan.noise_std is not None else np.zeros(steps)
    return (jnp.arange(steps), jnp.asarray(levels[:-1], dtype),
            jnp.asarray(plan.coefficients, dtype), jnp.asarray(noise_std, dtype))


def run_plan(
    denoiser: Denoiser,
    z: Array,
    key: Array | None,
    levels,
    plan: Plan,
    final_denoise: bool,
    trajectory: bool = False,
) -> tuple[Array, dict]:
    """Scan ``plan`` over the grid ``levels`` (NumPy, or traced for grid fitting).

    Returns ``(z, info)`` as every sampler: ``D(z, sigma_min)`` when ``final_denoise``;
    ``info["nfe"]`` is ``steps (+ 1)``.
    """
    steps = levels.shape[0] - 1
    step = plan_step(denoiser, plan, key)

    def body(carry, inputs):
        carry = step(carry, inputs)
        return carry, (carry[0] if trajectory else None)

    past = tuple(jnp.zeros_like(z) for _ in range(plan.history - 1))
    (z, _), path = jax.lax.scan(body, (z, past), plan_inputs(levels, plan, z.dtype))
    nfe = steps
    if final_denoise:
        z = denoise(denoiser, z, jnp.asarray(levels[-1], z.dtype))
        nfe += 1
    info = {"nfe": int(nfe), "sigmas": levels}
    if trajectory:
        info["trajectory"] = path
    return z, info


def run_concrete(denoiser, z, key, sigmas, plan_fn, trajectory, **options):
    """Validate a concrete grid, build its plan in float64 NumPy and scan it."""
    levels, final_denoise = check_sigmas(sigmas)
    if levels.shape[0] < 2:
        raise ValueError(f"sigmas must hold at least two positive levels, got {sigmas}")
    plan = plan_fn(levels, np, **options)
    return run_plan(denoiser, z, key, levels, plan, final_denoise, trajectory)


# -- samplers ---------------------------------------------------------------------------------


def check_rate_and_limit(c, order_limit) -> None:
    check_rate(c)
    check_order_limit(order_limit)


def check_exponential(order, c, order_limit) -> None:
    check_order(order, (1, 2, 3))
    check_rate_and_limit(c, order_limit)


def sample_exponential_multistep(
    denoiser: Denoiser,
    z: Array,
    key: Array,
    sigmas,
    *,
    order: int = 3,
    c: float = 1.0,
    order_limit: str = "auto",
    trajectory: bool = False,
) -> tuple[Array, dict]:
    """Order-``order`` exponential multistep on the reverse split with rate ``c`` (see module)."""
    check_exponential(order, c, order_limit)
    return run_concrete(denoiser, z, key, sigmas, exponential_plan, trajectory, order=order,
                        c=float(c), order_limit=order_limit)


def check_dpmpp_2m(c, solver_type, order_limit) -> None:
    check_rate(c)
    checks.choice("solver_type", solver_type, SOLVER_TYPES)
    check_order_limit(order_limit)


def sample_dpmpp_2m_sde(
    denoiser: Denoiser,
    z: Array,
    key: Array,
    sigmas,
    *,
    c: float = 2.0,
    solver_type: str = "midpoint",
    order_limit: str = "auto",
    trajectory: bool = False,
) -> tuple[Array, dict]:
    """DPM-Solver++(2M) on the split with rate ``c`` (2: the reverse SDE, k-diffusion's
    ``eta = c - 1``); ``solver_type`` ``midpoint`` (k-diffusion's default) or ``heun``."""
    check_dpmpp_2m(c, solver_type, order_limit)
    return run_concrete(denoiser, z, key, sigmas, dpmpp_2m_plan, trajectory, c=float(c),
                        solver_type=solver_type, order_limit=order_limit)


def sample_dpmpp_2m(
    denoiser: Denoiser, z: Array, key: Array, sigmas, *, order_limit: str = "auto",
    trajectory: bool = False,
) -> tuple[Array, dict]:
    """DPM-Solver++(2M) as published (``order_limit="history"``: verbatim, the usual baseline)."""
    check_order_limit(order_limit)
    return run_concrete(denoiser, z, key, sigmas, dpmpp_2m_plan, trajectory, c=1.0,
                        solver_type="midpoint", order_limit=order_limit)
