"""Experiment 3 (paper Section 4, Figs. 6-7): the reverse process is the dual of the forward one.

With ``q_0 = p_T`` (eq. 10), the reverse split run for reverse time ``t'`` has the forward
marginal ``q_{t'} = p_{T - t'}`` (eq. 11), for the ODE split (c = 1) and the SDE split (c = 2)
alike: each reverse step undoes a forward step because together they are a Langevin step.

Measured: the reverse split is integrated by Euler(-Maruyama) in each schedule's own coordinates
and time (``samplers.sample_euler`` with ``step_schedule`` = the schedule, the oracle's exact
denoiser, steps uniform in the schedule's time). At canonical noise levels ``sigma_ve``
(``config.levels``; the first is ``T``) the samples, in canonical coordinates ``z = x / alpha``,
are compared with fresh exact samples of ``p`` at that level by sliced Wasserstein distance
(SWD), next to the Monte Carlo floor at that level (two exact samples). Starts: ``exact``
(``q_0 = p_T``) and ``prior`` (the Gaussian ``N(0, sigma_ve(T)^2 I)`` that ``p_T`` approaches only
as ``T`` grows). The ODE flow is a bijection, so ``KL(q_{t'} || p_{T-t'})`` stays at its initial
value along it; the SDE split contracts it (eq. 17 applied in reverse), so a prior mismatch fades
under c = 2 and persists under c = 1.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv.samplers import euler, grids
from diffusion_lv.schedules import SCHEDULES, get_schedule
from experiments import common

STARTS = ("exact", "prior")


def reverse_grid(schedule, levels, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Decreasing ``sigma_ve`` grid through ``levels``, uniform in the schedule's time between
    consecutive levels, ``~num_steps`` steps in all; and the grid index of every level."""
    with jax.ensure_compile_time_eval():
        times = np.array([float(schedule.t_from_sigma_ve(jnp.asarray(s))) for s in levels])
    lengths = -np.diff(times)
    counts = np.maximum(1, np.round(num_steps * lengths / lengths.sum()).astype(int))
    pieces = [np.array([levels[0]], np.float64)]
    for hi, lo, count in zip(levels[:-1], levels[1:], counts, strict=True):
        pieces.append(grids.uniform_t_sigmas(count + 1, lo, hi, schedule)[1:])
    sigmas = np.concatenate(pieces)
    sigmas[np.concatenate([[0], np.cumsum(counts)])] = levels  # pin the levels exactly
    return sigmas, np.concatenate([[0], np.cumsum(counts)])


def make_reverse(mixture, schedule, c: float, sigmas: np.ndarray, checkpoints: np.ndarray):
    """A compiled ``(z_T, key) -> z at every checkpoint level`` (canonical coordinates)."""

    @jax.jit
    def reverse(z, key):
        _, info = euler.sample_euler(mixture.denoise_ve, z, key, sigmas, c=c,
                                     step_schedule=schedule, trajectory=True)
        # trajectory[i] is z at sigmas[i + 1].
        return jnp.concatenate([z[None], info["trajectory"][checkpoints[1:] - 1]])

    return reverse


def run(config, workdir: str) -> dict:
    start_time = time.perf_counter()
    path = common.prepare_workdir(workdir, config)
    for name in config.schedules:
        common.check_choice(name, list(SCHEDULES), "schedule")
    for start in config.starts:
        common.check_choice(start, STARTS, "start")
    levels = np.asarray(config.levels, np.float64)
    if levels.ndim != 1 or len(levels) < 2 or np.any(np.diff(levels) >= 0) or levels[-1] <= 0:
        raise ValueError(f"levels must be positive and strictly decreasing, got {levels}")
    for c in config.rates:
        if not c >= 1.0:
            raise ValueError(f"rates must be >= 1 (1: ODE, 2: reverse SDE), got c={c!r}")
    mixture = common.make_mixture(config.mixture)
    n, seeds = config.num_samples, [config.seed + i for i in range(config.num_seeds)]
    floor = np.asarray(common.marginal_floor(
        mixture, jnp.asarray(levels, jnp.float32), n, common.stream_key(config.seed, 0),
        config.floor_draws, config.num_projections))  # (levels, draws)

    def initial(start, seed):
        key = common.stream_key(seed, 1)
        if start == "exact":
            return common.canonical_marginal(mixture, key, n, float(levels[0]))
        return float(levels[0]) * jax.random.normal(key, (n, mixture.dim))

    runs, snapshots = [], {}
    for si, name in enumerate(config.schedules):
        schedule = get_schedule(name)
        sigmas, checkpoints = reverse_grid(schedule, levels, config.num_steps)
        for ci, c in enumerate(config.rates):
            reverse = make_reverse(mixture, schedule, float(c), sigmas, checkpoints)
            for start in config.starts:
                swd = []
                for seed in seeds:
                    path_z = reverse(initial(start, seed), common.stream_key(seed, 2, si, ci))
                    keys = jax.random.split(common.stream_key(seed, 3, si, ci), len(levels))
                    swd.append(np.asarray(common.swd_to_marginal(
                        mixture, path_z, keys, jnp.asarray(levels, jnp.float32),
                        config.num_projections)))
                    if seed == seeds[0] and start == "exact":
                        snapshots[(name, c)] = np.asarray(path_z)
                runs.append({"schedule": name, "c": float(c), "start": start,
                             "steps": len(sigmas) - 1, "swd": np.stack(swd)})
    forward = np.stack([
        np.asarray(common.canonical_marginal(mixture, common.stream_key(config.seed, 4, i),
                                             n, float(s)))
        for i, s in enumerate(levels)
    ])
    results = {"levels": levels, "floor": floor, "runs": runs}
    wall = time.perf_counter() - start_time
    common.write_report(path, "Experiment 3: forward-reverse duality, q_{t'} = p_{T-t'}",
                        _report(config, results), wall)
    _figure(path, config, results, snapshots, forward)
    results["wall_seconds"] = wall
    common.write_json(path, results)
    return results


def _report(config, results) -> list[str]:
    levels, floor = results["levels"], results["floor"]
    intro = (
        f"p: {config.mixture.name} mixture; T at sigma_ve = {levels[0]:g}; reverse split by "
        f"Euler(-Maruyama) in each schedule's own coordinates, ~{config.num_steps} steps "
        f"uniform in its own time; {config.num_samples} samples; seeds "
        f"{config.seed}..{config.seed + config.num_seeds - 1} (mean ± sd over seeds); "
        f"{config.num_projections} projections. Columns: SWD between q_{{t'}} and p_{{T-t'}} "
        "at the canonical level sigma_ve of T - t' (the same law for every schedule; first "
        "column t' = 0)."
    )
    header = ["schedule", "c", "start"] + [f"sigma_ve={s:g}" for s in levels]
    rows = [["floor (2 exact samples)", "", ""]
            + [common.fmt_pm(*common.mean_sd(f)) for f in floor]]
    for r in results["runs"]:
        rows.append([r["schedule"], f"{r['c']:g}", r["start"]]
                    + [common.fmt_pm(*common.mean_sd(r["swd"][:, j])) for j in range(len(levels))])
    ratio_header = ["schedule", "c", "start", "t' = 0: SWD / floor",
                    "t' > 0: mean over levels of SWD / floor", "end: SWD / floor"]
    floor_mean = floor.mean(axis=1)
    ratio_rows = []
    for r in results["runs"]:
        ratios = r["swd"].mean(axis=0) / floor_mean
        ratio_rows.append([r["schedule"], f"{r['c']:g}", r["start"], common.fmt(ratios[0]),
                           common.fmt(ratios[1:].mean()), common.fmt(ratios[-1])])
    return [intro, common.markdown_table(header, rows), common.markdown_table(ratio_header,
                                                                              ratio_rows)]


def _figure(path, config, results, snapshots, forward) -> None:
    plt = common.pyplot()
    levels = results["levels"]
    floor_mean = results["floor"].mean(axis=1)
    floor_sd = results["floor"].std(axis=1, ddof=1)
    show = [0, len(levels) // 3, 2 * len(levels) // 3, len(levels) - 1]
    key = (config.schedules[0], float(config.rates[-1]))
    fig = plt.figure(figsize=(14, 5.5))
    grid = fig.add_gridspec(2, len(show) + 1, width_ratios=[1] * len(show) + [2.6],
                            wspace=0.3, hspace=0.3)
    for col, j in enumerate(show):
        lim = 2.5 + 2.5 * float(levels[j])
        for row, (pts, name, color) in enumerate(
            ((forward[j], "forward p", "tab:green"), (snapshots[key][j], "reverse q", "tab:blue"))
        ):
            ax = fig.add_subplot(grid[row, col])
            ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4, color=color, linewidths=0)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.tick_params(labelsize=6)
            ax.set_title(f"{name}, sigma_ve={levels[j]:g}", fontsize=8)
    ax = fig.add_subplot(grid[:, -1])
    ax.fill_between(levels, 1 - 2 * floor_sd / floor_mean, 1 + 2 * floor_sd / floor_mean,
                    color="0.85", label="floor ± 2 sd")
    colors = dict(zip(config.schedules, ("tab:blue", "tab:orange", "tab:green", "tab:red",
                                         "tab:purple"), strict=False))
    for r in results["runs"]:
        style = ("-" if r["c"] == 1.0 else "--") + ("o" if r["start"] == "exact" else "x")
        ax.plot(levels, r["swd"].mean(axis=0) / floor_mean, style, color=colors[r["schedule"]],
                ms=4, label=f"{r['schedule']} c={r['c']:g} {r['start']}")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("sigma_ve of T - t' (reverse time runs to the right)")
    ax.set_ylabel("SWD(q_t', p_{T-t'}) / floor mean")
    ax.set_title("reverse marginals against forward marginals (mean over seeds)", fontsize=10)
    ax.legend(fontsize=6, ncol=2)
    fig.suptitle(f"{key[0]}, c={key[1]:g}, start q_0 = p_T: forward samples (top) and reverse "
                 "samples (bottom) at the same noise level", fontsize=10, x=0.35)
    common.save_figure(fig, path, "duality.png")


if __name__ == "__main__":
    common.launch(run, __file__)
