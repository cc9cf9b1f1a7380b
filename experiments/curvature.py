"""Experiment 4 (paper Section 3.3, Fig. 5): how curved are probability-flow ODE paths in VP,
VE-Karras and rectified-flow coordinates, and when does straightness pay?

One PF-ODE flow, many coordinate systems: in canonical coordinates the path ``z(sigma_ve)`` is
the same for every schedule; a schedule sees it as ``x(t) = alpha(t) z(sigma_ve(t))`` against its
own time ``t``. For one data point (a delta: covariance exactly 0) the VE path is
``z = x0 + (sigma / sigma_max)(z_T - x0)``, a straight line traversed at constant speed in
``sigma``, and so is the RF path in ``s``; the VP path is an arc. For a mixture no coordinate
system is straight.

Measured, per schedule, in its own coordinates and time, on a dense reference path (adaptive
Tsit5, float64; for the delta checked against the closed form):

* ``1 - |x_end - x_start| / length``: geometric curvature of the path in state space (0: line);
* ``max_t |x(t) - chord(t)| / |x_end - x_start|`` with ``chord`` the straight line traversed at
  constant speed in the schedule's time: what one Euler step in that time cannot follow
  (0: Euler is exact with any number of steps);
* Euler error on the PF-ODE in the schedule's own coordinates (``samplers.sample_euler`` with
  ``step_schedule``), at the same ``sigma_ve`` grid for every schedule, against the reference
  end point: RMS over trajectories of ``|z_Euler - z_ref|`` at ``sigma_min``.

On the same grid the Euler steps of VE and RF coincide algebraically (both are
``z' = D + (sigma'/sigma)(z - D)``, DDIM), whatever their curvature numbers say: straightness
pays against VP (exact on a delta) and not between VE and RF.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv import convert
from diffusion_lv.oracle import GaussianMixture
from diffusion_lv.samplers import euler, grids, ode
from diffusion_lv.schedules import SCHEDULES, VEKarras, get_schedule
from experiments import common

CASES = ("point", "mixture")
ROUNDOFF = 1e-10  # errors below this are float64 roundoff of paths of length ~ sigma_max


@functools.partial(jax.jit, static_argnames=("schedule", "sigmas"))
def euler_end(mixture, z, schedule, sigmas):
    """PF-ODE by Euler in ``schedule``'s coordinates over the grid ``sigmas`` (a static tuple)."""
    out, _ = euler.sample_euler(mixture.denoise_ve, z, jax.random.PRNGKey(0), np.asarray(sigmas),
                                c=1.0, step_schedule=schedule)
    return out


@functools.partial(jax.jit, static_argnames=("sigmas", "rtol", "atol"))
def reference_path(mixture, z, sigmas, rtol, atol):
    """The PF-ODE path at every level of ``sigmas`` (a static tuple), start included."""
    _, info = ode.sample_ode(mixture.denoise_ve, z, None, np.asarray(sigmas), rtol=rtol,
                             atol=atol, trajectory=True, max_steps=16384)
    return jnp.concatenate([z[None], info["trajectory"]]), info["num_steps"]


def in_schedule(path_z: np.ndarray, sigmas: np.ndarray, schedule):
    """The canonical path (levels, n, d) as ``x(t)`` in the schedule's coordinates, and ``t``
    (canonical coordinates are VE-Karras: ``t = sigma_ve``, ``alpha = 1``)."""
    x, t = convert.convert_state(jnp.asarray(path_z), jnp.asarray(sigmas), VEKarras(), schedule)
    return np.asarray(x), np.asarray(t)


def curvature(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per trajectory: ``1 - chord / length`` and max deviation from the constant-speed chord."""
    chord = x[-1] - x[0]
    chord_len = np.linalg.norm(chord, axis=-1)
    length = np.linalg.norm(np.diff(x, axis=0), axis=-1).sum(axis=0)
    frac = ((t - t[0]) / (t[-1] - t[0]))[:, None, None]
    deviation = np.linalg.norm(x - (x[0] + frac * chord), axis=-1).max(axis=0)
    return 1.0 - chord_len / length, deviation / chord_len


def run(config, workdir: str) -> dict:
    start_time = time.perf_counter()
    path = common.prepare_workdir(workdir, config)
    for name in config.schedules:
        common.check_choice(name, list(SCHEDULES), "schedule")
    for grid in config.grids:
        grids.check_grid_name(grid)
    schedules = [get_schedule(name) for name in config.schedules]
    lo = max(s.sigma_ve_min for s in schedules)
    hi = min(s.sigma_ve_max for s in schedules)
    if not lo <= config.sigma_min < config.sigma_max <= hi:
        raise ValueError(
            f"need {lo:.4g} <= sigma_min < sigma_max <= {hi:.4g} (the schedules' common safe "
            f"range), got sigma_min={config.sigma_min!r}, sigma_max={config.sigma_max!r}"
        )
    with jax.enable_x64(True):
        results = _measure(config, schedules)
    wall = time.perf_counter() - start_time
    common.write_report(path, "Experiment 4: curvature of PF-ODE paths and Euler error",
                        _report(config, results), wall)
    _figure(path, config, results)
    results["wall_seconds"] = wall
    results.pop("paths")
    common.write_json(path, results)
    return results


def _measure(config, schedules) -> dict:
    ring = common.make_mixture(config.mixture)
    k = ring.num_components
    # The delta as k identical zero-covariance components: the same shapes as the mixture, so
    # both cases share every compiled program.
    point = GaussianMixture.isotropic(np.ones(k), np.repeat(np.asarray(config.point)[None], k, 0),
                                      0.0)
    sigma_max, sigma_min = float(config.sigma_max), float(config.sigma_min)
    dense = tuple(np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), config.dense_levels)))
    z_T = sigma_max * jax.random.normal(common.stream_key(config.seed, 1),
                                        (config.num_trajectories, ring.dim), jnp.float64)
    out = {"paths": {}, "curvature": [], "euler": [], "reference": {}}
    for case, mixture in (("point", point), ("mixture", ring)):
        path_z, num_steps = reference_path(mixture, z_T, dense, config.rtol, config.atol)
        path_z = np.asarray(path_z)
        ref = {"solver_steps": int(num_steps)}
        if case == "point":  # the exact path; the solver is checked against it
            x0 = np.asarray(config.point)
            exact = x0 + (np.asarray(dense) / sigma_max)[:, None, None] * (np.asarray(z_T) - x0)
            ref["max_error_vs_closed_form"] = float(np.abs(path_z - exact).max())
            path_z = exact
        out["reference"][case] = ref
        out["paths"][case] = {}
        for schedule in schedules:
            x, t = in_schedule(path_z, np.asarray(dense), schedule)
            bend, deviation = curvature(x, t)
            out["paths"][case][schedule.name] = x[:, : config.num_plotted]
            out["curvature"].append({
                "case": case, "schedule": schedule.name,
                "one_minus_chord_over_length": common.mean_sd(bend),
                "max_deviation_over_chord": common.mean_sd(deviation),
            })
            for grid in config.grids:
                errors = []
                for steps in config.euler_steps:
                    # In float32 mode: under x64, get_sigmas("uniform_t") writes into a
                    # read-only view of a JAX array (a grids.py issue, reported).
                    with jax.enable_x64(False):
                        sigmas = tuple(grids.get_sigmas(grid, steps + 1, sigma_min, sigma_max,
                                                        config.rho, schedule))
                    end = np.asarray(euler_end(mixture, z_T, schedule, sigmas))
                    errors.append(float(np.sqrt(np.mean(np.sum((end - path_z[-1]) ** 2, -1)))))
                out["euler"].append({"case": case, "schedule": schedule.name, "grid": grid,
                                     "steps": list(config.euler_steps), "rms_error": errors})
    return out


def _report(config, results) -> list[str]:
    intro = (
        f"PF-ODE from sigma_ve = {config.sigma_max:g} to {config.sigma_min:g} (the same range in "
        f"every schedule); {config.num_trajectories} trajectories from one seed ({config.seed}), "
        f"mean ± sd over trajectories. Data: point = one data point at {tuple(config.point)} "
        f"(covariance 0); mixture = {config.mixture.name} ({config.mixture.num_modes} modes). "
        "Reference: adaptive Tsit5 in float64 (rtol = atol = "
        f"{config.rtol:g}); on the point it differs from the closed-form straight line by "
        f"{common.fmt(results['reference']['point']['max_error_vs_closed_form'])} at most."
    )
    header = ["data", "schedule", "1 - chord / length", "max |x(t) - chord(t)| / chord"]
    rows = [[c["case"], c["schedule"], common.fmt_pm(*c["one_minus_chord_over_length"]),
             common.fmt_pm(*c["max_deviation_over_chord"])] for c in results["curvature"]]
    sections = [intro, common.markdown_table(header, rows)]
    euler_header = ["data", "schedule"] + [f"{n}" for n in config.euler_steps]
    for grid in config.grids:
        what = {"karras": f"the same Karras grid in sigma_ve for every schedule (rho = "
                          f"{config.rho:g})",
                "log_snr": "the same grid uniform in log-SNR for every schedule",
                "uniform_t": "each schedule's own grid, uniform in its own time (DDPM-style "
                             "t for VP, sigma for VE, s for RF): different sigma_ve grids"}[grid]
        sections.append(
            f"Euler on the PF-ODE in each schedule's own coordinates and time, {what}: RMS "
            "|z_Euler - z_ref| at sigma_min (canonical coordinates), by number of steps (= NFE; "
            "no final denoise)."
        )
        runs = [e for e in results["euler"] if e["grid"] == grid]
        sections.append(common.markdown_table(
            euler_header,
            [[e["case"], e["schedule"]] + [common.fmt(v) for v in e["rms_error"]] for e in runs]))
        if grid != "uniform_t":
            same = []
            for case in CASES:
                by = {e["schedule"]: np.asarray(e["rms_error"]) for e in runs if e["case"] == case}
                if "ve" not in by or "rf" not in by:
                    continue
                largest = max(by["ve"].max(), by["rf"].max())
                if largest < ROUNDOFF:
                    same.append(f"{case}: both at float64 roundoff (at most {common.fmt(largest)})")
                else:
                    rel = np.max(np.abs(by["ve"] - by["rf"]) / by["ve"])
                    same.append(f"{case}: max |error_VE - error_RF| / error_VE = {common.fmt(rel)}")
            if same:
                sections.append("VE and RF Euler on this grid: " + "; ".join(same) + ".")
    return sections


def _figure(path, config, results) -> None:
    plt = common.pyplot()
    names = list(config.schedules)
    fig, axes = plt.subplots(3, len(names), figsize=(4 * len(names), 12),
                             gridspec_kw={"height_ratios": [1, 1, 0.9]})
    for row, case in enumerate(CASES):
        for col, name in enumerate(names):
            ax = axes[row, col]
            x = results["paths"][case][name]
            for j in range(x.shape[1]):
                ax.plot(x[:, j, 0], x[:, j, 1], lw=0.8)
                ax.plot(*x[0, j], "o", ms=2.5, color="k")
                ax.plot(*x[-1, j], "*", ms=5, color="tab:red")
            ax.set_xlim(-4, 4)
            ax.set_ylim(-4, 4)
            ax.set_aspect("equal")
            bend = next(c for c in results["curvature"] if c["case"] == case
                        and c["schedule"] == name)
            ax.set_title(f"{case}, {name}: 1 - chord/length = "
                         f"{common.fmt(bend['one_minus_chord_over_length'][0], 2)}\n"
                         f"deviation from constant-speed chord = "
                         f"{common.fmt(bend['max_deviation_over_chord'][0], 2)}", fontsize=8)
    panels = [(case, config.grids[0]) for case in CASES] + [("mixture", g)
                                                            for g in config.grids[1:]]
    for col in range(len(names)):
        ax = axes[2, col]
        if col >= len(panels):
            ax.axis("off")
            continue
        case, grid = panels[col]
        for e in results["euler"]:
            if e["case"] == case and e["grid"] == grid:
                style = "--" if e["schedule"] == "rf" else "-o"
                ax.loglog(e["steps"], np.maximum(e["rms_error"], 1e-17), style, ms=3,
                          label=e["schedule"])
        ax.set_xlabel("Euler steps (NFE)")
        ax.set_ylabel("RMS end-point error")
        ax.set_title(f"{case}: Euler error in each schedule's coordinates\n({grid} grid)",
                     fontsize=9)
        ax.legend(fontsize=7)
    fig.subplots_adjust(wspace=0.35, hspace=0.3)
    fig.suptitle("PF-ODE paths in each schedule's own coordinates (black dot: start at "
                 f"sigma_ve={config.sigma_max:g}, outside the frame for VE; red star: end)",
                 fontsize=10)
    common.save_figure(fig, path, "curvature.png")


if __name__ == "__main__":
    common.launch(run, __file__)
