"""UniPC (Zhao et al. 2023): the UniP predictor and the UniC corrector, data prediction.

Convention as in ``multistep.py``: ``lambda = -log sigma_ve``, step ``h = lambda_{i+1} -
lambda_i``, and the exact solution of the probability-flow ODE over a step
``z' = e^{-h} z + int_0^h e^{-(h-v)} D(lambda + v) dv``. Expanding ``D`` in Taylor series,
``int_0^h e^{-(h-v)} D dv = sum_{k>=0} D^(k) h^{k+1} phi_{k+1}(h)``.

**UniP-p** (order ``p``) uses the ``p - 1`` previous outputs through the scaled differences
``Delta_m = (D_{i-m} - D_i) / r_m``, ``r_m = (lambda_{i-m} - lambda_i) / h`` (negative)::

    z_{i+1} = e^{-h} z_i + (1 - e^{-h}) D_i + B(h) sum_m a_m Delta_m,

with ``a`` solving ``sum_m a_m r_m^(k-1) = g_k = k! h phi_{k+1}(h) / B(h)`` for ``k = 1..p-1``
(``Delta_m = sum_k D^(k) (r_m h)^k / k! / r_m``: the first ``p - 1`` Taylor terms are matched).
``B(h)`` is any function with ``B(h) = O(h)``: ``bh1`` is ``h``, ``bh2`` is ``1 - e^{-h}``.
Where the system is solved exactly, ``B(h) a`` does not depend on ``B``; the paper's algorithm
instead takes the one-coefficient cases, UniP-2 and UniC-1, with ``a = 1/2`` (``g_1 = 1/2 +
O(h)`` for both variants, so the order is kept), and only there do the variants differ: UniP-2
with ``bh2`` is DPM-Solver++(2M) as published.

**UniC-p** re-does the step once ``D_{i+1} = D(z_{i+1}, sigma_{i+1})`` is known, with the new
point as one more node (``r = 1``) and ``k = 1..p``: order ``p + 1``. ``D_{i+1}`` is the model
call the next step needs anyway, so the corrector costs no evaluation; the output of the
corrected state is not re-evaluated (UniPC's point). The last step is not corrected (its
``D`` is the final denoise, the output). ``order`` is the predictor's order; the first steps use
what the history allows and ``order_limit`` lowers it as for every multistep method
(``multistep.step_orders``, on the ``lambda`` steps).

Both updates are linear in the state and the outputs, so the whole method is one
``multistep.Plan``: the corrector of step ``i - 1`` and the predictor of step ``i`` fold into
``z_{i+1}^pred = e^{-h_i} (z_i^pred + sum_j u_j D_{i-j}) + sum_j v_j D_{i-j}``.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from diffusion_lv import checks
from diffusion_lv.samplers.base import Denoiser
from diffusion_lv.samplers.multistep import (
    LAMBDA_UNIT,
    Plan,
    check_order,
    check_order_limit,
    log_steps,
    padded_levels,
    phi,
    run_concrete,
    select_by_order,
    shifted,
    step_orders,
)

Array = jax.Array
VARIANTS = ("bh1", "bh2")


def _solve(matrix_rows, rhs, xp):
    """Batched solve of small systems given as nested lists of (steps,) arrays."""
    matrix = xp.stack([xp.stack(row, axis=-1) for row in matrix_rows], axis=-2)
    return xp.linalg.solve(matrix, xp.stack(rhs, axis=-1)[..., None])[..., 0]


def unipc_plan(levels, xp=np, *, order: int = 3, variant: str = "bh2",
               order_limit: str = "auto") -> Plan:
    """The UniPC plan (module docstring) for positive levels ``levels``."""
    hs = log_steps(levels, xp)
    n = hs.shape[0]
    lam = -xp.log(padded_levels(levels, xp))  # lam[3 + i] = lambda_i
    r1 = (lam[2:2 + n] - lam[3:3 + n]) / hs
    r2 = (lam[1:1 + n] - lam[3:3 + n]) / hs
    b = hs if variant == "bh1" else -xp.expm1(-hs)
    g = [float(math.factorial(k)) * hs * phi(k + 1, hs, xp) / b for k in (1, 2, 3)]
    decay, m1 = xp.exp(-hs), -xp.expm1(-hs)
    one = xp.ones_like(hs)
    zero = xp.zeros_like(hs)

    # Predictor weights a^p on Delta_1, Delta_2, by order.
    a2_p3 = (g[1] - r1 * g[0]) / (r2 - r1)
    half = 0.5 * one
    predictor = {1: (zero, zero), 2: (half, zero), 3: (g[0] - a2_p3, a2_p3)}
    # Corrector weights a^c on (Delta_1, Delta_2, new point), by order.
    a1_c2 = (g[1] - g[0]) / (r1 - 1.0)
    c3 = _solve([[one, one, one], [r1, r2, one], [r1**2, r2**2, one]], g, xp)
    corrector = {1: (zero, zero, half), 2: (a1_c2, zero, g[0] - a1_c2),
                 3: (c3[:, 0], c3[:, 1], c3[:, 2])}
    rs = (r1, r2)

    v_candidates, u_candidates = [], []
    for p in (1, 2, 3):
        ap = predictor[p]
        # v on (D_i, D_{i-1}, D_{i-2}, D_{i-3}); u (for the next body) on (D_{i+1}, D_i, ...).
        v = [m1 - b * (ap[0] / r1 + ap[1] / r2), b * ap[0] / r1, b * ap[1] / r2, zero]
        ac = corrector[p]
        diff = [(ac[m] - ap[m]) / rs[m] for m in (0, 1)]
        u = [b * ac[2], -b * (ac[2] + diff[0] + diff[1]), b * diff[0], b * diff[1]]
        v_candidates.append(xp.stack([decay, *v], axis=1))
        u_candidates.append(xp.stack([zero, *u], axis=1))
    orders = step_orders(hs, order, order_limit, xp, unit=LAMBDA_UNIT)
    v = select_by_order(orders, v_candidates[:order], xp)
    u = shifted(select_by_order(orders, u_candidates[:order], xp), 1, 0.0, xp)
    weights = decay[:, None] * u[:, 1:] + v[:, 1:]
    coefficients = xp.concatenate([decay[:, None], weights], axis=1)
    return Plan(coefficients, "data", min(order + 1, 4))


def check_unipc(order, variant, order_limit) -> None:
    check_order(order, (1, 2, 3))
    checks.choice("variant", variant, VARIANTS)
    check_order_limit(order_limit)


def sample_unipc(
    denoiser: Denoiser,
    z: Array,
    key: Array,
    sigmas,
    *,
    order: int = 3,
    variant: str = "bh2",
    order_limit: str = "auto",
    trajectory: bool = False,
) -> tuple[Array, dict]:
    """UniPC with the UniC corrector: one model call per level (see module)."""
    del key  # deterministic
    check_unipc(order, variant, order_limit)
    return run_concrete(denoiser, z, None, sigmas, unipc_plan, trajectory, order=order,
                        variant=variant, order_limit=order_limit)
