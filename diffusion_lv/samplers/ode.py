"""Adaptive probability-flow ODE solve with diffrax: the reference every fixed-step solver meets.

In VE coordinates the PF-ODE is ``dz/dsigma = (z - D(z, sigma)) / sigma``; in ``u = log sigma``
it is ``dz/du = z - D(z, e^u)``, smooth over the many decades of noise levels a grid spans. It is
solved from ``log sigma_max`` to ``log sigma_min`` by an embedded Runge-Kutta pair (default
Tsit5) with a PID step-size controller (``rtol``, ``atol``), inside jit.
``info["nfe"]`` is traced here (the step count is adaptive): ``1 + stages * steps`` with
``stages = 6`` new evaluations per attempted Tsit5/Dopri5 step (first-same-as-last), plus the
final denoise.
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv import checks
from diffusion_lv.samplers.base import Denoiser, check_sigmas, denoise

Array = jax.Array

# name -> (solver, new evaluations per attempted step)
SOLVERS = {
    "tsit5": (diffrax.Tsit5, 6),
    "dopri5": (diffrax.Dopri5, 6),
    "dopri8": (diffrax.Dopri8, 12),
}


def check_ode(rtol, atol, ode_solver, max_steps) -> None:
    checks.number("rtol", rtol, lo=0.0, lo_open=True)
    checks.number("atol", atol, lo=0.0, lo_open=True)
    checks.choice("ode_solver", ode_solver, SOLVERS)
    checks.number("max_steps", max_steps, lo=1, integer=True)


def sample_ode(
    denoiser: Denoiser,
    z: Array,
    key: Array,
    sigmas,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    ode_solver: str = "tsit5",
    max_steps: int = 4096,
    trajectory: bool = False,
) -> tuple[Array, dict]:
    """Solve the PF-ODE from ``sigmas[0]`` to the last positive level (then final denoise)."""
    del key  # deterministic
    check_ode(rtol, atol, ode_solver, max_steps)
    levels, final_denoise = check_sigmas(sigmas)
    u0, u1 = float(np.log(levels[0])), float(np.log(levels[-1]))
    solver_cls, stages = SOLVERS[ode_solver]

    def vector_field(u, z, args):
        return z - denoise(denoiser, z, jnp.exp(u))

    saveat = (
        diffrax.SaveAt(ts=jnp.asarray(np.log(levels[1:]), z.dtype))
        if trajectory
        else diffrax.SaveAt(t1=True)
    )
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        solver_cls(),
        t0=u0,
        t1=u1,
        dt0=(u1 - u0) / 64.0,
        y0=z,
        saveat=saveat,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
    )
    z = solution.ys[-1]
    nfe = 1 + stages * solution.stats["num_steps"]
    if final_denoise:
        z = denoise(denoiser, z, levels[-1])
        nfe = nfe + 1
    info = {"nfe": nfe, "sigmas": levels, "num_steps": solution.stats["num_steps"]}
    if trajectory:
        info["trajectory"] = solution.ys
    return z, info
