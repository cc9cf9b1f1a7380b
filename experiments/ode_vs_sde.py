"""Experiment 5 (paper Sections 3-4, Appendix A.3): ODE versus SDE with an imperfect score.

The reverse split with rate ``c`` (``langevin.py``) reaches ``p_0`` from ``p_T`` for every
``c >= 1`` when the score is exact. With a learned score the sampler follows the marginals of the
model instead, and the rates differ in what happens to an error once it is made: ``c = 1`` (the
probability-flow ODE) carries every deviation along, ``c > 1`` adds the Langevin part
``(c - 1) g^2/2 score dtau + sqrt(c - 1) g dW``, which pulls the state back towards the model's
current marginal and so contracts earlier errors (the KL contraction of Appendix A.3). Against
this, at a given number of model evaluations (NFE), the stochastic sampler has the larger
discretisation error.

Measured on ring8 (the toy data set with an exact density, ``data.toy.exact_density``):

* models trained through the library from a ring8 toy config (``configs/toy.py``), one per seed and
  per training length in ``config.train_steps`` (the config's own 2000 updates, and fewer: a
  deliberately worse score);
* the exact score of the same mixture (``GaussianMixture.model_fn``) in the same schedule as a
  control, where only discretisation error is left;
* samplers on the same Karras grid of the model schedule's noise range: split Euler(-Maruyama)
  (``samplers`` "euler", VE step coordinates) at each rate in ``config.rates`` and, where
  ``config.heun_churn > 0`` (the full size), deterministic Heun (ODE) against EDM's stochastic
  Heun (``s_churn``), at each NFE in ``config.nfes``.
  Per seed every sampler starts from the same ``x_T`` and uses the same key (common random
  numbers), with the same reference sample for the distance.

Errors to ``p_0``: the sliced Wasserstein distance (SWD) to a fresh exact sample, next to its Monte
Carlo floor, and the excess cross-entropy ``E_q[-log p_0(x)] - H(p_0)`` of the samples under the
exact density (``H(p_0)`` by Monte Carlo, with its standard error; exact samples give 0 up to
``sd(-log p_0) / sqrt(n)``). The SWD (a 2-Wasserstein distance) weighs where the mass is, and
a few samples far from the data dominate it; the cross-entropy also weighs samples between the
narrow modes (a sample at distance d from a mode of std s costs about ``d^2 / (2 s^2)`` nats), and
it is not a divergence: samples sharper than ``p_0`` can make it negative. Quantiles of
``-log p_0(x) - H(p_0)`` at the largest NFE separate the two: the typical sample (median) from
the rare far one (99.9 %, max). Each seed trains its own models (``seed + i``) and draws its own
noise; tables show mean ± sd over seeds.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import toy as toy_configs
from diffusion_lv import experiment as experiment_lib
from diffusion_lv import samplers
from diffusion_lv.data import toy
from diffusion_lv.eval import metrics
from diffusion_lv.parameterization import bind
from experiments import common

# The toy configs (configs/toy.py, SET_ROW names) whose data set has an exact density (needed
# for the truth p_0).
MODEL_CONFIGS = tuple(sorted(name for name in toy_configs.NAMES if name.startswith("ring8_")))
EXACT = "exact"
ENTROPY_CHUNK = 1 << 20
TAIL_QUANTILES = (0.5, 0.99, 0.999, 1.0)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One sampler of the comparison: a family and its stochasticity."""

    label: str
    name: str  # samplers.SAMPLERS key
    c: float = 1.0  # euler's rate
    s_churn: float = 0.0  # heun's churn
    stochastic: bool = False

    def sampler_config(self, nfe: int, grid: str) -> samplers.SamplerConfig:
        if self.name == "euler":
            return samplers.SamplerConfig(name="euler", nfe=nfe, grid=grid, c=self.c)
        return samplers.SamplerConfig(name="heun", nfe=nfe, grid=grid, s_churn=self.s_churn)


def variants(config) -> list[Variant]:
    out = []
    for c in config.rates:
        kind = {1.0: "ODE", 2.0: "reverse SDE"}.get(float(c), "SDE + churn")
        out.append(Variant(f"euler c={c:g} ({kind})", "euler", c=float(c), stochastic=c != 1))
    if config.heun_churn > 0:
        out.append(Variant("heun (ODE)", "heun"))
        out.append(Variant(f"stochastic heun (s_churn={config.heun_churn:g})", "heun",
                           s_churn=float(config.heun_churn), stochastic=True))
    return out


def check_config(config) -> list[Variant]:
    """Every check before anything trains or compiles; returns the samplers to compare."""
    common.check_choice(config.model_config, MODEL_CONFIGS, "model_config")
    for c in config.rates:
        if not (isinstance(c, int | float) and c >= 1.0):
            raise ValueError(
                f"rates must be >= 1 (1: probability-flow ODE, 2: reverse SDE, > 2: Langevin "
                f"churn), got c={c!r}"
            )
    if 1.0 not in [float(c) for c in config.rates]:
        raise ValueError(f"rates={tuple(config.rates)!r} must include 1 (the ODE, the baseline)")
    for key in ("num_seeds", "num_samples", "num_projections", "floor_draws", "entropy_samples"):
        value = config[key]
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r} must be a positive int")
    steps = list(config.train_steps)
    if not steps or steps != sorted(set(steps)) or not all(
            isinstance(v, int) and v >= 1 for v in steps):
        raise ValueError(f"train_steps={tuple(steps)!r} must be increasing positive ints")
    if config.train_width is not None and config.train_width < 1:
        raise ValueError(f"train_width={config.train_width!r} must be a positive int or None")
    if not config.heun_churn >= 0:
        raise ValueError(f"heun_churn={config.heun_churn!r} must be >= 0 (0: no Heun pair)")
    if not config.nfes or list(config.nfes) != sorted(set(config.nfes)):
        raise ValueError(f"nfes={tuple(config.nfes)!r} must be increasing and non-empty")
    out = variants(config)
    for variant in out:  # SamplerConfig names a bad grid or a budget that buys no step
        for nfe in config.nfes:
            variant.sampler_config(nfe, config.grid)
    return out


# -- the trained models ---------------------------------------------------------------------


def toy_config(config, seed: int, steps: int):
    """The ring8 toy config with ``steps`` updates, without periodic plots or NLL."""
    toy_cfg = toy_configs.get_config(config.model_config)
    toy_cfg.seed = seed
    toy_cfg.training.num_steps = steps
    toy_cfg.training.steps_per_call = min(toy_cfg.training.steps_per_call, steps)
    common.final_only(toy_cfg)
    if config.train_width is not None:
        toy_cfg.model.width = config.train_width
    return toy_cfg


def train_models(config, path: pathlib.Path, seeds, steps: int):
    """One model per seed in ``path/models/steps_<steps>/seed_<s>``; a finished one is reused,
    one trained with another config is retrained. Returns the experiment, the EMA params stacked
    over seeds, and the seconds each took."""
    experiment, params, seconds = None, [], []
    for seed in seeds:
        toy_cfg = toy_config(config, seed, steps)
        experiment = experiment_lib.parse(toy_cfg)
        workdir = path / "models" / f"steps_{steps}" / f"seed_{seed}"
        record = toy_cfg.to_json_best_effort(indent=2) + "\n"
        if workdir.exists() and (
            not (workdir / "config.json").is_file()
            or (workdir / "config.json").read_text() != record
        ):
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(record)
        model_params, model_seconds = common.train_experiment(experiment, workdir)
        params.append(model_params)
        seconds.append(model_seconds)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *params)
    return experiment, stacked, seconds


# -- sampling and distances -------------------------------------------------------------------


def make_sampler(experiment, mixture, exact: bool, sampler: samplers.SamplerConfig, n: int):
    """``run(params, keys) -> (seeds, n, 2)`` samples, one compiled program over the seeds
    (``params`` stacked per seed; unused by the exact score)."""
    par = experiment.parameterization
    shape = (n, *experiment.data_shape)

    def one(params, key):
        if not exact:
            model, spec = par.model_fn(bind(experiment.network.apply, params)), par
        else:  # the oracle as an x0 model of the same schedule and data scale
            model = mixture.model_fn(par.schedule, "x0")
            spec = dataclasses.replace(par, prediction="x0")
        x, _ = samplers.sample(model, spec, key, shape, sampler)
        return x

    return jax.jit(jax.vmap(one))


def make_errors(mixture, num_projections: int):
    """``errors(x, references, keys) -> (SWD, -log p_0 per sample)`` per seed (leading axis)."""

    def one(x, reference, key):
        swd = metrics.sliced_wasserstein(x, reference, key, num_projections)
        return swd, -mixture.log_prob_ve(x, jnp.zeros((), x.dtype))

    return jax.jit(jax.vmap(one))


def entropy(mixture, key, num: int) -> tuple[float, float, float, np.ndarray]:
    """``H(p_0) = E_p[-log p_0]`` by Monte Carlo: (mean, standard error, sd of -log p_0, its
    TAIL_QUANTILES minus the mean)."""
    neg_log_p = jax.jit(lambda k, m: -mixture.log_prob_ve(mixture.sample(k, m), 0.0),
                        static_argnums=1)
    chunks, left, i = [], num, 0
    while left > 0:  # chunks bound the memory of the full size; a handful of calls
        size = min(left, ENTROPY_CHUNK)
        chunks.append(np.asarray(neg_log_p(jax.random.fold_in(key, i), size), np.float64))
        left, i = left - size, i + 1
    values = np.concatenate(chunks)
    sd, mean = float(values.std(ddof=1)), float(values.mean())
    return mean, sd / np.sqrt(values.size), sd, np.quantile(values, TAIL_QUANTILES) - mean


def trained_label(steps: int) -> str:
    return f"trained {steps}"


def run(config, workdir: str) -> dict:
    start_time = time.perf_counter()
    variant_list = check_config(config)
    path = common.prepare_workdir(workdir, config)
    seeds = [config.seed + i for i in range(config.num_seeds)]
    mixture = toy.exact_density("ring8")
    n = config.num_samples

    models, train_seconds = {}, {}
    with common.quiet_training_logs():
        for steps in config.train_steps:
            experiment, params, seconds = train_models(config, path, seeds, steps)
            models[trained_label(steps)] = params
            train_seconds[steps] = seconds
    models[EXACT] = params  # unused by the exact score
    reference = lambda k, m: mixture.sample(k, m)
    floor = common.floor_draws(reference, n, common.stream_key(config.seed, 0),
                               config.floor_draws, config.num_projections)
    h_mean, h_se, h_sd, exact_tail = entropy(mixture, common.stream_key(config.seed, 4),
                                 config.entropy_samples)
    sample_keys = jnp.stack([common.stream_key(s, 1) for s in seeds])
    references = jnp.stack([reference(common.stream_key(s, 2), n) for s in seeds])
    projection_keys = jnp.stack([common.stream_key(s, 3) for s in seeds])
    errors = make_errors(mixture, config.num_projections)

    rows = []
    # Every training length has the same network and schedule (only the params differ), so
    # the trained models share one compiled sampler per (sampler, NFE).
    compiled = {}
    for score, params in models.items():
        for variant in variant_list:
            swd, cross_entropy, tail, nfe_used = [], [], [], []
            for nfe in config.nfes:
                sampler = variant.sampler_config(nfe, config.grid)
                key = (score == EXACT, sampler)
                if key not in compiled:
                    compiled[key] = make_sampler(experiment, mixture, *key, n)
                x = compiled[key](params, sample_keys)
                d, neg_log_p = errors(x, references, projection_keys)
                neg_log_p = np.asarray(neg_log_p, np.float64) - h_mean
                swd.append(np.asarray(d))
                cross_entropy.append(neg_log_p.mean(axis=1))
                # Pooled over seeds; NaN (a diverged sample) sorts last and shows as the max.
                tail.append(np.quantile(np.nan_to_num(neg_log_p, nan=np.inf), TAIL_QUANTILES))
                nfe_used.append(sampler.nfe)
            rows.append({"score": score, "sampler": variant.label, "name": variant.name,
                         "c": variant.c, "s_churn": variant.s_churn,
                         "stochastic": variant.stochastic, "nfe": nfe_used,
                         "swd": np.stack(swd), "cross_entropy": np.stack(cross_entropy),
                         "tail": np.stack(tail)})

    results = {
        "seeds": seeds,
        "scores": list(models),
        "schedule": experiment.schedule.describe(),
        "prediction": experiment.parameterization.prediction,
        "train_seconds": train_seconds,
        "floor": common.mean_sd(floor),
        "floor_draws": floor,
        "entropy": (h_mean, h_se),
        "cross_entropy_noise": h_sd / np.sqrt(n),
        "exact_tail": exact_tail,
        "rows": rows,
    }
    results["verdicts"] = verdicts(config, results)
    wall = time.perf_counter() - start_time
    common.write_report(path, "Experiment 5: ODE versus SDE with an imperfect score",
                        _report(config, results), wall)
    _figure(path, config, results)
    results["wall_seconds"] = wall
    common.write_json(path, results)
    return results


# -- verdicts, report, figure ----------------------------------------------------------------


def _row(results, score: str, variant_name: str, c: float) -> dict:
    return next(r for r in results["rows"] if r["score"] == score and r["name"] == variant_name
                and r["c"] == c and r["s_churn"] == 0.0)


def _paired_t(differences) -> tuple[float, float, float]:
    """Mean, sd and t statistic (mean / (sd / sqrt(k))) of k paired differences; t is NaN
    for one seed or no spread."""
    mean, sd = common.mean_sd(differences)
    k = np.size(differences)
    return mean, sd, mean / (sd / np.sqrt(k)) if k > 1 and sd > 0 else float("nan")


def verdicts(config, results) -> list[str]:
    """Sentences computed from the numbers: SDE vs ODE per score, at the largest and smallest
    NFE; differences are paired (same model, x_T and reference per seed)."""
    floor_mean, floor_sd = results["floor"]
    k = len(results["seeds"])
    bound = floor_mean + 3.0 * floor_sd / np.sqrt(k)  # a mean over k seeds at the floor
    nfe_max, nfe_min = config.nfes[-1], config.nfes[0]
    out = []
    for score in results["scores"]:
        ode = _row(results, score, "euler", 1.0)
        if score == EXACT:
            rows = [r for r in results["rows"] if r["score"] == EXACT]
            at_floor = [r["sampler"] for r in rows if r["swd"][-1].mean() < bound]
            missing = [r["sampler"] for r in rows if r["sampler"] not in at_floor]
            out.append(
                f"Exact score, NFE {nfe_max}: {len(at_floor)} of {len(rows)} samplers are at the "
                f"floor (mean SWD over seeds < floor + 3 sd/sqrt({k}) = {common.fmt(bound)})"
                + (f"; not: {missing}" if missing else "") + "; excess cross-entropy "
                + ", ".join(f"{common.fmt(r['cross_entropy'][-1].mean())}" for r in rows)
                + " nats (discretisation only)."
            )
        for c in [float(c) for c in config.rates if c != 1]:
            sde = _row(results, score, "euler", c)
            diff_mean, diff_sd, t = _paired_t(ode["swd"][-1] - sde["swd"][-1])
            ce_mean, ce_sd, t_ce = _paired_t(ode["cross_entropy"][-1] - sde["cross_entropy"][-1])
            wins = [nfe for nfe, o, d in zip(config.nfes, ode["swd"], sde["swd"], strict=True)
                    if d.mean() < o.mean()]
            out.append(
                f"{score.capitalize()} score, NFE {nfe_max}, Euler c={c:g} vs the ODE (c=1): SWD "
                f"{common.fmt(sde['swd'][-1].mean())} vs {common.fmt(ode['swd'][-1].mean())} "
                f"(ODE/SDE = {common.fmt(ode['swd'][-1].mean() / sde['swd'][-1].mean())}; paired "
                f"ODE - SDE {common.fmt_pm(diff_mean, diff_sd)}, t = {t:.1f} over {k} seeds); "
                f"excess cross-entropy {common.fmt(sde['cross_entropy'][-1].mean())} vs "
                f"{common.fmt(ode['cross_entropy'][-1].mean())} nats (paired ODE - SDE "
                f"{common.fmt_pm(ce_mean, ce_sd)}, t = {t_ce:.1f}). c={c:g} has the smaller "
                f"mean SWD at NFE {wins if wins else 'none'}."
            )
        best = min((r for r in results["rows"] if r["score"] == score),
                   key=lambda r: r["swd"][0].mean())
        out.append(
            f"{score.capitalize()} score, NFE {nfe_min}: the smallest SWD is {best['sampler']} "
            f"({common.fmt(best['swd'][0].mean())}; the ODE c=1: "
            f"{common.fmt(ode['swd'][0].mean())})."
        )
    return out


def _report(config, results) -> list[str]:
    floor_mean, floor_sd = results["floor"]
    h_mean, h_se = results["entropy"]
    seeds = results["seeds"]
    training = "; ".join(
        f"{steps} updates ({', '.join(f'{s:.0f}' for s in seconds)} s)"
        for steps, seconds in results["train_seconds"].items())
    intro = (
        f"p_0: ring8 (8 modes of std 0.1 on a circle of radius 2; exact density). Trained "
        f"scores: configs/toy.py:{config.model_config} ({results['schedule']}, network output "
        f"{results['prediction']}, EMA params), one model per seed trained for {training}. "
        f"Exact score: the mixture's own, in the same schedule, on the same grid. Samplers on "
        f"the {config.grid} grid of the schedule's noise range, the last evaluation a final "
        f"denoise; Euler steps in VE coordinates. {config.num_samples} samples per run; seeds "
        f"{seeds[0]}..{seeds[-1]} ({len(seeds)}: each trains its own models and draws its own "
        f"x_T, noise and reference sample, shared by all samplers); mean ± sd over seeds.\n\n"
        f"SWD floor (two exact samples, {len(results['floor_draws'])} draws, "
        f"{config.num_projections} projections): {common.fmt_pm(floor_mean, floor_sd)}. "
        f"Entropy H(p_0) = {common.fmt(h_mean, 5)} ± {common.fmt(h_se, 2)} nats "
        f"({config.entropy_samples} samples); the excess cross-entropy of an exact sample of "
        f"this size is 0 ± {common.fmt(results['cross_entropy_noise'], 2)}."
    )
    header = ["score", "sampler"] + [f"NFE {nfe}" for nfe in config.nfes]

    def table(key, scale):
        rows = []
        for r in results["rows"]:
            cells = [common.fmt_pm(*common.mean_sd(v / scale)) for v in r[key]]
            rows.append([r["score"], r["sampler"], *cells])
        return common.markdown_table(header, rows)

    swd_intro = "SWD to p_0 as a multiple of the floor's mean (1 = at the floor):"
    ce_intro = ("Excess cross-entropy E_q[-log p_0(x)] - H(p_0) in nats (0 for exact samples; "
                "large when samples fall between the modes):")
    tail_intro = (
        f"Where the cross-entropy comes from, at NFE {config.nfes[-1]}: quantiles of "
        f"-log p_0(x) - H(p_0) over the samples of all seeds (nats; a sample at distance d from "
        f"the nearest mode costs about 50 d^2), first for {config.entropy_samples} exact samples:"
    )
    tail_header = ["score", "sampler"] + [
        "max" if q == 1.0 else f"{100 * q:g}%" for q in TAIL_QUANTILES]
    tail_rows = [["(exact samples of p_0)", "", *(common.fmt(v) for v in results["exact_tail"])]]
    tail_rows += [[r["score"], r["sampler"], *(common.fmt(v) for v in r["tail"][-1])]
                  for r in results["rows"]]
    verdict = "Verdict (computed from the numbers above):\n\n" + "\n".join(
        f"* {v}" for v in results["verdicts"])
    return [intro, swd_intro, table("swd", floor_mean), ce_intro, table("cross_entropy", 1.0),
            tail_intro, common.markdown_table(tail_header, tail_rows), verdict]


def _figure(path, config, results) -> None:
    plt = common.pyplot()
    scores = results["scores"]
    fig, axes = plt.subplots(2, len(scores), figsize=(5.5 * len(scores), 9), sharex=True,
                             squeeze=False)
    floor_mean, floor_sd = results["floor"]
    labels = list(dict.fromkeys(r["sampler"] for r in results["rows"]))
    for col, score in enumerate(scores):
        rows = [r for r in results["rows"] if r["score"] == score]
        for row_index, (key, name) in enumerate((("swd", "SWD to p_0"),
                                                 ("cross_entropy", "excess cross-entropy"))):
            ax = axes[row_index, col]
            if key == "swd":
                ax.axhspan(max(floor_mean - 2 * floor_sd, 1e-6), floor_mean + 2 * floor_sd,
                           color="0.85", label="floor ± 2 sd")
                ax.set_yscale("log")
            else:
                ax.axhline(0.0, color="0.5", lw=0.8)
                ax.set_yscale("symlog", linthresh=0.01)
            for r in rows:
                values = np.where(np.isfinite(r[key]), r[key], np.nan)
                # Bars span the seeds' min to max: an sd bar of a heavy-tailed error can reach
                # below 0 on a log axis.
                mean = np.nanmean(values, axis=1)
                spread = [mean - np.nanmin(values, axis=1), np.nanmax(values, axis=1) - mean]
                ax.errorbar(r["nfe"], mean, yerr=spread, color=f"C{labels.index(r['sampler'])}",
                            capsize=2, ls="--" if r["name"] == "heun" else "-", marker="o",
                            ms=3, label=r["sampler"])
            ax.set_xscale("log")
            ax.set_title(f"{score} score: {name}", fontsize=10)
            ax.set_ylabel(name + (" (nats)" if key == "cross_entropy" else ""))
            if row_index == 1:
                ax.set_xlabel("NFE")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"ODE vs SDE on ring8: mean and min-max over {len(results['seeds'])} seeds "
                 f"({config.num_samples} samples each)", fontsize=11)
    common.save_figure(fig, path, "ode_vs_sde.png")


if __name__ == "__main__":
    common.launch(run, __file__)
