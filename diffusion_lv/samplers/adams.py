"""Adams methods on ``eps``: LMS in sigma (k-diffusion's), DEIS in a schedule's time, iPNDM.

In VE coordinates the probability-flow ODE is ``dz/dsigma = eps(z, sigma) = (z - D) / sigma``
with no linear part, so the exponential integrator of any schedule (DEIS, Zhang & Chen 2022:
``x`` scaled by ``alpha``, variation of constants) is, written in ``z = x / alpha``, the plain
integral ``z_{i+1} = z_i + int_{sigma_i}^{sigma_{i+1}} eps dsigma``. A multistep method replaces
``eps`` by the polynomial through the last ``k`` values in a time variable ``T(sigma)``::

    z_{i+1} = z_i + sum_j c_ij eps_{i-j},   c_ij = int_{sigma_i}^{sigma_{i+1}} L_j(T(s)) ds,

``L_j`` the Lagrange basis on the nodes ``T(sigma_i), ..., T(sigma_{i-k+1})``.

* ``lms`` (k-diffusion's ``sample_lms``, DEIS's rho-AB): ``T = sigma``. ``L_j`` is a polynomial of
  degree ``k - 1 <= 3`` in ``s``, integrated exactly by 4-point Gauss-Legendre.
* ``deis`` (tAB-DEIS): ``T`` the time of ``step_schedule`` (default VP, ``t = log(1 + sigma^2)``:
  DEIS's choice); the integrand is smooth in ``s`` and integrated by 8-point Gauss-Legendre in
  ``s`` (relative error below 1e-9 on the grids here). ``step_schedule="ve"`` is ``lms``.
* ``ipndm`` (the improved PNDM of the DEIS paper): the equal-step Adams-Bashforth weights
  (1; 3/2, -1/2; 23/12, -16/12, 5/12; 55/24, -59/24, 37/24, -9/24) times the step in sigma,
  whatever the steps: exact Adams on a grid uniform in sigma, order 2 on any other smooth grid
  (the fixed weights miss the third-order condition ``sum_j b_j j^2 = ...`` of a variable step).

The order used at each step follows ``order_limit`` (``multistep.step_orders``, on the steps in
``T``). Each is a ``multistep.Plan`` of kind "eps": one ``lax.scan``, one model call per level.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv.samplers.base import Denoiser, resolve_schedule
from diffusion_lv.samplers.multistep import (
    HISTORY,
    Plan,
    check_order,
    check_order_limit,
    padded_levels,
    run_concrete,
    select_by_order,
    step_orders,
)
from diffusion_lv.schedules import Schedule

Array = jax.Array

# Equal-step Adams-Bashforth weights, newest first.
AB_WEIGHTS = (
    (1.0,),
    (3.0 / 2.0, -1.0 / 2.0),
    (23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0),
    (55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0),
)


def _gauss_legendre(points: int):
    nodes, weights = np.polynomial.legendre.leggauss(points)
    return 0.5 * (nodes + 1.0), 0.5 * weights  # on [0, 1]


def _time(schedule: Schedule | None, sigma, xp):
    """``T(sigma)``: sigma itself (None / VE) or the schedule's time."""
    if schedule is None or schedule.name == "ve":
        return sigma
    if xp is np:
        with jax.ensure_compile_time_eval():
            return np.asarray(schedule.t_from_sigma_ve(jnp.asarray(sigma)), np.float64)
    return schedule.t_from_sigma_ve(sigma)


def adams_plan(levels, xp=np, *, order: int = 4, step_schedule=None, equal_steps: bool = False,
               order_limit: str = "auto") -> Plan:
    """Coefficients of the Adams methods of the module docstring for positive ``levels``."""
    schedule = resolve_schedule(step_schedule)
    n = levels.shape[0] - 1
    dsigma = levels[1:] - levels[:-1]  # negative
    times = _time(schedule, padded_levels(levels, xp), xp)  # times[3 + i] = T(sigma_i)
    t_i = times[3:3 + n]
    span = times[4:4 + n] - t_i
    orders = step_orders(span, order, order_limit, xp, equal_steps=equal_steps)
    if equal_steps:
        candidates = [
            xp.stack([xp.ones_like(dsigma)] + [dsigma * b for b in weights]
                     + [xp.zeros_like(dsigma)] * (HISTORY - len(weights)), axis=1)
            for weights in AB_WEIGHTS[:order]
        ]
        return Plan(select_by_order(orders, candidates, xp), "eps", order)
    # Nodes in units of the step: x_j = (T_{i-j} - T_i) / (T_{i+1} - T_i), x_0 = 0.
    nodes = [(times[3 - j:3 - j + n] - t_i) / span for j in range(HISTORY)]
    u, w = _gauss_legendre(4 if schedule is None or schedule.name == "ve" else 8)
    s = levels[:-1, None] + dsigma[:, None] * xp.asarray(u)[None]  # (n, Q) quadrature points
    x = (_time(schedule, s, xp) - t_i[:, None]) / span[:, None]
    candidates = []
    for k in range(1, order + 1):
        columns = [xp.ones_like(dsigma)]
        for j in range(HISTORY):
            if j >= k:
                columns.append(xp.zeros_like(dsigma))
                continue
            basis = xp.ones_like(x)
            for m in range(k):
                if m != j:
                    basis = basis * (x - nodes[m][:, None]) / (nodes[j] - nodes[m])[:, None]
            columns.append(dsigma * (basis @ xp.asarray(w)))
        candidates.append(xp.stack(columns, axis=1))
    return Plan(select_by_order(orders, candidates, xp), "eps", order)


def check_adams(order, step_schedule, order_limit) -> None:
    check_order(order, (1, 2, 3, 4))
    resolve_schedule(step_schedule)
    check_order_limit(order_limit)


def sample_adams(
    denoiser: Denoiser,
    z: Array,
    key: Array,
    sigmas,
    *,
    order: int = 4,
    step_schedule: str | Schedule | None = None,
    equal_steps: bool = False,
    order_limit: str = "auto",
    trajectory: bool = False,
) -> tuple[Array, dict]:
    """LMS (``step_schedule`` None), DEIS (a schedule's time), iPNDM (``equal_steps``)."""
    del key  # deterministic
    check_adams(order, step_schedule, order_limit)
    return run_concrete(denoiser, z, None, sigmas, adams_plan, trajectory, order=order,
                        step_schedule=step_schedule, equal_steps=equal_steps,
                        order_limit=order_limit)


def sample_lms(denoiser, z, key, sigmas, *, order: int = 4, order_limit: str = "auto",
               trajectory: bool = False):
    """Linear multistep in sigma (k-diffusion's LMS), orders 1-4."""
    return sample_adams(denoiser, z, key, sigmas, order=order, order_limit=order_limit,
                        trajectory=trajectory)


def sample_deis(denoiser, z, key, sigmas, *, order: int = 3, step_schedule="vp",
                order_limit: str = "auto", trajectory: bool = False):
    """tAB-DEIS: eps extrapolated in ``step_schedule``'s time (default VP), orders 1-4."""
    return sample_adams(denoiser, z, key, sigmas, order=order, step_schedule=step_schedule,
                        order_limit=order_limit, trajectory=trajectory)


def sample_ipndm(denoiser, z, key, sigmas, *, order: int = 4, order_limit: str = "auto",
                 trajectory: bool = False):
    """iPNDM: equal-step Adams-Bashforth weights on eps, steps in sigma, orders 1-4."""
    return sample_adams(denoiser, z, key, sigmas, order=order, equal_steps=True,
                        order_limit=order_limit, trajectory=trajectory)


def check_lms(order, order_limit) -> None:
    check_adams(order, None, order_limit)
