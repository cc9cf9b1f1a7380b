"""Experiment 6 (paper Section 5, Tables 6-7): one objective, three parameterisations.

A VP score network, a VE-Karras eps network and a rectified-flow velocity network are trained on
the same data with the same network, steps, batch and optimiser, through the library
(``experiment_lib.parse`` of a config built from ``configs/toy.py`` or
``configs/digits/common.py``, then ``training.train``). Two weightings:

* ``ml``: the maximum-likelihood weighting ``w_ML = g^2 alpha^2 / (2 sigma^4)`` in x0 space,
  times drawn from the ML importance proposal and reweighted to uniform ``t`` (the objective is
  unchanged by the proposal). Every schedule is cut to the same ``sigma_ve`` range, the network
  sees the same input ``(c_in z, log(sigma_ve)/4)`` in every schedule, and the proposal is
  defined in log-SNR: with one seed the three models start from the same weights and see the
  same data, noise levels and noise. They differ only in what the network outputs (and in the
  constant ``1/(t_max - t_min)`` of the uniform time density; Adam does not see it, and gradient
  clipping, which would, is off by default). The paper's claim is that they are one objective:
  their test NLL must agree within the seed-to-seed spread.
* ``native``: each output's plain MSE (score matching, eps denoising, flow matching: the
  weightings ``score``, ``eps``, ``velocity``) over uniform ``t``, drawn uniformly (Table 7).
  In VP, score matching is 2 x the ML weighting, so that row differs from its ML row only in how
  times are drawn; VE's eps loss is ``sigma_ve`` x ML over uniform ``sigma``, RF's velocity loss
  ``sigma_ve`` x ML over uniform ``s``.

Test NLL: ``likelihood.make_likelihood_fn`` (probability-flow ODE) in bits/dim on held-out data:
for the 2-D mixture fresh exact samples, next to the true density's figure
(``eval.toy.exact_nll_bits_per_dim``); for the digits the test split, uniformly dequantised over
its 17 levels. Every model is scored on the same points with the same dequantisation noise and
probes, so differences between models are paired. Sample quality: SWD to exact samples over its
Monte Carlo floor (mixture), the digits Frechet distance over its floor (digits); one sampler
for every model.

Conversion: the ML-trained RF velocity model becomes a VP score model by ``convert.py`` alone
(``as_ve_denoiser`` then ``as_model``: ``converted_model``), and is sampled by the VP reverse
SDE (Euler-Maruyama with ``c = 2`` in VP coordinates) against RF's own probability-flow Euler
sampler, at the same NFE on the same grid. The same VP-SDE sampler run on the RF model directly
gives the same samples up to float32 rounding (reported), since the conversion is exact.

Spreads: ``mean ± sd`` over ``num_seeds`` training seeds (the test points fixed). The verdict
compares the largest difference between the models' mean NLLs with the standard error of a
difference of two means, ``s_pooled sqrt(2 / n)``.
"""

from __future__ import annotations

import functools
import itertools
import math
import pathlib
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import toy as toy_configs
from configs.digits import common as digits_configs
from diffusion_lv import convert, evaluate, samplers
from diffusion_lv import experiment as experiment_lib
from diffusion_lv.data import digits, toy
from diffusion_lv.eval import toy as toy_eval
from diffusion_lv.likelihood import LikelihoodConfig, evaluate_likelihood, make_likelihood_fn
from diffusion_lv.parameterization import Parameterization, bind
from diffusion_lv.schedules import get_schedule
from experiments import common

# name: (schedule, network output, native weighting, the native loss's name in Table 7)
MODELS = {
    "vp_score": ("vp", "score", "score", "score matching"),
    "ve_eps": ("ve", "eps", "eps", "denoising (eps)"),
    "rf_velocity": ("rf", "velocity", "velocity", "flow matching"),
}
WEIGHTINGS = ("ml", "native")
DATASETS = ("mixture", "digits")
MIXTURE = "ring8"  # the toy set with an exact density
LIBRARY_SECTIONS = ("model", "training", "optimizer", "sampler")
Z_AGREE = 2.0  # |difference| / its standard error below which two means agree


# -- building library configs -------------------------------------------------------------


def _base_config(dataset: str):
    """The library config a data set starts from (configs/toy.py or configs/digits)."""
    if dataset == "mixture":
        return toy_configs.toy_config(MIXTURE, "rf")
    return digits_configs.digits_config("rf")


def schedule_range(name: str, sigma_ve_range) -> tuple[float, float]:
    """``(t_min, t_max)`` of schedule ``name`` at the canonical noise range ``sigma_ve_range``."""
    schedule = get_schedule(name)
    with jax.enable_x64(True):
        return tuple(float(schedule.t_from_sigma_ve(jnp.float64(s))) for s in sigma_ve_range)


def library_config(config, dataset: str, model: str, weighting: str, seed: int):
    """The ml_collections config of one training run (validated later by ``parse``)."""
    schedule, prediction, native, _ = MODELS[model]
    lib = _base_config(dataset)
    section = config[dataset]
    for name in LIBRARY_SECTIONS:
        lib[name].update(section[name])
    lib.seed = seed
    lib.diffusion.schedule = schedule
    lib.diffusion.prediction = prediction
    lib.diffusion.scale_input = True  # same network input (c_in z, c_noise) in every schedule
    lib.diffusion.t_min, lib.diffusion.t_max = schedule_range(schedule, config.sigma_ve_range)
    if weighting == "ml":
        lib.loss.weighting = "ml"
        lib.loss.time_sampler = "ml_importance"
        lib.loss.importance_weighted = True
    else:
        lib.loss.weighting = native
        lib.loss.time_sampler = "uniform"
        lib.loss.importance_weighted = False
    lib.optimizer.grad_clip = config.grad_clip
    common.final_only(lib)
    return lib


def check_config(config) -> None:
    """Every name and range, before anything compiles (ValueError naming value and choices)."""
    for what, values, choices in (
        ("dataset", config.datasets, DATASETS),
        ("model", config.models, MODELS),
        ("weighting", config.weightings, WEIGHTINGS),
        ("conversion dataset", config.conversion.datasets, config.datasets),
    ):
        if not values and what != "conversion dataset":
            raise ValueError(f"config lists no {what}; valid choices: {list(choices)}")
        for value in values:
            common.check_choice(value, list(choices), what)
    if config.conversion.datasets and "rf_velocity" not in config.models:
        raise ValueError(
            f"conversion needs the model 'rf_velocity'; config.models={tuple(config.models)}"
        )
    if config.conversion.datasets and "ml" not in config.weightings:
        raise ValueError(
            f"conversion converts the ML-trained RF model; config.weightings="
            f"{tuple(config.weightings)} has no 'ml'"
        )
    for key in ("num_seeds", "digits_num_seeds"):
        if not (isinstance(config[key], int) and config[key] >= 1):
            raise ValueError(f"{key}={config[key]!r} must be an integer >= 1")
    for value in config.digits_weightings:
        common.check_choice(value, list(config.weightings), "digits weighting")
    if "digits" in config.conversion.datasets and "ml" not in config.digits_weightings:
        raise ValueError(
            f"conversion on the digits needs 'ml' in digits_weightings="
            f"{tuple(config.digits_weightings)}"
        )
    if "digits" in config.datasets and not config.digits_weightings:
        raise ValueError(f"digits_weightings is empty; valid choices: {list(config.weightings)}")
    lo, hi = (float(s) for s in config.sigma_ve_range)
    if not 0 < lo < hi:
        raise ValueError(f"sigma_ve_range={tuple(config.sigma_ve_range)!r} must be 0 < lo < hi")
    samplers.SamplerConfig(nfe=config.conversion.nfe, grid=config.conversion.grid)
    for dataset in config.datasets:
        nll = config[dataset].nll
        if dataset == "digits" and not 1 <= nll.examples <= len(digits.DigitsSource("test")):
            raise ValueError(
                f"digits.nll.examples={nll.examples!r}; valid: 1 to the test split's "
                f"{len(digits.DigitsSource('test'))} images"
            )
        if not 1 <= nll.batch_size:
            raise ValueError(f"{dataset}.nll.batch_size={nll.batch_size!r} must be >= 1")
        _likelihood_config(config, dataset)
        for model, weighting in itertools.product(config.models, config.weightings):
            try:
                experiment_lib.parse(library_config(config, dataset, model, weighting, 0))
            except experiment_lib.ConfigError as err:
                raise ValueError(f"{dataset} section: {err}") from None


# -- the models -----------------------------------------------------------------------------


def converted_model(model_fn, prediction: str, schedule, target_prediction: str,
                    target_schedule, sigma_data: float):
    """A model ``(x, t) -> target_prediction`` in ``target_schedule`` that is the given
    model in another schedule and output, by convert.py alone (e.g. RF velocity -> VP score)."""
    denoiser = convert.as_ve_denoiser(model_fn, prediction, schedule, sigma_data)
    return convert.as_model(denoiser, target_prediction, target_schedule, sigma_data)


def _likelihood_config(config, dataset: str) -> LikelihoodConfig:
    nll = config[dataset].nll
    return LikelihoodConfig(
        divergence=nll.divergence, num_probes=nll.num_probes, rtol=nll.rtol, atol=nll.atol,
        error_norm=nll.error_norm,
        num_levels=digits.NUM_LEVELS if dataset == "digits" else None,
    )


def _test_data(config, dataset: str) -> np.ndarray:
    if dataset == "mixture":
        key = common.stream_key(config.seed, 6, 0)
        return np.asarray(toy.exact_density(MIXTURE).sample(key, config.mixture.nll.examples),
                          np.float32)
    from diffusion_lv.eval import digits_features

    return digits_features.scaled_split("test")[0][: config.digits.nll.examples].astype(
        np.float32
    )


def _batches(x: np.ndarray, size: int):
    return [x[i:i + size] for i in range(0, len(x), size)]


class _Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    def add(self, name: str, start: float) -> None:
        self.add_seconds(name, time.perf_counter() - start)

    def add_seconds(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds


def dataset_plan(config, dataset: str) -> tuple[list[int], tuple[str, ...]]:
    """The seeds and weightings trained on a data set (the digits may use fewer)."""
    num_seeds, weightings = config.num_seeds, tuple(config.weightings)
    if dataset == "digits":
        num_seeds = min(num_seeds, config.digits_num_seeds)
        weightings = tuple(w for w in weightings if w in config.digits_weightings)
    return [config.seed + i for i in range(num_seeds)], weightings


def _run_dataset(config, dataset: str, path: pathlib.Path, timer: _Timer) -> dict:
    seeds, weightings = dataset_plan(config, dataset)
    test_x = _test_data(config, dataset)
    nll_key = common.stream_key(config.seed, 6, 1)
    sample_key = common.stream_key(config.seed, 6, 2)
    quality_key = common.stream_key(config.seed, 6, 3)
    rows, models, samples_seed0 = [], {}, {}
    start = time.perf_counter()
    floor = _mixture_floor(config) if dataset == "mixture" else None
    timer.add("sampling + quality", start)
    for model in config.models:
        # The first run's network and parameterisation serve every run of this model: the
        # compiled sampler and likelihood are cached on them (params are arguments).
        likelihood_fn, shared = None, None
        for weighting in weightings:
            runs = []
            for seed in seeds:
                lib = library_config(config, dataset, model, weighting, seed)
                experiment = experiment_lib.parse(lib)
                run_dir = path / "runs" / dataset / f"{model}_{weighting}" / f"seed{seed}"
                shutil.rmtree(run_dir, ignore_errors=True)  # never resume a stale run
                params, train_seconds = common.train_experiment(experiment, run_dir)
                timer.add_seconds("train (incl. compile)", train_seconds)

                start = time.perf_counter()
                if shared is None:
                    shared = experiment
                    likelihood_fn = make_likelihood_fn(
                        shared.parameterization.model_apply(shared.network.apply),
                        shared.parameterization, _likelihood_config(config, dataset),
                    )
                nll = evaluate_likelihood(
                    likelihood_fn, params, _batches(test_x, config[dataset].nll.batch_size),
                    nll_key,
                )
                timer.add("test NLL", start)

                start = time.perf_counter()
                quality, samples = _sample_quality(config, dataset, shared, params,
                                                   sample_key, quality_key, floor)
                timer.add("sampling + quality", start)
                if seed == seeds[0]:
                    samples_seed0[(model, weighting)] = samples[:2048]
                runs.append({"seed": seed, "nll_bpd": nll["bits_per_dim"],
                             "nll_se": nll["bits_per_dim_standard_error"],
                             "nll_nfe": nll["nfe"], "unsolved": nll["unsolved_batches"],
                             "quality": quality, "train_seconds": train_seconds})
                if model == "rf_velocity" and weighting == "ml":
                    models.setdefault("rf_ml", []).append((shared, params, seed))
            rows.append(_summarise_row(dataset, model, weighting, runs))
            if dataset == "mixture":  # the true density's figure at this schedule's t_min
                rows[-1]["true_nll"] = toy_eval.exact_nll_bits_per_dim(
                    MIXTURE, jnp.asarray(test_x), experiment.schedule)
    out = {"rows": rows, "agreement": _agreement(rows, "ml"), "samples": samples_seed0,
           "floor": floor}
    if "native" in weightings:
        out["agreement_native"] = _agreement(rows, "native")
    if dataset in config.conversion.datasets:
        start = time.perf_counter()
        out["conversion"] = _conversion(config, dataset, models["rf_ml"], sample_key,
                                        quality_key, floor)
        timer.add("conversion (sampling + quality)", start)
    return out


def _sample_quality(config, dataset, experiment, params, sample_key, quality_key, floor):
    quality_cfg = config[dataset].quality
    shape = (quality_cfg.num_samples, *experiment.data_shape)
    sampler = evaluate.make_sampler(experiment.network.apply, experiment.parameterization,
                                    experiment.sampler, shape)
    samples, _ = sampler(params, sample_key)
    return (_quality(config, dataset, np.asarray(samples), quality_key, experiment, floor),
            np.asarray(samples))


@functools.partial(jax.jit, static_argnames=("num_projections", "repeats"))
def mixture_swd(samples, key, num_projections: int, repeats: int):
    """SWD of ``samples`` to fresh exact samples of the mixture, averaged over ``repeats``."""
    reference = lambda k, n: toy.exact_density(MIXTURE).sample(k, n).astype(samples.dtype)
    one = lambda k: common.sliced_wasserstein_to(samples, reference, k, num_projections)
    return jnp.mean(jax.vmap(one)(jax.random.split(key, repeats)))


def _mixture_floor(config) -> tuple[float, float]:
    """Mean and sd of the SWD between two exact samples of the evaluated size."""
    q = config.mixture.quality
    reference = lambda k, n: toy.exact_density(MIXTURE).sample(k, n).astype(jnp.float32)
    draws = common.floor_draws(reference, q.num_samples, common.stream_key(config.seed, 6, 4),
                               q.floor_draws, q.num_projections)
    return common.mean_sd(draws)


def _quality(config, dataset: str, samples: np.ndarray, key, experiment, floor=None) -> dict:
    """``{"value", "floor", "ratio"}``: SWD or digits Frechet distance, its floor, their ratio.

    Mixture: ``floor`` is the SWD floor (mean, sd) measured once for the data set."""
    if dataset == "mixture":
        q = config.mixture.quality
        if not np.all(np.isfinite(samples)):
            return {"value": math.inf, "floor": floor[0], "ratio": math.inf}
        value = float(mixture_swd(jnp.asarray(samples), key, q.num_projections, q.repeats))
        return {"value": value, "floor": floor[0], "ratio": value / floor[0]}
    result = experiment.evaluator.quality(samples, None)
    if not result["samples_finite"]:
        return {"value": math.inf, "floor": math.nan, "ratio": math.inf}
    return {"value": result["frechet_digits"], "floor": result["frechet_digits_floor"],
            "ratio": result["frechet_ratio"]}


def _summarise_row(dataset, model, weighting, runs) -> dict:
    schedule, prediction, native, native_name = MODELS[model]
    nll = [r["nll_bpd"] for r in runs]
    ratio = [r["quality"]["ratio"] for r in runs]
    row = {
        "dataset": dataset, "model": model, "weighting": weighting,
        "objective": "ML" if weighting == "ml" else f"{native_name} (w={native})",
        "schedule": schedule, "prediction": prediction, "runs": runs,
        "nll": common.mean_sd(nll), "nll_test_se": float(np.mean([r["nll_se"] for r in runs])),
        "quality_ratio": common.mean_sd(ratio),
        "nll_nfe": float(np.mean([r["nll_nfe"] for r in runs])),
        "unsolved": int(sum(r["unsolved"] for r in runs)),
        "train_seconds": [r["train_seconds"] for r in runs],
    }
    return row


def _agreement(rows, weighting: str) -> dict | None:
    """Largest difference of mean NLL between models vs the standard error of a difference."""
    chosen = [r for r in rows if r["weighting"] == weighting]
    if len(chosen) < 2:
        return None
    n = len(chosen[0]["runs"])
    means = {r["model"]: r["nll"][0] for r in chosen}
    sds = [r["nll"][1] for r in chosen]
    pooled = float(np.sqrt(np.mean(np.square(sds))))
    (a, b) = max(itertools.combinations(means, 2), key=lambda p: abs(means[p[0]] - means[p[1]]))
    diff = abs(means[a] - means[b])
    se = pooled * math.sqrt(2.0 / n)
    z = diff / se if se > 0 else math.inf
    # Paired per seed: the same seed gives the same data, noise and initial weights.
    paired = np.array([ra["nll_bpd"] - rb["nll_bpd"] for ra, rb in zip(
        next(r for r in chosen if r["model"] == a)["runs"],
        next(r for r in chosen if r["model"] == b)["runs"], strict=True)])
    return {"pair": (a, b), "max_difference": diff, "pooled_sd": pooled, "se_difference": se,
            "z": z, "agree": bool(z <= Z_AGREE), "paired": common.mean_sd(paired),
            "num_seeds": n}


# -- conversion: the RF model as a VP score model ---------------------------------------------


def _conversion(config, dataset: str, rf_runs, sample_key, quality_key, floor) -> dict:
    """RF's own probability-flow Euler vs the converted VP score model's reverse SDE."""
    experiment = rf_runs[0][0]
    rf_param, network = experiment.parameterization, experiment.network
    rf, sigma_data = rf_param.schedule, rf_param.sigma_data
    vp_range = schedule_range("vp", config.sigma_ve_range)
    vp = get_schedule("vp", t_min=vp_range[0], t_max=vp_range[1])
    shape = (config[dataset].quality.num_samples, *experiment.data_shape)
    nfe, grid = config.conversion.nfe, config.conversion.grid
    own_cfg = samplers.SamplerConfig(name="euler", c=1.0, nfe=nfe, grid=grid, step_schedule=rf)
    sde_cfg = samplers.SamplerConfig(name="euler", c=2.0, nfe=nfe, grid=grid, step_schedule=vp)
    own = evaluate.make_sampler(network.apply, rf_param, own_cfg, shape)
    direct = evaluate.make_sampler(network.apply, rf_param, sde_cfg, shape)

    vp_model = Parameterization(vp, "score", sigma_data)

    @jax.jit
    def converted(params, key):
        rf_model = rf_param.model_fn(bind(network.apply, params))
        vp_score = converted_model(rf_model, "velocity", rf, "score", vp, sigma_data)
        x, _ = samplers.sample(vp_score, vp_model, key, shape, sde_cfg)
        return x

    per_seed = []
    for _, params, seed in rf_runs:
        x_own, _ = own(params, sample_key)
        x_conv = converted(params, sample_key)
        x_direct, _ = direct(params, sample_key)
        x_own, x_conv, x_direct = (np.asarray(a) for a in (x_own, x_conv, x_direct))
        per_seed.append({
            "seed": seed,
            "own": _quality(config, dataset, x_own, quality_key, experiment, floor),
            "converted": _quality(config, dataset, x_conv, quality_key, experiment, floor),
            "max_abs_converted_minus_direct": float(np.max(np.abs(x_conv - x_direct))),
        })
    n = len(per_seed)
    own_ratio = common.mean_sd([r["own"]["ratio"] for r in per_seed])
    conv_ratio = common.mean_sd([r["converted"]["ratio"] for r in per_seed])
    se = math.sqrt((own_ratio[1] ** 2 + conv_ratio[1] ** 2) / n)
    diff = abs(own_ratio[0] - conv_ratio[0])
    z = diff / se if se > 0 else math.inf
    return {
        "nfe": nfe, "grid": grid, "per_seed": per_seed, "own_ratio": own_ratio,
        "converted_ratio": conv_ratio, "difference": diff, "se_difference": se, "z": z,
        "agree": bool(z <= Z_AGREE),
        "max_abs_converted_minus_direct": max(r["max_abs_converted_minus_direct"]
                                              for r in per_seed),
        "samples": {"own": x_own[:2048], "converted": x_conv[:2048]},
    }


# -- run, report, figure ------------------------------------------------------------------


def run(config, workdir: str) -> dict:
    start_time = time.perf_counter()
    check_config(config)
    path = common.prepare_workdir(workdir, config)
    timer = _Timer()
    results = {"datasets": {}}
    with common.quiet_training_logs():
        for dataset in config.datasets:
            results["datasets"][dataset] = _run_dataset(config, dataset, path, timer)
    wall = time.perf_counter() - start_time
    results["seconds"] = {**timer.seconds, "total": wall}
    common.write_report(path, "Experiment 6: one objective (VP score, VE eps, RF velocity)",
                        _report(config, results), wall)
    for dataset, out in results["datasets"].items():
        _figure(path, config, dataset, out)
    results["wall_seconds"] = wall
    common.write_json(path, _without_samples(results))
    return results


def _without_samples(results: dict) -> dict:
    out = {"seconds": results["seconds"], "datasets": {}}
    for dataset, r in results["datasets"].items():
        r = {k: v for k, v in r.items() if k != "samples"}
        if "conversion" in r:
            r["conversion"] = {k: v for k, v in r["conversion"].items() if k != "samples"}
        out["datasets"][dataset] = r
    return out


QUALITY_NAME = {"mixture": "SWD / floor", "digits": "digits Frechet / floor"}


def _describe(config, dataset: str) -> str:
    section = config[dataset]
    tr, nll, q = section.training, section.nll, section.quality
    seeds, _ = dataset_plan(config, dataset)
    if dataset == "mixture":
        data = (f"ring8 (8 Gaussians, radius 2, std 0.1); residual MLP width "
                f"{section.model.width}, {section.model.num_blocks} blocks")
        held_out = f"{nll.examples} fresh exact samples of the mixture"
        quality = (f"sliced Wasserstein distance of {q.num_samples} samples to exact samples over "
                   f"its Monte Carlo floor ({q.repeats} reference draws, {q.num_projections} "
                   "projections)")
    else:
        data = (f"scikit-learn 8x8 digits (1500 train images); U-Net {section.model.channels} "
                f"channels, mult {tuple(section.model.channel_mult)}, "
                f"{section.model.num_blocks} block(s)")
        held_out = (f"{nll.examples} test-split images, dequantised over {digits.NUM_LEVELS} "
                    "levels")
        quality = (f"Frechet distance of {q.num_samples} samples in digits-classifier features "
                   f"over the floor (as many real train images)")
    trace = ("exact trace" if nll.divergence == "exact"
             else f"Hutchinson trace, {nll.num_probes} probe(s)")
    sampler = section.sampler
    return (
        f"**{dataset}**: {data}; {tr.num_steps} Adam steps of batch {tr.batch_size}, EMA "
        f"{tuple(tr.ema_decays)[0]} params evaluated; gradient clipping "
        f"{'off' if not config.grad_clip else config.grad_clip}; every schedule cut to sigma_ve "
        f"in {tuple(config.sigma_ve_range)}. {len(seeds)} seeds "
        f"({seeds[0]}..{seeds[-1]}); a seed fixes the initial weights, "
        f"data, noise levels and noise of every model. Test NLL: probability-flow ODE "
        f"({trace}, rtol {nll.rtol:g}) on {held_out}, the same for every model. Quality: "
        f"{quality}; sampler {sampler.name}, {sampler.nfe} NFE, {sampler.grid} grid. "
        "± is the sd over seeds; 'test SE' is the test set's standard error of one seed's mean."
    )


def _report(config, results) -> list[str]:
    sections = []
    for dataset, out in results["datasets"].items():
        sections.append(_describe(config, dataset))
        header = ["model (schedule, output)", "objective", "test NLL (bits/dim)", "per seed",
                  "test SE", "NLL NFE", QUALITY_NAME[dataset], "train s / run"]
        rows = []
        for r in out["rows"]:
            rows.append([
                f"{r['model']} ({r['schedule']}, {r['prediction']})", r["objective"],
                common.fmt_pm(*r["nll"], digits=4),
                ", ".join(f"{x['nll_bpd']:.4f}" for x in r["runs"]),
                common.fmt(r["nll_test_se"], 2), f"{r['nll_nfe']:.0f}",
                common.fmt_pm(*r["quality_ratio"]),
                f"{np.mean(r['train_seconds']):.1f}",
            ])
        sections.append(common.markdown_table(header, rows))
        if dataset == "mixture":
            floors = {r["schedule"]: r["true_nll"] for r in out["rows"]}
            floor_mean, floor_sd = out["floor"]
            sections.append(
                "True density on the same points (the NLL floor): " + ", ".join(
                    f"{s}: {v:.4f}" for s, v in floors.items()) + " bits/dim. SWD floor "
                f"{common.fmt_pm(floor_mean, floor_sd)} ({config.mixture.quality.floor_draws} "
                "pairs of exact samples): the SWD of exact samples, averaged over "
                f"{config.mixture.quality.repeats} reference draws, has a ratio of 1 ± "
                f"{floor_sd / floor_mean / math.sqrt(config.mixture.quality.repeats):.2f}."
            )
        sections.append(_verdicts(out))
        if "conversion" in out:
            sections.append(_conversion_report(dataset, out["conversion"]))
    seconds = results["seconds"]
    sections.append("Where the time went: " + ", ".join(
        f"{k} {v:.0f} s" for k, v in seconds.items()) + " (the first seed of each model and "
        "weighting includes its compilation).")
    return sections


def _verdicts(out) -> str:
    lines = []
    for key, label in (("agreement", "ML weighting"), ("agreement_native", "native weightings")):
        a = out.get(key)
        if not a:
            continue
        verdict = "agree" if a["agree"] else "DO NOT agree"
        lines.append(
            f"- {label}: largest difference of mean NLL {a['pair'][0]} vs {a['pair'][1]} = "
            f"{a['max_difference']:.4f} bits/dim; pooled seed sd {a['pooled_sd']:.4f}, standard "
            f"error of a difference of means {a['se_difference']:.4f} ({a['num_seeds']} seeds): "
            f"z = {a['z']:.2f} -> the models **{verdict}** within the seed spread "
            f"(threshold z <= {Z_AGREE:g}). Paired by seed: {common.fmt_pm(*a['paired'])}."
        )
    by_model = {}
    for r in out["rows"]:
        by_model.setdefault(r["model"], {})[r["weighting"]] = r
    for model, rs in by_model.items():
        if "ml" in rs and "native" in rs:
            n = len(rs["ml"]["runs"])
            d_nll = rs["native"]["nll"][0] - rs["ml"]["nll"][0]
            se = math.sqrt((rs["native"]["nll"][1] ** 2 + rs["ml"]["nll"][1] ** 2) / n)
            d_q = rs["native"]["quality_ratio"][0] - rs["ml"]["quality_ratio"][0]
            lines.append(
                f"- {model}: native ({rs['native']['objective']}) minus ML: NLL "
                f"{d_nll:+.4f} bits/dim (SE {se:.4f}, z = {d_nll / se if se else math.inf:+.1f}),"
                f" quality ratio {d_q:+.2f}."
            )
    return "\n".join(lines)


def _conversion_report(dataset: str, c: dict) -> str:
    if c["agree"]:
        verdict = "the same quality within the seed spread"
    else:
        better = c["converted_ratio"][0] < c["own_ratio"][0]
        verdict = ("BETTER quality than its own sampler" if better
                   else "WORSE quality than its own sampler")
    header = ["sampler", "model", "NFE", QUALITY_NAME[dataset], "per seed"]
    rows = [
        [f"Euler probability-flow ODE (c = 1) in RF coordinates, {c['grid']} grid",
         "RF velocity (ML)", c["nfe"], common.fmt_pm(*c["own_ratio"]),
         ", ".join(f"{r['own']['ratio']:.2f}" for r in c["per_seed"])],
        [f"Euler-Maruyama reverse SDE (c = 2) in VP coordinates, {c['grid']} grid",
         "the same, converted to a VP score model", c["nfe"],
         common.fmt_pm(*c["converted_ratio"]),
         ", ".join(f"{r['converted']['ratio']:.2f}" for r in c["per_seed"])],
    ]
    return (
        f"Conversion ({dataset}): the ML-trained RF velocity model as a VP score model "
        "(convert.as_ve_denoiser then convert.as_model).\n\n"
        + common.markdown_table(header, rows)
        + f"\n\n- |difference of means| {c['difference']:.3f}, standard error "
        f"{c['se_difference']:.3f}: z = {c['z']:.2f} -> the converted model has **{verdict}** "
        f"(threshold z <= "
        f"{Z_AGREE:g}). The same VP-SDE sampler run on the RF model directly gives samples "
        f"within {c['max_abs_converted_minus_direct']:.1e} of the converted model's "
        "(float32 rounding, accumulated over the steps): the conversion is exact."
    )


def _figure(path, config, dataset: str, out) -> None:
    plt = common.pyplot()
    panels = list(out["samples"].items())
    if "conversion" in out:
        panels += [(("rf_velocity", "ml: own RF ODE"), out["conversion"]["samples"]["own"]),
                   (("rf_velocity", "ml -> VP score, VP SDE"),
                    out["conversion"]["samples"]["converted"])]
    cols = max(3, min(len(panels), 4))
    sample_rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(1 + sample_rows, cols, figsize=(4.2 * cols, 4.2 * (1 + sample_rows)),
                             squeeze=False)
    models = list(dict.fromkeys(r["model"] for r in out["rows"]))
    weightings = list(dict.fromkeys(r["weighting"] for r in out["rows"]))
    xs = np.arange(len(models))
    for w_index, weighting in enumerate(weightings):
        rs = [next(r for r in out["rows"] if r["model"] == m and r["weighting"] == weighting)
              for m in models]
        off = xs + (w_index - (len(weightings) - 1) / 2) * 0.25
        for ax, key, per_run in ((axes[0, 0], "nll", lambda x: x["nll_bpd"]),
                                 (axes[0, 1], "quality_ratio", lambda x: x["quality"]["ratio"])):
            ax.errorbar(off, [r[key][0] for r in rs], yerr=[r[key][1] for r in rs], fmt="o",
                        color=f"C{w_index}", capsize=4, label=f"{weighting} weighting")
            for o, r in zip(off, rs, strict=True):
                ax.plot([o + 0.06] * len(r["runs"]), [per_run(x) for x in r["runs"]], ".",
                        color=f"C{w_index}", alpha=0.5, ms=4)
    if dataset == "mixture":
        axes[0, 0].axhline(np.mean([r["true_nll"] for r in out["rows"]]), color="k", lw=0.7,
                           ls="--", label="true density")
    axes[0, 1].axhline(1.0, color="k", lw=0.7, ls="--", label="floor")
    for ax, title in ((axes[0, 0], "test NLL (bits/dim), mean ± sd over seeds"),
                      (axes[0, 1], f"{QUALITY_NAME[dataset]}, mean ± sd over seeds")):
        ax.set_xticks(xs, models)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[0, 2]
    if "conversion" in out:
        c = out["conversion"]
        ax.errorbar([0, 1], [c["own_ratio"][0], c["converted_ratio"][0]],
                    yerr=[c["own_ratio"][1], c["converted_ratio"][1]], fmt="o", capsize=4)
        for i, key in enumerate(("own", "converted")):
            ax.plot([i + 0.06] * len(c["per_seed"]),
                    [r[key]["ratio"] for r in c["per_seed"]], ".", color="C0", alpha=0.5)
        ax.axhline(1.0, color="k", lw=0.7, ls="--")
        ax.set_xticks([0, 1], ["RF, own ODE", "as VP score, VP SDE"])
        ax.set_xlim(-0.5, 1.5)
        ax.set_title(f"RF converted ({c['nfe']} NFE): {QUALITY_NAME[dataset]}",
                     fontsize=10)
    else:
        ax.axis("off")
    for ax in axes[0, 3:]:
        ax.axis("off")
    for i, ((model, weighting), samples) in enumerate(panels):
        ax = axes[1 + i // cols, i % cols]
        if dataset == "mixture":
            ax.scatter(samples[:, 0], samples[:, 1], s=0.8, alpha=0.5, linewidths=0)
            ax.set_xlim(-3.5, 3.5)
            ax.set_ylim(-3.5, 3.5)
            ax.set_aspect("equal")
        else:
            from diffusion_lv.eval import image_grid

            ax.imshow(image_grid.image_grid(np.asarray(samples)[:64], 8), cmap="gray")
            ax.axis("off")
        ax.set_title(f"{model}, {weighting} (seed {config.seed})", fontsize=9)
    for j in range(len(panels), sample_rows * cols):
        axes[1 + j // cols, j % cols].axis("off")
    common.save_figure(fig, path, f"one_objective_{dataset}.png")


if __name__ == "__main__":
    common.launch(run, __file__)
