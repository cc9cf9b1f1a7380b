"""Experiment 2 (paper Section 3, Fig. 4, Table 3): a forward step then a reverse step is a
Langevin step, for every schedule and every rate c of the split.

At a fixed time ``t`` of a schedule (forward SDE ``dx = f x dt + g dW``), the forward split
``dx = f x dtau + g dW`` (t -> t + dtau) followed by the reverse split
``dx = (c g^2/2 score - f x) dtau + sqrt(c - 1) g dW`` (t + dtau -> t) is, to first order, the
Langevin step ``dx = c g^2/2 score dtau + sqrt(c) g dW`` that keeps ``p_t``. Both split steps are
``langevin.forward_split_step`` / ``langevin.reverse_split_step`` with the oracle's exact score.

Measured, for schedules vp, ve, rf, linear_vp, cosine_vp and c in {1, 2, 4}:

1. Distribution: start from exact samples of ``p_t`` and apply ``num_steps`` composed steps (t
   returns to the same value after each); the sliced Wasserstein distance (SWD) of the result to
   a fresh exact sample of ``p_t`` (canonical coordinates ``z = x / alpha``, so every schedule is
   compared with the same law) is at the Monte Carlo floor, as is ``num_steps`` plain Langevin
   steps (``langevin.split_langevin_step``). Every composed step has the same Langevin step
   ``h`` in canonical units, ``dtau = 2 alpha^2 h / (c g^2)``. A control with a wrong reverse split
   (its ``-f x`` term dropped, a mistake invisible for VE where ``f = 0``) shows the measurement
   detects an error of this kind.
2. One-step algebra (float64, common random numbers: the Langevin noise is
   ``(xi_1 + sqrt(c - 1) xi_2) / sqrt(c)`` from the forward and reverse noises): the composed step
   minus the Langevin step is ``O(dtau^{3/2})`` per sample (coefficients and score are evaluated
   ``dtau`` later and ``O(dtau^{1/2})`` away), against ``O(dtau^{1/2})`` for the step itself: the
   fitted log-log slope of the RMS difference is 1.5; the control's is 1.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv import langevin
from diffusion_lv.schedules import SCHEDULES, expand_to, get_schedule
from experiments import common

VARIANTS = ("split", "langevin", "control")
CONTROL = ("vp", 2.0)  # (schedule, c) of the control row


def step_size(schedule, t, c, langevin_step):
    """``dtau`` such that the Langevin step is ``langevin_step`` in canonical coordinates."""
    return 2.0 * jnp.square(schedule.alpha(t)) * langevin_step / (c * schedule.g2(t))


def composed_step(mixture, schedule, x, t, dtau, key, c, drop_fx=False):
    """Forward split step ``t -> t + dtau``, then reverse split step back to ``t``."""
    score = lambda u, s: mixture.score(u, s, schedule)
    k_forward, k_reverse = jax.random.split(key)
    x1, t1 = langevin.forward_split_step(schedule, x, t, dtau, k_forward)
    x2, _ = langevin.reverse_split_step(schedule, score, x1, t1, dtau, k_reverse, c)
    if drop_fx:  # the control: a reverse split without its -f x term
        x2 = x2 + expand_to(schedule.f(t1), x1) * x1 * dtau
    return x2


@functools.partial(jax.jit, static_argnames=("schedule", "variant", "num_steps"))
def run_chains(mixture, schedule, z, keys, t, c, langevin_step, variant, num_steps):
    """``num_steps`` steps of ``variant`` from canonical states ``z`` (chains, n, d), rates ``c``
    (chains,); returns canonical states."""

    def one_chain(z, key, c):
        alpha = schedule.alpha(t)
        dtau = step_size(schedule, t, c, langevin_step)
        score = lambda u, s: mixture.score(u, s, schedule)

        def body(i, x):
            k = jax.random.fold_in(key, i)
            if variant == "langevin":
                return langevin.split_langevin_step(schedule, score, x, t, dtau, k, c)
            return composed_step(mixture, schedule, x, t, dtau, k, c, variant == "control")

        return jax.lax.fori_loop(0, num_steps, body, z * alpha) / alpha

    return jax.vmap(one_chain)(z, keys, c)


@functools.partial(jax.jit, static_argnames=("schedule", "drop_fx"))
def one_step_difference(mixture, schedule, x, key, t, c, langevin_step, drop_fx=False):
    """RMS of (composed step - Langevin step) and of the Langevin increment, common noise."""
    dtau = step_size(schedule, t, c, langevin_step)
    composed = composed_step(mixture, schedule, x, t, dtau, key, c, drop_fx)
    # The noises the two split steps drew (langevin.py draws normal(key, x.shape, x.dtype)).
    k_forward, k_reverse = jax.random.split(key)
    xi_1 = jax.random.normal(k_forward, x.shape, x.dtype)
    xi_2 = jax.random.normal(k_reverse, x.shape, x.dtype)
    noise = (xi_1 + jnp.sqrt(c - 1.0) * xi_2) / jnp.sqrt(c)
    # langevin.split_langevin_step with this noise (it draws its own):
    g2 = schedule.g2(t)
    step = 0.5 * c * g2 * mixture.score(x, t, schedule) * dtau + jnp.sqrt(c * g2 * dtau) * noise
    rms = lambda a: jnp.sqrt(jnp.mean(jnp.sum(jnp.square(a), axis=-1)))
    return rms(composed - (x + step)), rms(step)


def run(config, workdir: str) -> dict:
    start_time = time.perf_counter()
    path = common.prepare_workdir(workdir, config)
    for name in config.schedules:
        common.check_choice(name, list(SCHEDULES), "schedule")
    for c in config.rates:
        if not c >= 1.0:
            raise ValueError(f"rates must be >= 1 (1: ODE, 2: reverse SDE), got c={c!r}")
    mixture = common.make_mixture(config.mixture)
    sigma_ve = float(config.sigma_ve)
    n, seeds = config.num_samples, [config.seed + i for i in range(config.num_seeds)]
    floor = np.asarray(common.marginal_floor(
        mixture, sigma_ve, n, common.stream_key(config.seed, 0), config.floor_draws,
        config.num_projections))[0]
    z0 = jnp.stack([common.canonical_marginal(mixture, common.stream_key(s, 1), n, sigma_ve)
                    for s in seeds])

    def distances(z, label):
        keys = jnp.stack([common.stream_key(s, 3, label) for s in seeds])
        return np.asarray(
            common.swd_to_marginal(mixture, z, keys, sigma_ve, config.num_projections))

    rates = jnp.asarray(config.rates, jnp.float32)
    rows = []  # (schedule, c, dtau, split SWDs, langevin SWDs)
    label = 0
    for si, name in enumerate(config.schedules):
        schedule = get_schedule(name)
        t = schedule.t_from_sigma_ve(jnp.float32(sigma_ve))
        out = {}
        for variant in ("split", "langevin"):
            # All rates and seeds in one program: (rates * seeds, n, d).
            zs = jnp.repeat(z0[None], len(config.rates), 0).reshape((-1,) + z0.shape[1:])
            cs = jnp.repeat(rates, len(seeds))
            keys = jnp.stack([common.stream_key(s, 2, si, ci, VARIANTS.index(variant))
                              for ci in range(len(config.rates)) for s in seeds])
            out[variant] = run_chains(mixture, schedule, zs, keys, t, cs, config.langevin_step,
                                      variant, config.num_steps).reshape(
                                          (len(config.rates), len(seeds)) + z0.shape[1:])
        for ci, c in enumerate(config.rates):
            dtau = float(step_size(schedule, t, c, config.langevin_step))
            label += 1
            rows.append((name, c, dtau, distances(out["split"][ci], label),
                         distances(out["langevin"][ci], label + 1000)))
    control_schedule = get_schedule(CONTROL[0])
    t_control = control_schedule.t_from_sigma_ve(jnp.float32(sigma_ve))
    keys = jnp.stack([common.stream_key(s, 2, 99) for s in seeds])
    control_z = run_chains(mixture, control_schedule, z0, keys, t_control,
                           jnp.full((len(seeds),), CONTROL[1], jnp.float32),
                           config.langevin_step, "control", config.num_steps)
    control = distances(control_z, 5000)

    algebra = _one_step_algebra(config)
    results = {
        "floor": common.mean_sd(floor),
        "rows": [
            {"schedule": s, "c": c, "dtau": d, "split": sp, "langevin": lv}
            for s, c, d, sp, lv in rows
        ],
        "control": {"schedule": CONTROL[0], "c": CONTROL[1], "swd": control},
        "algebra": algebra,
    }
    wall = time.perf_counter() - start_time
    common.write_report(path, "Experiment 2: forward step + reverse step = Langevin step",
                        _report(config, results, floor), wall)
    _figure(path, config, results)
    results["wall_seconds"] = wall
    common.write_json(path, results)
    return results


def _one_step_algebra(config) -> list[dict]:
    """RMS (composed - Langevin) at Langevin steps h_max / 4^k, and the fitted log-log slope."""
    hs = config.algebra_h_max / 4.0 ** np.arange(config.algebra_levels)
    out = []
    with jax.enable_x64(True):
        mixture = common.make_mixture(config.mixture)
        x_ve = common.canonical_marginal(mixture, common.stream_key(config.seed, 7),
                                         config.algebra_samples, float(config.sigma_ve))
        cases = [(name, c, False) for name in config.schedules for c in config.rates]
        cases.append((CONTROL[0], CONTROL[1], True))
        for name, c, drop_fx in cases:
            schedule = get_schedule(name)
            t = schedule.t_from_sigma_ve(jnp.float64(config.sigma_ve))
            x = x_ve * schedule.alpha(t)
            diffs, steps = [], []
            for k, h in enumerate(hs):
                key = common.stream_key(config.seed, 8, k)
                d, s = one_step_difference(mixture, schedule, x, key, t, jnp.float64(c),
                                           jnp.float64(h), drop_fx)
                diffs.append(float(d))
                steps.append(float(s))
            slope = float(np.polyfit(np.log(hs), np.log(diffs), 1)[0])
            out.append({"schedule": name, "c": c, "control": drop_fx, "h": hs,
                        "rms_difference": np.array(diffs), "rms_step": np.array(steps),
                        "slope": slope})
    return out


def _report(config, results, floor) -> list[str]:
    floor_mean, floor_sd = results["floor"]
    intro = (
        f"p_t: {config.mixture.name} mixture at sigma_ve = {config.sigma_ve:g} (canonical "
        f"coordinates); {config.num_steps} steps of Langevin step h = {config.langevin_step:g} "
        f"(canonical units, total Langevin time {config.num_steps * config.langevin_step:g}); "
        f"{config.num_samples} samples; seeds {config.seed}..{config.seed + config.num_seeds - 1} "
        f"(mean ± sd over seeds); {config.num_projections} projections.\n\n"
        f"Monte Carlo floor (SWD between two exact samples of p_t, {len(floor)} draws): "
        f"{common.fmt_pm(floor_mean, floor_sd)}."
    )
    header = ["schedule", "c", "dtau (own time)", "SWD, forward+reverse", "SWD, Langevin",
              "split / floor"]
    rows = []
    for r in results["rows"]:
        split_mean, split_sd = common.mean_sd(r["split"])
        rows.append([r["schedule"], f"{r['c']:g}", common.fmt(r["dtau"]),
                     common.fmt_pm(split_mean, split_sd),
                     common.fmt_pm(*common.mean_sd(r["langevin"])),
                     common.fmt(split_mean / floor_mean)])
    ctrl = results["control"]
    ctrl_mean, ctrl_sd = common.mean_sd(ctrl["swd"])
    rows.append([f"{ctrl['schedule']} (control: reverse without -f x)", f"{ctrl['c']:g}", "",
                 common.fmt_pm(ctrl_mean, ctrl_sd), "", common.fmt(ctrl_mean / floor_mean)])
    algebra_header = ["schedule", "c", "rel. diff at h_max", "rel. diff at h_min",
                      "slope of RMS diff vs h (expect 1.5)"]
    algebra_rows = []
    for a in results["algebra"]:
        rel = a["rms_difference"] / a["rms_step"]
        name = a["schedule"] + (" (control: reverse without -f x, expect 1)" if a["control"]
                                else "")
        algebra_rows.append([name, f"{a['c']:g}", common.fmt(rel[0]), common.fmt(rel[-1]),
                             f"{a['slope']:.3f}"])
    hs = results["algebra"][0]["h"]
    algebra_intro = (
        "One-step algebra (float64, common random numbers, "
        f"{config.algebra_samples} samples of p_t): RMS of (forward+reverse step - Langevin "
        "step) relative to the RMS Langevin increment, at canonical Langevin steps "
        f"h = {common.fmt(hs[0])} ... {common.fmt(hs[-1])} (factors of 4); the difference is "
        "O(h^1.5) per sample, the increment O(h^0.5)."
    )
    return [intro, common.markdown_table(header, rows), algebra_intro,
            common.markdown_table(algebra_header, algebra_rows)]


def _figure(path, config, results) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    floor_mean, floor_sd = results["floor"]
    ax.axhspan(floor_mean - 2 * floor_sd, floor_mean + 2 * floor_sd, color="0.85",
               label="floor ± 2 sd")
    labels = [f"{r['schedule']} c={r['c']:g}" for r in results["rows"]]
    xs = np.arange(len(labels))
    for offset, key, color, name in ((-0.15, "split", "tab:blue", "forward + reverse split"),
                                     (0.15, "langevin", "tab:orange", "Langevin step")):
        m = np.array([common.mean_sd(r[key])[0] for r in results["rows"]])
        s = np.array([common.mean_sd(r[key])[1] for r in results["rows"]])
        ax.errorbar(xs + offset, m, yerr=s, fmt="o", color=color, label=name, ms=4)
    ctrl = results["control"]
    ax.errorbar([len(labels)], [common.mean_sd(ctrl["swd"])[0]],
                yerr=[common.mean_sd(ctrl["swd"])[1]], fmt="s", color="tab:red",
                label="control: reverse without -f x")
    ax.set_xticks(list(xs) + [len(labels)], labels + [f"{ctrl['schedule']} control"],
                  fontsize=7, rotation=90)
    ax.set_yscale("log")
    ax.set_ylabel(f"SWD to p_t after {config.num_steps} steps")
    ax.set_title(f"composed steps keep p_t (sigma_ve = {config.sigma_ve:g})")
    ax.legend(fontsize=7)
    ax = axes[1]
    for a in results["algebra"]:
        style = "k--" if a["control"] else "-"
        label = f"{a['schedule']} c={a['c']:g}" + (" control" if a["control"] else "")
        ax.loglog(a["h"], a["rms_difference"] / a["rms_step"], style, lw=1.2 if a["control"]
                  else 0.8, label=label, alpha=1.0 if a["control"] else 0.7)
    hs = results["algebra"][0]["h"]
    ax.set_xlabel("Langevin step h (canonical units)")
    ax.set_ylabel("RMS(composed - Langevin) / RMS(Langevin increment)")
    ax.set_title("one step: composed - Langevin is O(h^1.5)\n(relative O(h); control O(h^0.5))",
                 fontsize=10)
    ax.legend(fontsize=5, ncol=2)
    ax.set_xlim(hs[-1] * 0.8, hs[0] * 1.25)
    common.save_figure(fig, path, "split.png")


if __name__ == "__main__":
    common.launch(run, __file__)
