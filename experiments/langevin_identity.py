"""Experiment 1 (paper Section 2, Fig. 1): Langevin dynamics with the exact score is the identity.

Langevin dynamics ``dx = score(x) dtau + sqrt(2) dW`` with ``score = grad log p`` leaves ``p``
invariant and forgets where it started. On a 2-D Gaussian mixture ``p`` with the oracle's exact
score, chains are started (a) from exact samples of ``p``: the distance to ``p`` should stay at
the Monte Carlo floor while the samples themselves decorrelate; (b) from wrong starts (all mass in
one mode; a narrow blob away from the data): the distance should fall to the floor.

Measured: sliced Wasserstein distance (SWD) of the chain's samples to a fresh exact sample of
``p`` at ``num_checkpoints`` Langevin times, for each start, step size and seed; the floor is the
SWD between two exact samples of the same size (mean and sd over ``floor_draws``). Euler-Maruyama
at step ``h`` is stationary at ``p`` only as ``h -> 0``: for a Gaussian of variance ``s^2`` its
stationary variance is ``s^2 / (1 - h / (2 s^2))``, so the largest step shows a visible bias.
Decorrelation of the "data" start: ``E||x_tau - x_0||^2 / (2 tr Cov p)``, 1 for independent draws.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv import langevin
from experiments import common

STARTS = ("data", "one_mode", "offset")


def initial_states(mixture, start: str, n: int, key, offset) -> jax.Array:
    """``n`` starting points of kind ``start``."""
    if start == "data":
        return mixture.sample(key, n)
    if start == "one_mode":
        noise = jax.random.normal(key, (n, mixture.dim), mixture.means.dtype)
        return mixture.means[0] + noise * jnp.sqrt(mixture.eigvals[0])
    return jnp.asarray(offset, mixture.means.dtype) + 0.1 * jax.random.normal(
        key, (n, mixture.dim), mixture.means.dtype
    )


@functools.partial(jax.jit, static_argnames=("steps_per_checkpoint", "num_checkpoints"))
def langevin_checkpoints(mixture, x, key, step_size, steps_per_checkpoint, num_checkpoints):
    """States after each of ``num_checkpoints`` blocks of Langevin steps: (checkpoints, *x)."""
    score = lambda u: mixture.score_ve(u, 0.0)  # sigma_ve = 0: the score of p itself

    def block(x, i):
        x = langevin.langevin(score, x, jax.random.fold_in(key, i), step_size, steps_per_checkpoint)
        return x, x

    _, path = jax.lax.scan(block, x, jnp.arange(num_checkpoints))
    return path


def run(config, workdir: str) -> dict:
    start_time = time.perf_counter()
    path = common.prepare_workdir(workdir, config)
    for start in config.starts:
        common.check_choice(start, STARTS, "start")
    for h in config.step_sizes:
        if not h > 0:
            raise ValueError(f"step_sizes must be positive, got {h!r}")
    mixture = common.make_mixture(config.mixture)
    n, num_ckpt = config.num_samples, config.num_checkpoints
    seeds = [config.seed + i for i in range(config.num_seeds)]
    block_time = config.langevin_time / num_ckpt
    times = block_time * np.arange(num_ckpt + 1)

    floor = np.asarray(common.marginal_floor(
        mixture, 0.0, n, common.stream_key(config.seed, 0), config.floor_draws,
        config.num_projections))[0]
    # distances[h][start]: (seeds, checkpoints + 1); first column is tau = 0.
    distances, decorrelation, snapshots = {}, {}, {}
    total_var = float(jnp.trace(mixture.covariance()))
    for hi, h in enumerate(config.step_sizes):
        steps = max(1, round(block_time / h))
        h_used = block_time / steps
        distances[h] = {}
        for si, start in enumerate(config.starts):
            rows, decor = [], []
            for seed in seeds:
                x0 = initial_states(mixture, start, n, common.stream_key(seed, 1, si),
                                    config.offset)
                x0_copy = np.asarray(x0)
                key = common.stream_key(seed, 2, hi, si)
                chain = langevin_checkpoints(mixture, x0, key, h_used, steps, num_ckpt)
                full = jnp.concatenate([jnp.asarray(x0_copy)[None], chain])
                keys = jax.random.split(common.stream_key(seed, 3, hi, si), full.shape[0])
                rows.append(np.asarray(
                    common.swd_to_marginal(mixture, full, keys, 0.0, config.num_projections)))
                if start == "data":
                    moved = np.mean(np.sum((np.asarray(chain[-1]) - x0_copy) ** 2, axis=-1))
                    decor.append(moved / (2.0 * total_var))
                if hi == len(config.step_sizes) - 1 and seed == seeds[0]:
                    snapshots[start] = (x0_copy, np.asarray(chain[num_ckpt // 8]),
                                        np.asarray(chain[-1]))
            distances[h][start] = np.stack(rows)
            if decor:
                decorrelation[h] = common.mean_sd(decor)

    results = {
        "floor": common.mean_sd(floor),
        "times": times,
        "distances": {f"{h:g}": {s: d for s, d in v.items()} for h, v in distances.items()},
        "decorrelation": {f"{h:g}": v for h, v in decorrelation.items()},
    }
    wall = time.perf_counter() - start_time
    common.write_report(path, "Experiment 1: Langevin dynamics is the identity on p",
                        _report(config, mixture, results, floor), wall)
    _figure(path, config, mixture, results, snapshots)
    results["wall_seconds"] = wall
    common.write_json(path, results)
    return results


def _report(config, mixture, results, floor) -> list[str]:
    floor_mean, floor_sd = results["floor"]
    header = ["start", "step h", "SWD at tau=0", f"SWD at tau={config.langevin_time:g}",
              "end / floor", "E|x_tau - x_0|^2 / (2 tr Cov)"]
    rows = []
    for h, per_start in results["distances"].items():
        for start, d in per_start.items():
            end_mean, end_sd = common.mean_sd(d[:, -1])
            decor = results["decorrelation"].get(h) if start == "data" else None
            rows.append([
                start, h, common.fmt_pm(*common.mean_sd(d[:, 0])), common.fmt_pm(end_mean, end_sd),
                common.fmt(end_mean / floor_mean), common.fmt_pm(*decor) if decor else "",
            ])
    sigma2 = float(jnp.min(mixture.eigvals))
    bias = {h: math.sqrt(sigma2) * (1.0 / math.sqrt(1.0 - float(h) / (2 * sigma2)) - 1.0)
            for h in results["distances"]}
    intro = (
        f"p: {config.mixture.name} mixture ({mixture.num_components} modes, dim "
        f"{mixture.dim}); {config.num_samples} chains per start; Langevin time "
        f"{config.langevin_time:g}; seeds {config.seed}..{config.seed + config.num_seeds - 1} "
        f"(mean ± sd over seeds); {config.num_projections} projections.\n\n"
        f"Monte Carlo floor (SWD between two exact samples of p, {len(floor)} draws): "
        f"{common.fmt_pm(*results['floor'])} (mean ± sd; mean + 2 sd = "
        f"{common.fmt(floor_mean + 2 * floor_sd)}). A sample of p has an SWD distributed like "
        "the floor."
    )
    note = (
        "Discretisation: per-mode std bias of Euler-Maruyama for a Gaussian mode, "
        "s (1/sqrt(1 - h/(2 s^2)) - 1): "
        + ", ".join(f"h={h}: {common.fmt(b)}" for h, b in bias.items())
        + ". The last column is 1 for independent draws of p."
    )
    return [intro, common.markdown_table(header, rows), note]


def _figure(path, config, mixture, results, snapshots) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    ax = axes[0]
    floor_mean, floor_sd = results["floor"]
    times = results["times"]
    ax.axhspan(floor_mean - 2 * floor_sd, floor_mean + 2 * floor_sd, color="0.85",
               label="floor ± 2 sd")
    colors = {"data": "tab:green", "one_mode": "tab:red", "offset": "tab:blue"}
    styles = ["--", "-", ":"]
    for (h, per_start), style in zip(results["distances"].items(), styles, strict=False):
        for start, d in per_start.items():
            ax.plot(times, d.mean(0), style, color=colors[start], label=f"{start}, h={h}")
    ax.set_yscale("log")
    ax.set_xlabel("Langevin time tau")
    ax.set_ylabel("sliced Wasserstein distance to p")
    ax.set_title("distance to p over Langevin time (mean over seeds)")
    ax.legend(fontsize=7)
    ax = axes[1]
    x0, mid, end = snapshots.get("one_mode", next(iter(snapshots.values())))
    labels = ("tau=0", f"tau={times[config.num_checkpoints // 8 + 1]:g}",
              f"tau={times[-1]:g}")
    for pts, color, label in zip((x0, mid, end), ("tab:red", "tab:orange", "tab:blue"), labels,
                                 strict=True):
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.4, color=color, label=label,
                   linewidths=0)
    means = np.asarray(mixture.means)
    ax.scatter(means[:, 0], means[:, 1], marker="x", color="k", s=6, label="mode centres")
    ax.set_aspect("equal")
    ax.set_title("chains started in one mode spread to all modes")
    ax.legend(fontsize=7, markerscale=4)
    common.save_figure(fig, path, "langevin_identity.png")


if __name__ == "__main__":
    common.launch(run, __file__)
