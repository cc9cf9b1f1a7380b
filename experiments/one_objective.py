"""Experiment 6 (paper Section 5, Tables 6-7): one objective, three parameterisations, to a verdict.

The claim: denoising, score matching and flow matching are one maximum-likelihood objective,
``J(theta) = int w_ML E||D_theta(x_t, t) - x0||^2 dt`` with ``w_ML = g^2 alpha^2 / (2 sigma^4)``,
whatever the network outputs. A VP score network, a VE-Karras eps network and a rectified-flow
velocity network are trained on the same data with the same network, steps, batch and optimiser
through the library (``experiment_lib.parse`` of a config built from ``configs/toy.py`` or
``configs/digits/common.py``, then ``training.train``). Every schedule is cut to the same
``sigma_ve`` range, the network sees the same input ``(c_in z, log(sigma_ve)/4)`` and the ML time
proposal (``sigma_data`` = the data's std) lives in log-SNR, so with one seed the three start from
the same weights and see the same data, noise levels and noise. Three variants:

* ``ml``: the ML objective (ML importance proposal, reweighted to uniform ``t``).
* ``ml_scaled``, the conditioning control: the same objective, the network's raw output multiplied
  by the fixed ``c_out(t)`` that makes its regression target unit-variance (``target_scale``:
  ``1/sigma`` for a score, 1 for eps, ``sqrt(alpha'^2 sigma_data^2 + sigma'^2)`` for a velocity).
  It changes how the network's error reaches ``D``, not the objective or its minimum.
* ``native``: each output's plain MSE over uniform time, drawn uniformly (Table 7): a different
  weighting, as a control.

What is measured, at a log grid of training steps (the EMA parameters; cosine learning-rate
decay to the last step), on the same held-out points for every model:

* ``J - J*``: the ML objective's excess over its minimum, ``int w_ML E||D_theta - D*||^2 dt`` with
  the exact denoiser ``D*`` of the mixture (likelihood_bound.make_excess_fn), in bits/dim, total and
  by ``sigma_ve`` band. It is the quantity the claim is about, and it is exact here.
* the SDE bound: the variational bound on ``-log q_0(x)`` of the reverse-SDE model that the ML
  objective is (likelihood_bound.make_bound_fn), next to the exact model's bound computed with the
  same draws (their paired difference estimates ``J - J*`` again, by a different route);
* the ODE NLL: the probability-flow likelihood (likelihood.make_likelihood_fn), a different
  model's likelihood, next to the true density's figure;
* sample quality at the last step (SWD over its floor; digits: Frechet distance over its floor).

The verdict separates three statements: the objective identity (exact: the ML objective of one
denoiser computed through VP score, VE eps and RF velocity coordinates is one number), the equal
optimum (``J - J*`` and the bound's excess fall together toward 0 for all three) and the
optimisation speed (a measured rate ``J - J* ~ steps^-r`` per parameterisation). Seeds are the
statistical unit: models are compared by paired t-tests over seeds (a seed fixes the initial
weights, data, times and noise of every model), with ``seeds - 1`` degrees of freedom and 95%
confidence intervals; the tests the verdict concludes from form one family, Holm-adjusted, and a
difference not established there is reported as not resolved, never as equality.

Conversion: the ML-trained RF velocity model becomes a VP score model by ``convert.py`` alone
(``converted_model``) and is sampled by the VP reverse SDE against RF's own probability-flow Euler
sampler, at the same NFE on the same grid; the same VP-SDE sampler run on the RF model directly
gives the same samples up to float32 rounding (reported), since the conversion is exact.

Digits (``:digits``, ``:full``): trained on uniformly dequantised pixels, so that the uniform NLL
bins match the training data; the ODE NLL and the SDE bound on the test split (no exact denoiser).
"""

from __future__ import annotations

import functools
import itertools
import math
import pathlib
import shutil
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from configs import toy as toy_configs
from configs.digits import common as digits_configs
from diffusion_lv import convert, evaluate, likelihood, samplers, training
from diffusion_lv import experiment as experiment_lib
from diffusion_lv.data import digits, toy
from diffusion_lv.eval import toy as toy_eval
from diffusion_lv.likelihood import LikelihoodConfig, evaluate_likelihood, make_likelihood_fn
from diffusion_lv.likelihood_bound import (
    BoundConfig,
    band_names,
    excess_bits_per_dim,
    make_bound_fn,
    make_excess_fn,
)
from diffusion_lv.parameterization import Parameterization, bind
from diffusion_lv.schedules import expand_to, get_schedule
from experiments import common

# name: (schedule, network output, native weighting, the native loss's name in Table 7)
MODELS = {
    "vp_score": ("vp", "score", "score", "score matching"),
    "ve_eps": ("ve", "eps", "eps", "denoising (eps)"),
    "rf_velocity": ("rf", "velocity", "velocity", "flow matching"),
}
VARIANTS = {
    "ml": "ML objective",
    "ml_scaled": "ML, unit-variance output (control)",
    "native": "native loss",
}
DATASETS = ("mixture", "digits")
MIXTURE = "ring8"  # the toy set with an exact density
LIBRARY_SECTIONS = ("model", "training", "optimizer", "sampler")
BAND_EDGES = (0.1, 1.0, 10.0)  # sigma_ve bands of J - J*


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


def library_config(config, dataset: str, model: str, variant: str, seed: int):
    """The ml_collections config of one training run (validated later by ``parse``)."""
    schedule, prediction, native, _ = MODELS[model]
    lib = _base_config(dataset)
    section = config[dataset]
    for name in (*LIBRARY_SECTIONS, *(("data",) if "data" in section else ())):
        lib[name].update(section[name])
    lib.seed = seed
    lib.diffusion.schedule = schedule
    lib.diffusion.prediction = prediction
    lib.diffusion.scale_input = True  # same network input (c_in z, c_noise) in every schedule
    lib.diffusion.t_min, lib.diffusion.t_max = schedule_range(schedule, config.sigma_ve_range)
    if variant in ("ml", "ml_scaled"):
        lib.loss.weighting = "ml"
        lib.loss.time_sampler = "ml_importance"
        lib.loss.importance_weighted = True
    else:
        lib.loss.weighting = native
        lib.loss.time_sampler = "uniform"
        lib.loss.importance_weighted = False
    lib.optimizer.grad_clip = config.grad_clip
    if "nll_dequantization" in lib.eval:
        # The experiment scores the data by the convention its training matches
        # (likelihood.matched_dequantization); the base config's fixed choice (the digits
        # configs say "centred", for data trained on the grid) must not refuse dequantised data.
        lib.eval.nll_dequantization = "auto"
    common.final_only(lib)
    lib.training.keep_checkpoints = 1
    return lib


# -- the conditioning control ------------------------------------------------------------------


def target_scale(model: Parameterization, t):
    """``c_out(t)``: the standard deviation of the regression target of ``model.prediction``
    for data of zero mean and standard deviation ``model.sigma_data`` (per dimension).

    Every prediction kind is linear in ``(x0, eps)`` at fixed ``t``, ``a(t) x0 + b(t) eps``
    (convert.from_x0 applied to the two unit inputs), so ``c_out = sqrt(a^2 sigma_data^2 + b^2)``:
    ``1/sigma`` for a score, 1 for eps, ``sqrt(alpha'^2 sigma_data^2 + sigma'^2)`` for a velocity.
    """
    schedule = model.schedule
    t = jnp.atleast_1d(jnp.asarray(t))
    ones = jnp.ones((t.shape[0], 1), t.dtype)
    alpha, sigma = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    a = convert.from_x0(ones, model.prediction, alpha * ones, t, schedule, model.sigma_data)
    b = convert.from_x0(0 * ones, model.prediction, sigma * ones, t, schedule, model.sigma_data)
    return jnp.sqrt(jnp.square(a * model.sigma_data) + jnp.square(b))[:, 0]


class ScaledOutput(nn.Module):
    """``network(x, c_noise) * c_out(t)``: the same network with its raw output read at the
    scale of its regression target (``t`` from ``c_noise = log(sigma_ve) / 4``)."""

    inner: nn.Module
    model: Parameterization

    def __call__(self, x, c_noise):
        c_noise = jnp.broadcast_to(jnp.asarray(c_noise, x.dtype), x.shape[:1])
        t = self.model.schedule.t_from_sigma_ve(jnp.exp(4.0 * c_noise))
        return self.inner(x, c_noise) * expand_to(target_scale(self.model, t), x)


def network_for(experiment, variant: str) -> nn.Module:
    if variant == "ml_scaled":
        return ScaledOutput(experiment.network, experiment.parameterization)
    return experiment.network


# -- checks -------------------------------------------------------------------------------------


def check_config(config) -> None:
    """Every name and range, before anything compiles (ValueError naming value and choices)."""
    for what, values, choices in (
        ("dataset", config.datasets, DATASETS),
        ("model", config.models, MODELS),
        ("variant", config.variants, VARIANTS),
        ("conversion dataset", config.conversion.datasets, config.datasets),
    ):
        if not values and what != "conversion dataset":
            raise ValueError(f"config lists no {what}; valid choices: {list(choices)}")
        for value in values:
            common.check_choice(value, list(choices), what)
    if config.conversion.datasets and ("rf_velocity" not in config.models
                                       or "ml" not in config.variants):
        raise ValueError(
            f"conversion converts the ML-trained 'rf_velocity' model; config.models="
            f"{tuple(config.models)}, config.variants={tuple(config.variants)}"
        )
    for key in ("num_seeds", "digits_num_seeds"):
        if not (isinstance(config[key], int) and config[key] >= 1):
            raise ValueError(f"{key}={config[key]!r} must be an integer >= 1")
    if not 0 < config.alpha < 1:
        raise ValueError(f"alpha={config.alpha!r} must be in (0, 1)")
    for value in config.digits_variants:
        common.check_choice(value, list(config.variants), "digits variant")
    if "digits" in config.datasets and not config.digits_variants:
        raise ValueError(f"digits_variants is empty; valid choices: {list(config.variants)}")
    if "digits" in config.conversion.datasets and "ml" not in config.digits_variants:
        raise ValueError("conversion on the digits needs 'ml' in digits_variants")
    lo, hi = (float(s) for s in config.sigma_ve_range)
    if not 0 < lo < hi:
        raise ValueError(f"sigma_ve_range={tuple(config.sigma_ve_range)!r} must be 0 < lo < hi")
    samplers.SamplerConfig(nfe=config.conversion.nfe, grid=config.conversion.grid)
    for dataset in config.datasets:
        section = config[dataset]
        nll = section.nll
        if dataset == "digits" and not 1 <= nll.examples <= len(digits.DigitsSource("test")):
            raise ValueError(
                f"digits.nll.examples={nll.examples!r}; valid: 1 to the test split's "
                f"{len(digits.DigitsSource('test'))} images"
            )
        if not 1 <= nll.batch_size:
            raise ValueError(f"{dataset}.nll.batch_size={nll.batch_size!r} must be >= 1")
        for value in section.ode_curve_variants:
            common.check_choice(value, list(config.variants), f"{dataset} ode_curve_variant")
        _bound_config(config, dataset)
        for model, variant in itertools.product(config.models, config.variants):
            try:
                parsed = experiment_lib.parse(library_config(config, dataset, model, variant, 0))
            except experiment_lib.ConfigError as err:
                raise ValueError(f"{dataset} section: {err}") from None
        steps = tuple(section.eval_steps)
        per_call = parsed.training.steps_per_call
        if (not steps or list(steps) != sorted(set(steps)) or steps[-1]
                != section.training.num_steps or any(s % per_call for s in steps)):
            raise ValueError(
                f"{dataset}.eval_steps={steps!r} is not valid; valid: increasing multiples of "
                f"training.steps_per_call={per_call} ending at training.num_steps="
                f"{section.training.num_steps}"
            )
        _likelihood_config(config, dataset, parsed)


# -- the models -----------------------------------------------------------------------------


def converted_model(model_fn, prediction: str, schedule, target_prediction: str,
                    target_schedule, sigma_data: float):
    """A model ``(x, t) -> target_prediction`` in ``target_schedule`` that is the given
    model in another schedule and output, by convert.py alone (e.g. RF velocity -> VP score)."""
    denoiser = convert.as_ve_denoiser(model_fn, prediction, schedule, sigma_data)
    return convert.as_model(denoiser, target_prediction, target_schedule, sigma_data)


def _likelihood_config(config, dataset: str, experiment) -> LikelihoodConfig:
    """The ODE's settings; discrete data scored by the convention their training matches."""
    nll = config[dataset].nll
    discrete = dataset == "digits"
    dequantization = likelihood.matched_dequantization(
        discrete and experiment.image_data.dequantize)
    return LikelihoodConfig(
        divergence=nll.divergence, num_probes=nll.num_probes, rtol=nll.rtol, atol=nll.atol,
        error_norm=nll.error_norm, num_levels=digits.NUM_LEVELS if discrete else None,
        dequantization=dequantization,
    )


def _bound_config(config, dataset: str, ode: LikelihoodConfig | None = None) -> BoundConfig:
    num_times = config[dataset].bound.num_times
    if ode is None:
        return BoundConfig(num_times=num_times)
    return BoundConfig.like(ode, num_times=num_times)


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
    return [jnp.asarray(x[i:i + size]) for i in range(0, len(x), size)]


class _Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    def add(self, name: str, start: float) -> None:
        self.add_seconds(name, time.perf_counter() - start)

    def add_seconds(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds


def dataset_plan(config, dataset: str) -> tuple[list[int], tuple[str, ...]]:
    """The seeds and variants trained on a data set (the digits may use fewer)."""
    num_seeds, variants = config.num_seeds, tuple(config.variants)
    if dataset == "digits":
        num_seeds = min(num_seeds, config.digits_num_seeds)
        variants = tuple(v for v in variants if v in config.digits_variants)
    return [config.seed + i for i in range(num_seeds)], variants


def train_with_snapshots(experiment, network, workdir: pathlib.Path, steps) -> tuple[dict, float]:
    """Train through the library and keep the evaluation (EMA) params at each of ``steps``
    (every compiled call ends on a multiple of ``steps_per_call``). Returns ``{step: params}``
    and the seconds taken, compilation included."""
    snapshots, wanted = {}, set(steps)

    def keep(state):
        step = int(state.step)
        if step in wanted:
            snapshots[step] = jax.device_get(experiment.eval_params(state))

    shutil.rmtree(workdir, ignore_errors=True)  # never resume a stale run
    start = time.perf_counter()
    training.train(
        str(workdir), network, experiment.parameterization, experiment.loss,
        experiment.optimizer, experiment.training, experiment.dataset_fn, experiment.data_shape,
        console=False, make_batches=experiment.make_batches, after_call=keep,
    )
    return snapshots, time.perf_counter() - start


class _Measures:
    """The compiled measurements of one (model, network), shared by its runs and steps."""

    def __init__(self, config, dataset: str, experiment, network):
        model = experiment.parameterization
        apply_fn = model.model_apply(network.apply)
        self.ode_config = _likelihood_config(config, dataset, experiment)
        self.bound_config = _bound_config(config, dataset, self.ode_config)
        self.likelihood_fn = make_likelihood_fn(apply_fn, model, self.ode_config)
        self.bound_fn = make_bound_fn(apply_fn, model, self.bound_config)
        self.excess_fn = (make_excess_fn(apply_fn, model, self.bound_config, BAND_EDGES)
                          if dataset == "mixture" else None)
        self.network, self.experiment = network, experiment


def _exact_reference(config, experiment, test_x, keys) -> dict:
    """The exact model's figures on the test points: its bound with the bound's own draws (a
    paired reference) and the true ``-log p_{t_min}`` (the ODE's reference), in bits/dim."""
    mixture = toy.exact_density(MIXTURE)
    model = experiment.parameterization

    def oracle(mix, x, t):
        return mix.predict(x, t, model.schedule, model.prediction, model.sigma_data)

    bound = make_bound_fn(oracle, model, _bound_config(config, "mixture"))(
        mixture, jnp.asarray(test_x), keys["bound"])
    return {"bound_bpd": np.asarray(bound.bits_per_dim, np.float64),
            "true_nll_bpd": toy_eval.exact_nll_bits_per_dim(MIXTURE, jnp.asarray(test_x),
                                                             experiment.schedule)}


def _measure(config, dataset, measures: _Measures, params, test_x, keys, reference,
             with_ode: bool) -> dict:
    """Every figure of one set of params (one run at one step), bits/dim."""
    x = jnp.asarray(test_x)
    out = {}
    bound = measures.bound_fn(params, x, keys["bound"])
    bpd = np.asarray(bound.bits_per_dim, np.float64)
    dim = math.prod(test_x.shape[1:])
    out["bound"] = float(bpd.mean())
    out["bound_se"] = float(bpd.std(ddof=1) / math.sqrt(bpd.size))
    out["bound_mc_se"] = float(np.asarray(bound.standard_error).mean() / (dim * math.log(2)))
    if dataset == "mixture":
        # The bound's key: the same times and noise as the bound (and the exact model's bound).
        excess = measures.excess_fn(params, x, keys["bound"], toy.exact_density(MIXTURE))
        out.update(excess_bits_per_dim(excess, dim, BAND_EDGES))
        gap = bpd - reference["bound_bpd"]
        out["bound_excess"] = float(gap.mean())  # paired: the same draws as the exact bound
        out["bound_excess_se"] = float(gap.std(ddof=1) / math.sqrt(gap.size))
        # Two estimates of J - J* from the same draws: they differ by the cross term
        # 2 w <D_theta - D*, D* - x0>, of mean zero over the data.
        cross = gap - np.asarray(excess.total, np.float64) / (dim * math.log(2))
        out["cross_z"] = float(cross.mean() / (cross.std(ddof=1) / math.sqrt(cross.size)))
    if with_ode:
        nll = evaluate_likelihood(measures.likelihood_fn, params,
                                  _batches(test_x, config[dataset].nll.batch_size), keys["ode"])
        out["ode"] = nll["bits_per_dim"]
        out["ode_se"] = nll["bits_per_dim_standard_error"]
        out["ode_nfe"] = nll["nfe"]
        out["ode_unsolved"] = nll["unsolved_batches"]
        if dataset == "mixture":
            out["ode_excess"] = out["ode"] - reference["true_nll_bpd"]
    return out


def _run_dataset(config, dataset: str, path: pathlib.Path, timer: _Timer) -> dict:
    seeds, variants = dataset_plan(config, dataset)
    section = config[dataset]
    steps = tuple(section.eval_steps)
    test_x = _test_data(config, dataset)
    keys = {"ode": common.stream_key(config.seed, 6, 1),
            "bound": common.stream_key(config.seed, 6, 5)}
    sample_key = common.stream_key(config.seed, 6, 2)
    quality_key = common.stream_key(config.seed, 6, 3)
    start = time.perf_counter()
    floor = _mixture_floor(config) if dataset == "mixture" else None
    timer.add("sampling + quality", start)
    runs, references, rf_ml, shared = [], {}, [], {}
    for model in config.models:
        for variant in variants:
            for seed in seeds:
                experiment = experiment_lib.parse(
                    library_config(config, dataset, model, variant, seed))
                key = (model, variant == "ml_scaled")
                if key not in shared:  # one compilation per (model, network)
                    shared[key] = _Measures(config, dataset, experiment,
                                            network_for(experiment, variant))
                measures = shared[key]
                run_dir = path / "runs" / dataset / f"{model}_{variant}" / f"seed{seed}"
                snapshots, seconds = train_with_snapshots(
                    experiment, measures.network, run_dir, steps)
                timer.add_seconds("train (incl. compile)", seconds)
                start = time.perf_counter()
                if dataset == "mixture" and model not in references:
                    references[model] = _exact_reference(config, experiment, test_x, keys)
                curve = []
                for step in steps:
                    with_ode = step == steps[-1] or variant in section.ode_curve_variants
                    curve.append({"step": step, **_measure(
                        config, dataset, measures, snapshots[step], test_x, keys,
                        references.get(model), with_ode)})
                timer.add("measurements (J - J*, bound, ODE)", start)
                start = time.perf_counter()
                quality, samples = _sample_quality(config, dataset, measures,
                                                   snapshots[steps[-1]], sample_key,
                                                   quality_key, floor)
                timer.add("sampling + quality", start)
                runs.append({"model": model, "variant": variant, "seed": seed,
                             "curve": curve, "quality": quality, "train_seconds": seconds,
                             "samples": samples[:2048] if seed == seeds[0] else None})
                if model == "rf_velocity" and variant == "ml":
                    rf_ml.append((measures, snapshots[steps[-1]], seed))
    out = {"steps": steps, "runs": runs, "floor": floor,
           "summary": summarise(runs, config.alpha),
           "reference": {m: {"bound_bpd": float(r["bound_bpd"].mean()),
                             "true_nll_bpd": r["true_nll_bpd"]}
                         for m, r in references.items()}}
    if dataset == "mixture" and rf_ml:
        start = time.perf_counter()
        out["identity"] = objective_identity(config, rf_ml[0], test_x, keys)
        timer.add("objective identity", start)
    if dataset in config.conversion.datasets and rf_ml:
        start = time.perf_counter()
        out["conversion"] = _conversion(config, dataset, rf_ml, sample_key, quality_key, floor)
        timer.add("conversion (sampling + quality)", start)
    return out


# -- statistics ---------------------------------------------------------------------------------


def paired_t(a, b, alpha: float = 0.05) -> dict:
    """Paired t-test of ``a - b`` over seeds (the unit), ``dof = n - 1``: the mean difference,
    its sd, ``t``, the two-sided p-value and the ``1 - alpha`` confidence interval of the mean
    difference (Student's t quantile with ``n - 1`` degrees of freedom)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    n = d.size
    mean, sd = float(d.mean()), float(d.std(ddof=1)) if n > 1 else 0.0
    if n < 2:
        return {"mean": mean, "sd": sd, "t": math.nan, "dof": 0, "p": math.nan,
                "ci": (math.nan, math.nan)}
    if sd > 0:
        t = mean / (sd / math.sqrt(n))
    else:  # identical differences: no spread to compare with
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    p = float(2 * stats.t.sf(abs(t), n - 1)) if math.isfinite(t) else 0.0
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "t": float(t), "dof": n - 1, "p": p,
            "ci": (mean - half, mean + half)}


def holm(pvalues) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (same order as given): a test is
    significant at family-wise level ``alpha`` when its adjusted p-value is below ``alpha``."""
    p = np.asarray(pvalues, np.float64)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (p.size - rank) * p[i]))
        adjusted[i] = running
    return [float(v) for v in adjusted]


def rate(steps, values) -> float:
    """``r`` in ``values ~ steps^-r``: least squares of ``log values`` on ``log steps``."""
    values = np.maximum(np.asarray(values, np.float64), 1e-12)
    slope = np.polyfit(np.log(np.asarray(steps, np.float64)), np.log(values), 1)[0]
    return float(-slope)


METRICS = ("excess", "bound_excess", "ode_excess", "bound", "ode")


def verdict_family(tests: dict, variants, models, metric: str) -> list[str]:
    """The tests the verdict draws conclusions from (one Holm family): at the last step, every
    pair of models on ``metric`` within each variant, the ML rows' rates, and each control
    variant against the ML objective (``metric`` and the ODE NLL) per model."""
    keys = []
    for variant in variants:
        keys += [f"{variant}: {a} - {b}: {metric}" for a, b in itertools.combinations(models, 2)]
    keys += [f"ml: {a} - {b}: rate" for a, b in itertools.combinations(models, 2)]
    for variant in variants:
        if variant != "ml" and "ml" in variants:
            keys += [f"{m}: {variant} - ml: {k}" for k in (metric, "ode") for m in models]
    return [k for k in keys if k in tests and math.isfinite(tests[k]["p"])]


def summarise(runs, alpha: float) -> dict:
    """Per (variant, model): mean and sd over seeds of every metric at every step; the rate of
    ``J - J*``; at the last step, paired t-tests between models and against the ML variant.
    Every test carries its own (uncorrected) p-value; the tests of ``verdict_family`` also a
    Holm-adjusted one over that family (``p_holm``), which the verdict's conclusions use."""
    by = {}
    for r in runs:
        by.setdefault((r["variant"], r["model"]), []).append(r)
    rows = {}
    for (variant, model), rs in by.items():
        steps = [c["step"] for c in rs[0]["curve"]]
        row = {"variant": variant, "model": model, "seeds": [r["seed"] for r in rs],
               "steps": steps, "curves": {}}
        for metric in (*METRICS, "ode_se", "bound_se", "bound_mc_se"):
            curve = []
            for i in range(len(steps)):
                values = [r["curve"][i].get(metric) for r in rs]
                curve.append(None if any(v is None for v in values) else common.mean_sd(values))
            row["curves"][metric] = curve
        last = rs[0]["curve"][-1]
        row["bands"] = {k: common.mean_sd([r["curve"][-1][k] for r in rs])
                        for k in last if k.startswith("excess_") and k != "excess_standard_error"}
        if "excess" in last:
            rates = [rate(steps, [c["excess"] for c in r["curve"]]) for r in rs]
            row["rate"] = common.mean_sd(rates)
            row["rates"] = rates
            # Seeds whose J - J* fell from the first measured step to the last.
            row["falling_seeds"] = sum(r["curve"][-1]["excess"] < r["curve"][0]["excess"]
                                       for r in rs)
        row["quality"] = common.mean_sd([r["quality"]["ratio"] for r in rs])
        row["train_seconds"] = float(np.mean([r["train_seconds"] for r in rs]))
        rows[f"{variant}/{model}"] = row
    tests = {}
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    models = list(dict.fromkeys(r["model"] for r in runs))

    def last(variant, model, metric):
        return [r["curve"][-1].get(metric) for r in by[variant, model]]

    for variant in variants:
        for a, b in itertools.combinations(models, 2):
            for metric in METRICS:
                va, vb = last(variant, a, metric), last(variant, b, metric)
                if None not in va and None not in vb:
                    tests[f"{variant}: {a} - {b}: {metric}"] = paired_t(va, vb, alpha)
            if "rate" in rows[f"{variant}/{a}"]:
                tests[f"{variant}: {a} - {b}: rate"] = paired_t(
                    rows[f"{variant}/{a}"]["rates"], rows[f"{variant}/{b}"]["rates"], alpha)
    for variant in variants:
        if variant == "ml" or "ml" not in variants:
            continue
        for model in models:
            for metric in ("excess", "bound", "ode", "ode_excess"):
                va, vb = last(variant, model, metric), last("ml", model, metric)
                if None not in va and None not in vb:
                    tests[f"{model}: {variant} - ml: {metric}"] = paired_t(va, vb, alpha)
    for t in tests.values():
        t["significant"] = bool(t["p"] < alpha) if math.isfinite(t["p"]) else False
    metric = "excess" if any("excess" in r["curve"][-1] for r in runs) else "bound"
    family = verdict_family(tests, variants, models, metric)
    for key, adjusted in zip(family, holm([tests[k]["p"] for k in family]), strict=True):
        tests[key]["p_holm"] = adjusted
        tests[key]["significant_holm"] = adjusted < alpha
    return {"rows": rows, "tests": tests, "alpha": alpha, "family": family, "metric": metric}


# -- the objective identity ---------------------------------------------------------------------


def objective_identity(config, rf_run, test_x, keys) -> dict:
    """One denoiser (the ML-trained RF velocity network), its ML objective computed in each
    model's coordinates and output (converted by convert.py alone) with the same draws: one
    number if the objectives are one. Returns the three values (nats/example) and their
    largest relative difference."""
    measures, params, _ = rf_run
    rf_model = measures.experiment.parameterization
    values = {}
    for name, (schedule_name, prediction, _, _) in MODELS.items():
        target = get_schedule(schedule_name,
                              **dict(zip(("t_min", "t_max"),
                                         schedule_range(schedule_name, config.sigma_ve_range),
                                         strict=True)))
        model = Parameterization(target, prediction, rf_model.sigma_data)

        def apply_fn(p, x, t, model=model):
            rf_fn = rf_model.model_fn(bind(measures.network.apply, p))
            return converted_model(rf_fn, rf_model.prediction, rf_model.schedule,
                                   model.prediction, model.schedule, model.sigma_data)(x, t)

        result = make_bound_fn(apply_fn, model, _bound_config(config, "mixture"))(
            params, jnp.asarray(test_x), keys["bound"])
        values[name] = float(np.mean(np.asarray(result.diffusion, np.float64)))
    spread = max(values.values()) - min(values.values())
    return {"values": values, "max_relative_difference": spread / abs(np.mean(list(
        values.values())))}


# -- quality and conversion ---------------------------------------------------------------------


def _sample_quality(config, dataset, measures, params, sample_key, quality_key, floor):
    experiment = measures.experiment
    shape = (config[dataset].quality.num_samples, *experiment.data_shape)
    sampler = evaluate.make_sampler(measures.network.apply, experiment.parameterization,
                                    experiment.sampler, shape)
    samples, _ = sampler(params, sample_key)
    samples = np.asarray(samples)
    return _quality(config, dataset, samples, quality_key, experiment, floor), samples


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
    """``{"value", "floor", "ratio"}``: SWD or digits Frechet distance, its floor, their ratio."""
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


def _conversion(config, dataset: str, rf_runs, sample_key, quality_key, floor) -> dict:
    """RF's own probability-flow Euler vs the converted VP score model's reverse SDE."""
    measures = rf_runs[0][0]
    experiment, network = measures.experiment, measures.network
    rf_param = experiment.parameterization
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
    test = paired_t([r["converted"]["ratio"] for r in per_seed],
                    [r["own"]["ratio"] for r in per_seed])
    return {
        "nfe": nfe, "grid": grid, "per_seed": per_seed,
        "own_ratio": common.mean_sd([r["own"]["ratio"] for r in per_seed]),
        "converted_ratio": common.mean_sd([r["converted"]["ratio"] for r in per_seed]),
        "test": test,
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
        r = dict(r)
        r["runs"] = [{k: v for k, v in run.items() if k != "samples"} for run in r["runs"]]
        if "conversion" in r:
            r["conversion"] = {k: v for k, v in r["conversion"].items() if k != "samples"}
        out["datasets"][dataset] = r
    return out


QUALITY_NAME = {"mixture": "SWD / floor", "digits": "digits Frechet / floor"}


def _describe(config, dataset: str) -> str:
    section = config[dataset]
    tr, nll = section.training, section.nll
    seeds, _ = dataset_plan(config, dataset)
    if dataset == "mixture":
        data = (f"ring8 (8 Gaussians, radius 2, std 0.1); residual MLP width "
                f"{section.model.width}, {section.model.num_blocks} blocks")
        held_out = f"{nll.examples} fresh exact samples of the mixture"
    else:
        data = (f"scikit-learn 8x8 digits (1500 train images, trained uniformly dequantised); "
                f"U-Net {section.model.channels} channels, mult "
                f"{tuple(section.model.channel_mult)}, {section.model.num_blocks} block(s)")
        held_out = (f"{nll.examples} test-split images, uniformly dequantised over "
                    f"{digits.NUM_LEVELS} levels (the bins the training data filled)")
    trace = ("exact trace" if nll.divergence == "exact"
             else f"Hutchinson trace, {nll.num_probes} probe(s)")
    return (
        f"**{dataset}**: {data}; {tr.num_steps} Adam steps of batch {tr.batch_size}, cosine "
        f"learning-rate decay, EMA {tuple(tr.ema_decays)[0]} params evaluated at steps "
        f"{tuple(section.eval_steps)}; gradient clipping "
        f"{'off' if not config.grad_clip else config.grad_clip}; every schedule cut to sigma_ve "
        f"in {tuple(config.sigma_ve_range)}. {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}); a "
        f"seed fixes the initial weights, data, noise levels and noise of every model. On "
        f"{held_out}, the same for every model, step and seed: "
        + ("`J - J*` (exact denoiser), " if dataset == "mixture" else "")
        + f"the SDE bound ({section.bound.num_times} time draws per example, ML proposal) and "
        f"the probability-flow ODE NLL ({trace}, rtol {nll.rtol:g}), all in bits/dim. "
        "± is the sd over seeds."
    )


def _fmt_curve(curve, digits=3) -> str:
    return "" if curve is None else common.fmt_pm(*curve, digits=digits)


def _report(config, results) -> list[str]:
    sections = []
    for dataset, out in results["datasets"].items():
        summary = out["summary"]
        rows = summary["rows"]
        steps = out["steps"]
        sections.append(_describe(config, dataset))
        curve_metric = "excess" if dataset == "mixture" else "bound"
        label = "J - J*" if dataset == "mixture" else "SDE bound"
        header = ["variant", "model (schedule, output)", *[f"{label} @ {s}" for s in steps]]
        if dataset == "mixture":
            header.append("rate r (J - J* ~ steps^-r)")
        table = []
        for row in rows.values():
            cells = [VARIANTS[row["variant"]], _model_name(row["model"])]
            cells += [_fmt_curve(c) for c in row["curves"][curve_metric]]
            if dataset == "mixture":
                cells.append(common.fmt_pm(*row["rate"]))
            table.append(cells)
        sections.append(f"Learning curves ({dataset}): {label} in bits/dim, mean ± sd over "
                        "seeds.\n\n" + common.markdown_table(header, table))
        ode_rows = [row for row in rows.values()
                    if all(c is not None for c in row["curves"]["ode"])]
        if ode_rows and len(steps) > 1:
            name = "ODE NLL - true NLL" if dataset == "mixture" else "ODE NLL"
            metric = "ode_excess" if dataset == "mixture" else "ode"
            header = ["variant", "model", *[f"{name} @ {s}" for s in steps]]
            if dataset == "mixture":
                header += [f"bound - exact bound @ {s}" for s in steps]
            table = []
            for row in ode_rows:
                cells = [VARIANTS[row["variant"]], _model_name(row["model"])]
                cells += [_fmt_curve(c) for c in row["curves"][metric]]
                if dataset == "mixture":
                    cells += [_fmt_curve(c) for c in row["curves"]["bound_excess"]]
                table.append(cells)
            sections.append(f"The two likelihoods along training ({dataset}), bits/dim.\n\n"
                            + common.markdown_table(header, table))
        sections.append(_final_table(dataset, out, steps[-1]))
        sections.append(_verdict(config, dataset, out))
        if "conversion" in out:
            sections.append(_conversion_report(dataset, out["conversion"]))
    seconds = results["seconds"]
    sections.append("Where the time went: " + ", ".join(
        f"{k} {v:.0f} s" for k, v in seconds.items()) + " (the first run of each model and "
        "network includes its compilation).")
    return sections


def _model_name(model: str) -> str:
    schedule, prediction, _, _ = MODELS[model]
    return f"{model} ({schedule}, {prediction})"


def _final_table(dataset: str, out, last_step: int) -> str:
    rows = out["summary"]["rows"]
    mixture = dataset == "mixture"
    header = ["variant", "model"]
    if mixture:
        header += ["J - J*", *[f"J - J* σ {b}" for b in band_names(BAND_EDGES)],
                   "bound - exact bound (paired)"]
    header += ["SDE bound", "bound MC SE", "ODE NLL", "ODE test SE"]
    if mixture:
        header.append("ODE - true")
    header += [QUALITY_NAME[dataset], "train s / run"]
    table = []
    for row in rows.values():
        c = {k: v[-1] for k, v in row["curves"].items()}
        cells = [VARIANTS[row["variant"]], _model_name(row["model"])]
        if mixture:
            cells += [_fmt_curve(c["excess"]),
                      *[_fmt_curve(row["bands"][f"excess_{b}"]) for b in band_names(BAND_EDGES)],
                      _fmt_curve(c["bound_excess"])]
        cells += [_fmt_curve(c["bound"], 4), common.fmt(c["bound_mc_se"][0], 2),
                  _fmt_curve(c["ode"], 4), common.fmt(c["ode_se"][0], 2)]
        if mixture:
            cells.append(_fmt_curve(c["ode_excess"]))
        cells += [common.fmt_pm(*row["quality"]), f"{row['train_seconds']:.1f}"]
        table.append(cells)
    text = (f"At the last step ({last_step}), bits/dim; 'bound MC SE' is one example's Monte "
            "Carlo standard error (the test mean averages it over the points), 'ODE test SE' "
            "the test set's standard error of one seed's mean.\n\n"
            + common.markdown_table(header, table))
    if mixture:
        ref = next(iter(out["reference"].values()))
        text += (f"\n\nThe exact model on the same points: its SDE bound "
                 f"{ref['bound_bpd']:.4f}, its ODE NLL (the true -log p at t_min) "
                 + ", ".join(f"{m}: {r['true_nll_bpd']:.4f}" for m, r in out["reference"].items())
                 + f" bits/dim. SWD floor {common.fmt_pm(*out['floor'])}.")
    return text


def _t_text(t: dict) -> str:
    text = (f"{t['mean']:+.4f} ± {t['sd']:.4f} (95% CI {t['ci'][0]:+.4f} to "
            f"{t['ci'][1]:+.4f}), t({t['dof']}) = {t['t']:.2f}, p = {t['p']:.2g}")
    if "p_holm" in t:
        text += f", Holm p = {t['p_holm']:.2g}"
    return text


def _pair_texts(tests: dict, models, seeds: int, key: str, separator: str) -> list[str]:
    """``"a - b<separator><t-test> (established | not resolved ...)"`` for every pair of models
    with a test ``key.format("a - b")``."""
    pairs = []
    for a, b in itertools.combinations(models, 2):
        t = tests.get(key.format(f"{a} - {b}"))
        if t:
            word = "established" if _decided(t) else f"not resolved with {seeds} seeds"
            pairs.append(f"{a} - {b}{separator}{_t_text(t)} ({word})")
    return pairs


def _decided(t: dict) -> bool:
    """A difference the verdict calls established: significant after Holm over its family."""
    return bool(t.get("significant_holm", t["significant"]))


def _verdict(config, dataset: str, out) -> str:
    summary = out["summary"]
    rows, tests, alpha = summary["rows"], summary["tests"], summary["alpha"]
    seeds = len(next(iter(rows.values()))["seeds"])
    models = list(dict.fromkeys(r["model"] for r in rows.values()))
    variants = list(dict.fromkeys(r["variant"] for r in rows.values()))
    last = out["steps"][-1]
    family = summary.get("family", [])
    lines = [
        f"Verdict ({dataset}). Seeds are the unit: paired t-tests over {seeds} seeds (a seed "
        f"fixes every model's initial weights, data, noise levels and noise), t with {seeds - 1} "
        f"degrees of freedom, two-sided, 95% confidence intervals of the mean difference. The "
        f"{len(family)} tests below form one family: a difference is called established when "
        f"its Holm-adjusted p is below {alpha:g} (the family-wise error rate); otherwise it is "
        f"'not resolved with {seeds} seeds', which is not evidence of equality: the interval "
        "says how large a difference the data still allow."]
    if "identity" in out:
        ident = out["identity"]
        lines.append(
            "- **Objective identity (exact; tested by computation, not by training).** One "
            f"denoiser (the ML-trained RF velocity network, seed {config.seed}) has the ML "
            "objective "
            + ", ".join(f"{v:.6g}" for v in ident["values"].values())
            + " nats/example computed as a VP score, a VE eps and an RF velocity model "
            f"(converted by convert.py, the same draws): largest relative difference "
            f"{ident['max_relative_difference']:.1e} (float32 rounding). The three losses are one "
            "objective; what differs below is how a network reaches its minimum.")
    metric = summary.get("metric", "excess" if dataset == "mixture" else "bound")
    name = "J - J*" if metric == "excess" else "the SDE bound"
    for variant in variants:
        pairs = _pair_texts(tests, models, seeds, f"{variant}: {{}}: {metric}", ": ")
        values = ", ".join(f"{m} {common.fmt_pm(*rows[f'{variant}/{m}']['curves'][metric][-1])}"
                           for m in models)
        lines.append(f"- **{VARIANTS[variant]}**, {name} at step {last}: {values}. "
                     + "; ".join(pairs) + ".")
    if metric == "excess" and "ml" in variants:
        ratios, falling = [], []
        for m in models:
            row = rows[f"ml/{m}"]
            curve = row["curves"]["excess"]
            ratios.append(f"{m} {curve[0][0]:.3g} -> {curve[-1][0]:.3g}")
            falling.append(row["falling_seeds"])
        z = np.asarray([c["cross_z"] for r in out["runs"] for c in r["curve"]])
        every = all(f == seeds for f in falling)
        lines.append(
            "- **Equal optimum (tested along training).** Under the ML objective J - J* "
            + ("falls for every model in every seed" if every else
               "does not fall for every model and seed (falling in "
               + ", ".join(f"{m} {f}/{seeds}" for m, f in zip(models, falling, strict=True))
               + " seeds)")
            + " (" + ", ".join(ratios) + " bits/dim, mean from the first to the last step). "
            "The SDE bound falls with it: its excess over the exact model's bound (same points "
            "and draws) is a second estimate of the same J - J*, differing by a cross term of "
            f"mean zero; over all {z.size} (run, step) cases the difference's z-score has mean "
            f"{z.mean():+.2f} and sd {z.std(ddof=1):.2f}, |z| <= 2 in {np.mean(np.abs(z) <= 2):.0%}"
            " (the cases share test points and draws, so they are not independent).")
        rates = ", ".join(f"{m} r = {common.fmt_pm(*rows[f'ml/{m}']['rate'])}" for m in models)
        pairs = _pair_texts(tests, models, seeds, "ml: {}: rate", " ")
        lines.append(
            "- **Optimisation speed (ML objective, measured).** The rate r is the least-squares "
            "slope of -log(J - J*) on log(step) over the grid, per seed, along one run whose "
            "learning rate decays by a cosine to the last step (a property of this schedule and "
            f"budget, not an asymptotic rate): {rates}. " + "; ".join(pairs) + ".")
    for variant in variants:
        if variant == "ml" or "ml" not in variants:
            continue
        for what, key in ((name, metric), ("ODE NLL", "ode")):
            parts = [f"{m} {_t_text(t)}" + (" (established)" if _decided(t) else "")
                     for m in models if (t := tests.get(f"{m}: {variant} - ml: {key}"))]
            if parts:
                lines.append(f"- {VARIANTS[variant]} minus ML objective, {what} at step {last}: "
                             + "; ".join(parts) + ".")
    lines.append(_conclusion(dataset, out, metric, seeds))
    return "\n".join(lines)


def _conclusion(dataset: str, out, metric: str, seeds: int) -> str:
    """One paragraph that answers the claim from the tests above (nothing is asserted that a
    test did not establish)."""
    summary = out["summary"]
    rows, tests = summary["rows"], summary["tests"]
    variants = list(dict.fromkeys(r["variant"] for r in rows.values()))
    models = list(dict.fromkeys(r["model"] for r in rows.values()))
    last = out["steps"][-1]
    name = "J - J*" if metric == "excess" else "SDE bound"
    parts = []
    if "identity" in out:
        parts.append("the three losses are one objective (exact, by computation)")
    if "ml" in variants:
        pairs = [(a, b, tests[k]) for a, b in itertools.combinations(models, 2)
                 if (k := f"ml: {a} - {b}: {metric}") in tests]
        apart = [f"{a} - {b}" for a, b, t in pairs if _decided(t)]
        if pairs and not apart:
            parts.append(f"under the ML objective the {len(models)} parameterisations' {name} "
                         f"at step {last} are not distinguishable with {seeds} seeds (the gaps "
                         "are inside the seed spread: the intervals above bound them)")
        elif pairs:
            parts.append(
                f"under the ML objective they have not met by step {last}: {len(apart)} of "
                f"{len(pairs)} pairwise {name} gaps are established ({', '.join(apart)}), so "
                "equal results after equal training is not what this budget shows")
        if metric == "excess":
            falling = all(rows[f"ml/{m}"]["falling_seeds"] == seeds for m in models)
            parts.append("every J - J* " + ("falls" if falling else "does not all fall")
                         + " toward the common minimum 0 along training, with the bound "
                         "tracking it (a common optimum approached, not reached)")
            faster = []
            for a, b in itertools.combinations(models, 2):
                t = tests.get(f"ml: {a} - {b}: rate")
                if t and _decided(t):
                    hi, lo = (b, a) if t["mean"] < 0 else (a, b)
                    faster.append(f"r of {hi} > r of {lo}")
            if faster:
                parts.append("the rates differ (" + ", ".join(faster) + "): optimisation speed "
                             "depends on the parameterisation")
        if "ml_scaled" in variants:
            changed = [m for m in models
                       if (t := tests.get(f"{m}: ml_scaled - ml: {metric}")) and _decided(t)]
            parts.append("the conditioning control (unit-variance output) "
                         + (f"changes {', '.join(changed)}" if changed else
                            "changes no model established")
                         + f" at step {last}")
    text = "; ".join(parts)
    return (f"**Verdict ({dataset}).** " + text[:1].upper() + text[1:] + "."
            if parts else f"**Verdict ({dataset}).** Nothing to conclude from these rows.")


def _conversion_report(dataset: str, c: dict) -> str:
    t = c["test"]
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
        "(convert.as_ve_denoiser then convert.as_model), last step.\n\n"
        + common.markdown_table(header, rows)
        + f"\n\n- Converted minus own, paired over seeds: {_t_text(t)}. The same VP-SDE sampler "
        f"run on the RF model directly gives samples within "
        f"{c['max_abs_converted_minus_direct']:.1e} of the converted model's (float32 rounding, "
        "accumulated over the steps): the conversion is exact."
    )


def _figure(path, config, dataset: str, out) -> None:
    plt = common.pyplot()
    rows = out["summary"]["rows"]
    variants = list(dict.fromkeys(r["variant"] for r in rows.values()))
    models = list(dict.fromkeys(r["model"] for r in rows.values()))
    panels = [(v, "excess" if dataset == "mixture" else "bound") for v in variants]
    if dataset == "mixture" and "ml" in variants:
        panels += [("ml", "bound_excess"), ("ml", "ode_excess")]
    titles = {"excess": "J - J* (bits/dim)", "bound": "SDE bound (bits/dim)",
              "bound_excess": "SDE bound - exact bound", "ode_excess": "ODE NLL - true NLL"}
    cols = min(len(panels), 3)
    fig, axes = plt.subplots(math.ceil(len(panels) / cols), cols,
                             figsize=(4.6 * cols, 3.8 * math.ceil(len(panels) / cols)),
                             squeeze=False)
    for ax, (variant, metric) in zip(axes.flat, panels, strict=False):
        for i, model in enumerate(models):
            row = rows.get(f"{variant}/{model}")
            if row is None:
                continue
            points = [(s, c) for s, c in zip(row["steps"], row["curves"][metric], strict=True)
                      if c is not None]
            if not points:
                continue
            s = np.asarray([p[0] for p in points])
            mean = np.asarray([p[1][0] for p in points])
            sd = np.asarray([p[1][1] for p in points])
            ax.plot(s, mean, "o-", color=f"C{i}", label=model, ms=3)
            ax.fill_between(s, mean - sd, mean + sd, color=f"C{i}", alpha=0.2)
        ax.set_xscale("log")
        ax.set_xticks(list(out["steps"]), [str(s) for s in out["steps"]], fontsize=7)
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        if metric in ("excess",):
            ax.set_yscale("log")
        ax.set_xlabel("training steps")
        ax.set_title(f"{VARIANTS[variant]}: {titles[metric]}", fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    common.save_figure(fig, path, f"one_objective_{dataset}.png")


if __name__ == "__main__":
    common.launch(run, __file__)
