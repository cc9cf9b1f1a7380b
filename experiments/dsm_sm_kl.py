"""Experiment 7 (paper Appendix A.4 and eq. 17): denoising score matching equals score matching
up to a model-independent constant, and ``d/dt KL(p_t || q_t) = -g^2/2 E_p ||grad log p_t -
grad log q_t||^2``, as numbers on a Gaussian mixture with exact densities and scores.

DSM vs SM at a time ``t``: for a model score ``s_theta``,
``DSM = E ||-eps/sigma - s_theta(x_t)||^2`` (the conditional score of ``x_t = alpha x0 + sigma
eps``) and ``SM = E ||grad log p_t(x_t) - s_theta(x_t)||^2``; their difference is
``C(t) = d / sigma^2 - E ||grad log p_t||^2`` for every model. Models: the exact score, scores of
perturbed mixtures pushed through the same forward process, half the exact score and zero.
All from the same samples; error bars are Monte Carlo standard errors (CLT over samples), and the
difference of ``DSM - SM`` between a model and the exact score is tested against its own paired
standard error (its expectation is ``2 E<s_theta - s_p, eps/sigma + s_p> = 0``).

KL decay: ``q`` is a perturbed mixture pushed through the same forward SDE (the oracle's exact
``log q_t``). ``KL(p_t || q_t)`` is estimated with common random numbers ``x_t = alpha(t) x0 +
sigma(t) eps`` (fixed ``x0``, ``eps``), so the central difference of the estimate at ``t +- h``
is unbiased for the central difference of KL; it is compared per sample with
``-g^2/2 ||s_p - s_q||^2`` at ``t``. The finite-difference bias is ``O(h^2)``; the difference
between steps ``h`` and ``2h`` (3/4 of the bias at ``2h``) is reported next to the standard error.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv.losses import perturb
from diffusion_lv.schedules import SCHEDULES, get_schedule
from experiments import common

MODELS = ("exact", "shift", "widen", "reweight", "shift_and_widen", "half_score", "zero")
KL_MODEL = "shift_and_widen"


def perturbed(mixture, name: str, seed: int):
    """A perturbed mixture (a model whose score is exact for some other data law)."""
    shift = jnp.asarray([0.3, -0.2] + [0.0] * (mixture.dim - 2), mixture.means.dtype)
    if name == "shift":
        return mixture.replace(means=mixture.means + shift)
    if name == "widen":
        return mixture.replace(eigvals=mixture.eigvals * 2.25)
    if name == "reweight":
        w = np.random.default_rng(seed).uniform(0.5, 1.5, mixture.num_components)
        return mixture.replace(weights=jnp.asarray(w / w.sum(), mixture.weights.dtype))
    if name == "shift_and_widen":
        return mixture.replace(means=mixture.means + shift, eigvals=mixture.eigvals * 2.25)
    raise ValueError(f"no perturbed mixture {name!r}")


def model_score(mixture, name: str, seed: int, x, t, schedule):
    exact = mixture.score(x, t, schedule)
    if name == "exact":
        return exact
    if name == "half_score":
        return 0.5 * exact
    if name == "zero":
        return jnp.zeros_like(exact)
    return perturbed(mixture, name, seed).score(x, t, schedule)


@functools.partial(jax.jit, static_argnames=("schedule", "names", "seed", "n"))
def dsm_sm_samples(mixture, schedule, t, key, names, seed, n):
    """Per-sample DSM and SM terms of every model, and ``||-eps/sigma||^2 - ||s_p||^2``."""
    k_data, k_noise = jax.random.split(key)
    x0 = mixture.sample(k_data, n)
    eps = jax.random.normal(k_noise, x0.shape, x0.dtype)
    x = perturb(x0, eps, t, schedule)
    target = -eps / schedule.sigma(t)  # grad log p_t(x | x0)
    s_p = mixture.score(x, t, schedule)
    sq = lambda a: jnp.sum(jnp.square(a), axis=-1)
    dsm, sm = [], []
    for name in names:
        s = model_score(mixture, name, seed, x, t, schedule)
        dsm.append(sq(target - s))
        sm.append(sq(s_p - s))
    return jnp.stack(dsm), jnp.stack(sm), sq(target) - sq(s_p)


@functools.partial(jax.jit, static_argnames=("schedule", "n"))
def kl_decay_samples(p, q, schedule, t, h, key, n):
    """Per sample: central differences of ``log p_t - log q_t`` along fixed ``(x0, eps)`` at
    steps ``h`` and ``2h``, ``-g^2/2 ||s_p - s_q||^2`` and ``log p_t - log q_t`` at ``t``."""
    k_data, k_noise = jax.random.split(key)
    x0 = p.sample(k_data, n)
    eps = jax.random.normal(k_noise, x0.shape, x0.dtype)

    def log_ratio(s):
        x = perturb(x0, eps, s, schedule)
        return p.log_prob(x, s, schedule) - q.log_prob(x, s, schedule)

    fd_h = (log_ratio(t + h) - log_ratio(t - h)) / (2 * h)
    fd_2h = (log_ratio(t + 2 * h) - log_ratio(t - 2 * h)) / (4 * h)
    x = perturb(x0, eps, t, schedule)
    diff = p.score(x, t, schedule) - q.score(x, t, schedule)
    rhs = -0.5 * schedule.g2(t) * jnp.sum(jnp.square(diff), axis=-1)
    return fd_h, fd_2h, rhs, log_ratio(t)


def mean_se(values) -> tuple[float, float]:
    """Mean and its Monte Carlo standard error."""
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(values.size))


def run(config, workdir: str) -> dict:
    start_time = time.perf_counter()
    path = common.prepare_workdir(workdir, config)
    for name in (config.dsm_schedule, *config.kl_schedules):
        common.check_choice(name, list(SCHEDULES), "schedule")
    levels = [float(s) for s in config.levels]
    if any(not s > 0 for s in levels):
        raise ValueError(f"levels must be positive, got {levels}")
    if not 0 < config.fd_relative_step < 0.25:
        raise ValueError(f"fd_relative_step={config.fd_relative_step!r} must be in (0, 0.25)")
    with jax.enable_x64(True):
        mixture = common.make_mixture(config.mixture)
        dsm = _dsm_vs_sm(config, mixture, levels)
        kl = _kl_decay(config, mixture, levels)
    results = {"dsm_sm": dsm, "kl": kl}
    wall = time.perf_counter() - start_time
    common.write_report(path, "Experiment 7: DSM = SM + constant; KL decay (eq. 17)",
                        _report(config, results), wall)
    _figure(path, config, results)
    results["wall_seconds"] = wall
    common.write_json(path, results)
    return results


def _dsm_vs_sm(config, mixture, levels) -> list[dict]:
    schedule = get_schedule(config.dsm_schedule)
    out = []
    for i, level in enumerate(levels):
        t = schedule.t_from_sigma_ve(jnp.float64(level))
        dsm, sm, const = (np.asarray(a) for a in dsm_sm_samples(
            mixture, schedule, t, common.stream_key(config.seed, 1, i), MODELS, config.seed,
            config.dsm_samples))
        gap = dsm - sm
        exact = MODELS.index("exact")
        for m, name in enumerate(MODELS):
            versus_exact = mean_se(gap[m] - gap[exact])
            out.append({
                "sigma_ve": level, "t": float(t), "model": name, "dsm": mean_se(dsm[m]),
                "sm": mean_se(sm[m]), "dsm_minus_sm": mean_se(gap[m]),
                "constant": mean_se(const), "versus_exact": versus_exact,
                "z": versus_exact[0] / versus_exact[1] if versus_exact[1] > 0 else 0.0,
            })
    return out


def _kl_decay(config, mixture, levels) -> list[dict]:
    q = perturbed(mixture, KL_MODEL, config.seed)
    out = []
    for si, name in enumerate(config.kl_schedules):
        schedule = get_schedule(name)
        for i, level in enumerate(levels):
            t = schedule.t_from_sigma_ve(jnp.float64(level))
            h = config.fd_relative_step * t
            fd_h, fd_2h, rhs, log_ratio = (np.asarray(a) for a in kl_decay_samples(
                mixture, q, schedule, t, h, common.stream_key(config.seed, 2, si, i),
                config.kl_samples))
            diff = mean_se(fd_h - rhs)
            out.append({
                "schedule": name, "sigma_ve": level, "t": float(t), "h": float(h),
                "kl": mean_se(log_ratio), "fd": mean_se(fd_h), "rhs": mean_se(rhs),
                "difference": diff, "z": diff[0] / diff[1],
                "fd_bias_probe": float(np.mean(fd_2h) - np.mean(fd_h)),
            })
    return out


def _report(config, results) -> list[str]:
    pm = lambda v: common.fmt_pm(*v)
    intro = (
        f"p: {config.mixture.name} mixture, float64. DSM vs SM in {config.dsm_schedule} at "
        f"sigma_ve in {tuple(config.levels)}; {config.dsm_samples} samples (x0, eps) shared by "
        f"all models; seed {config.seed}; ± is one Monte Carlo standard error. Models: the "
        "exact score; scores of perturbed mixtures q_t (shift: means + (0.3, -0.2); widen: "
        "covariances x 2.25; reweight: random weights; shift_and_widen: both); 0.5 x the exact "
        "score; 0. The last column is (DSM - SM of the model minus that of the exact score) "
        "over its paired standard error: N(0, 1) if DSM - SM does not depend on the model."
    )
    header = ["sigma_ve", "model", "DSM", "SM", "DSM - SM", "C = d/sigma^2 - E|s_p|^2",
              "z vs exact"]
    rows = [[common.fmt(r["sigma_ve"]), r["model"], pm(r["dsm"]), pm(r["sm"]),
             pm(r["dsm_minus_sm"]), pm(r["constant"]), f"{r['z']:+.2f}"]
            for r in results["dsm_sm"]]
    kl_intro = (
        f"KL decay: q = p with {KL_MODEL.replace('_', ' ')} (the same forward SDE); "
        f"{config.kl_samples} samples per time with common random numbers; central difference "
        f"step h = {config.fd_relative_step:g} t. Columns: KL(p_t||q_t), its finite-difference "
        "derivative dKL/dt, the right-hand side -g^2/2 E||s_p - s_q||^2, their difference "
        "(paired standard error) and z = difference / SE; 'FD(2h) - FD(h)' measures the "
        "O(h^2) finite-difference bias (it is 3x the bias at h)."
    )
    kl_header = ["schedule", "sigma_ve", "t", "KL(p_t||q_t)", "dKL/dt (FD)",
                 "-g^2/2 E|s_p - s_q|^2", "difference", "z", "FD(2h) - FD(h)"]
    kl_rows = [[r["schedule"], common.fmt(r["sigma_ve"]), common.fmt(r["t"]), pm(r["kl"]),
                pm(r["fd"]), pm(r["rhs"]), pm(r["difference"]), f"{r['z']:+.2f}",
                common.fmt(r["fd_bias_probe"])] for r in results["kl"]]
    return [intro, common.markdown_table(header, rows), kl_intro,
            common.markdown_table(kl_header, kl_rows)]


def _figure(path, config, results) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 5), gridspec_kw={"wspace": 0.3})
    levels = sorted({r["sigma_ve"] for r in results["dsm_sm"]})
    width = 0.8 / len(levels)
    xs = np.arange(len(MODELS))
    for i, level in enumerate(levels):
        rs = [r for r in results["dsm_sm"] if r["sigma_ve"] == level]
        const = rs[0]["constant"][0]
        off = xs + (i - (len(levels) - 1) / 2) * width
        # Relative to C(t) so that all levels share one axis.
        dsm = np.array([r["dsm"][0] for r in rs]) / const
        sm = np.array([r["sm"][0] for r in rs]) / const
        gap = np.array([r["dsm_minus_sm"][0] for r in rs]) / const
        err = np.array([r["versus_exact"][1] for r in rs]) / const
        axes[0].plot(off, dsm, "o", color=f"C{i}", ms=4, label=f"DSM, sigma_ve={level:g}")
        axes[0].plot(off, sm, "s", color=f"C{i}", ms=4, mfc="none",
                     label=f"SM, sigma_ve={level:g}")
        axes[1].errorbar(off, gap - gap[MODELS.index("exact")], yerr=2 * err, fmt="o",
                         color=f"C{i}", ms=4, label=f"sigma_ve={level:g}")
    ax = axes[0]
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_ylim(0, None)
    ax.set_xticks(xs, MODELS, rotation=30, fontsize=8)
    ax.set_ylabel("loss / C(t)")
    ax.set_title("DSM and SM of each model (relative to C(t))", fontsize=10)
    ax.legend(fontsize=6, ncol=2)
    ax = axes[1]
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_xticks(xs, MODELS, rotation=30, fontsize=8)
    ax.set_ylabel("(DSM - SM) minus that of the exact score, / C(t)")
    ax.set_title("DSM - SM does not depend on the model (± 2 paired SE)", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[2]
    for i, name in enumerate(config.kl_schedules):
        rs = [r for r in results["kl"] if r["schedule"] == name]
        lhs = np.array([-r["fd"][0] for r in rs])
        rhs = np.array([-r["rhs"][0] for r in rs])
        err = np.array([r["difference"][1] for r in rs])
        ax.errorbar(rhs, lhs, yerr=2 * err, fmt="o", color=f"C{i}", ms=4, label=name)
    lo = min(-r["rhs"][0] for r in results["kl"])
    hi = max(-r["rhs"][0] for r in results["kl"])
    ax.plot([lo / 2, hi * 2], [lo / 2, hi * 2], "k--", lw=0.7, label="y = x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("g^2/2 E||grad log p_t - grad log q_t||^2")
    ax.set_ylabel("-dKL(p_t||q_t)/dt (finite difference, ± 2 SE)")
    ax.set_title("KL decay, eq. 17, at sigma_ve in "
                 f"{tuple(float(s) for s in config.levels)}", fontsize=10)
    ax.legend(fontsize=7)
    common.save_figure(fig, path, "dsm_sm_kl.png")


if __name__ == "__main__":
    common.launch(run, __file__)
