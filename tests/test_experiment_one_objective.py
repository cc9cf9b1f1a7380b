"""Experiment 6 (one objective): its pieces, and a tiny run end to end.

Fast: the conditioning control's output scale is the regression target's standard deviation in
each output kind; the wrapped network is the network times that scale; the paired t-test and the
rate are the textbook ones; the summary's tests have ``seeds - 1`` degrees of freedom; the RF ->
VP score conversion is exact; the ML rows share noise levels; bad configs are named.

Slow: a tiny run (40 steps: its numbers say nothing about the paper's claim; the default-size run
in docs/experiments.md does) writes its table, figure and numbers, every curve is finite, the
objective identity holds to float32 rounding, the SDE bound's excess over the exact bound and
``J - J*`` agree, and the converted model samples like the direct sampler.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffusion_lv import convert
from diffusion_lv import experiment as experiment_lib
from diffusion_lv.models.mlp import MLP
from diffusion_lv.oracle import ring
from diffusion_lv.parameterization import Parameterization, bind
from diffusion_lv.schedules import VP, RectifiedFlow, VEKarras, get_schedule
from experiments import one_objective
from experiments.configs import one_objective as one_objective_config


def test_target_scale_is_the_regression_targets_std():
    sigma_data = 1.4
    t = jnp.asarray([0.1, 0.5, 0.9])
    vp, ve, rf = VP(), VEKarras(), RectifiedFlow()
    np.testing.assert_allclose(
        one_objective.target_scale(Parameterization(vp, "score", sigma_data), t),
        1 / vp.sigma(t), rtol=1e-6)
    np.testing.assert_allclose(
        one_objective.target_scale(Parameterization(ve, "eps", sigma_data), t), 1.0, rtol=1e-6)
    np.testing.assert_allclose(  # RF velocity eps - x0: variance 1 + sigma_data^2
        one_objective.target_scale(Parameterization(rf, "velocity", sigma_data), t),
        math.sqrt(1 + sigma_data**2), rtol=1e-6)
    # And by simulation: the std of the native target over data of that std, at one time.
    model = Parameterization(vp, "velocity", sigma_data)
    key_x, key_e = jax.random.split(jax.random.PRNGKey(0))
    x0 = sigma_data * jax.random.normal(key_x, (200_000, 1))
    eps = jax.random.normal(key_e, (200_000, 1))
    t0 = jnp.full((200_000,), 0.7)
    x_t = vp.alpha(0.7) * x0 + vp.sigma(0.7) * eps
    target = convert.from_x0(x0, "velocity", x_t, t0, vp, sigma_data)
    assert float(jnp.std(target)) == pytest.approx(
        float(one_objective.target_scale(model, 0.7)[0]), rel=0.01)


def test_scaled_output_is_the_network_times_the_scale():
    model = Parameterization(RectifiedFlow(), "velocity", 1.4)
    inner = MLP(width=8, num_blocks=1)
    wrapped = one_objective.ScaledOutput(inner, model)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 2))
    t = jnp.asarray([0.1, 0.3, 0.5, 0.9])
    net_input, c_noise = model.network_inputs(x, t)
    params = wrapped.init(jax.random.PRNGKey(2), net_input, c_noise)
    out = wrapped.apply(params, net_input, c_noise)
    raw = inner.apply({"params": params["params"]["inner"]}, net_input, c_noise)
    np.testing.assert_allclose(out, raw * one_objective.target_scale(model, t)[:, None],
                               rtol=1e-4)


def test_paired_t_and_rate():
    a = np.asarray([1.0, 1.3, 0.9, 1.2, 1.1])
    b = np.asarray([0.8, 1.0, 0.85, 0.9, 1.05])
    t = one_objective.paired_t(a, b)
    reference = stats.ttest_rel(a, b)
    assert t["dof"] == 4
    assert t["t"] == pytest.approx(reference.statistic)
    assert t["p"] == pytest.approx(reference.pvalue)
    ci = reference.confidence_interval(0.95)
    assert t["ci"] == pytest.approx((ci.low, ci.high))
    same = one_objective.paired_t(a, a)
    assert same["t"] == 0.0 and same["p"] == pytest.approx(1.0)
    steps = np.asarray([250, 500, 1000, 2000])
    assert one_objective.rate(steps, 3.0 * steps**-0.7) == pytest.approx(0.7)


def test_holm_is_the_step_down_adjustment():
    # Sorted p = 0.01, 0.02, 0.04 with 3 tests: 0.03, max(0.03, 0.04), max(0.04, 0.04).
    assert one_objective.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert one_objective.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_summary_compares_models_over_seeds():
    runs = []
    for model, scale in (("vp_score", 2.0), ("rf_velocity", 1.0)):
        for seed in range(3):
            curve = [{"step": s, "excess": scale * (1 + 0.1 * seed) * s**-0.5,
                      "bound_excess": 0.0, "bound": 1.0, "bound_se": 0.1, "bound_mc_se": 0.1,
                      "excess_below_0.1": 0.1, "excess_standard_error": 0.01}
                     for s in (100, 200, 400)]
            curve[-1].update(ode=1.0 + seed, ode_se=0.1, ode_excess=0.5)
            runs.append({"model": model, "variant": "ml", "seed": seed, "curve": curve,
                         "quality": {"ratio": 1.0}, "train_seconds": 1.0})
    summary = one_objective.summarise(runs, 0.05)
    row = summary["rows"]["ml/vp_score"]
    assert row["rate"][0] == pytest.approx(0.5)
    assert row["curves"]["ode"][0] is None and row["curves"]["ode"][-1][0] == pytest.approx(2.0)
    test = summary["tests"]["ml: vp_score - rf_velocity: excess"]
    assert test["dof"] == 2 and test["mean"] > 0 and test["significant"]
    assert not summary["tests"]["ml: vp_score - rf_velocity: ode"]["significant"]
    # The verdict's family: J - J* between models and the rates, Holm-adjusted over 2 tests.
    assert summary["family"] == ["ml: vp_score - rf_velocity: excess",
                                 "ml: vp_score - rf_velocity: rate"]
    assert test["p_holm"] == pytest.approx(min(1.0, 2 * test["p"]))
    assert row["falling_seeds"] == 3


def _fake_out(gap: float, seeds: int = 5):
    """Runs of two models whose J - J* differ by ``gap`` times a seed-dependent factor."""
    runs = []
    for model, scale in (("vp_score", 1.0 + gap), ("rf_velocity", 1.0)):
        for seed in range(seeds):
            factor = 1 + 0.2 * ((seed * 7) % 5) / 5
            curve = [{"step": s, "excess": scale * factor * s**-0.5, "bound_excess": 0.0,
                      "bound": 1.0, "cross_z": 0.0} for s in (100, 400)]
            runs.append({"model": model, "variant": "ml", "seed": seed, "curve": curve,
                         "quality": {"ratio": 1.0}, "train_seconds": 1.0})
    return {"steps": (100, 400), "runs": runs, "summary": one_objective.summarise(runs, 0.05)}


def test_verdict_concludes_only_what_the_tests_establish():
    config = one_objective_config.get_config("tiny")
    apart = one_objective._verdict(config, "mixture", _fake_out(1.0))
    assert "t(4) =" in apart and "95% CI" in apart and "Holm p =" in apart
    assert "have not met by step 400: 1 of 1 pairwise J - J* gaps are established" in apart
    together = one_objective._verdict(config, "mixture", _fake_out(0.0))
    assert "not distinguishable with 5 seeds" in together and "established (" not in together
    assert "which is not evidence of equality" in together


def _rf_network(config):
    lib = one_objective.library_config(config, "mixture", "rf_velocity", "ml", 0)
    experiment = experiment_lib.parse(lib)
    params = experiment.network.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
    return experiment, params


def test_converted_model_is_the_converted_prediction(x64):
    """RF velocity -> VP score: the converted model's output at the VP state equals the RF
    prediction converted by convert_prediction, at a few points (float64, exact up to the
    bisection that maps sigma_ve to time); for the exact oracle it is the exact VP score."""
    config = one_objective_config.get_config("tiny")
    experiment, params = _rf_network(config)
    rf = experiment.schedule
    t_min, t_max = one_objective.schedule_range("vp", config.sigma_ve_range)
    vp = get_schedule("vp", t_min=t_min, t_max=t_max)
    sigma_data = experiment.parameterization.sigma_data
    key_x, key_s = jax.random.split(jax.random.PRNGKey(1))
    x_rf = jax.random.normal(key_x, (5, 2), jnp.float64) * 2.0
    s = jax.random.uniform(key_s, (5,), jnp.float64, 0.05, 0.95)

    network = experiment.parameterization.model_fn(bind(experiment.network.apply, params))
    oracle = ring().model_fn(rf, "velocity")
    for name, rf_model in (("network", network), ("oracle", oracle)):
        vp_score = one_objective.converted_model(rf_model, "velocity", rf, "score", vp,
                                                 sigma_data)
        expected, x_vp, t_vp = convert.convert_prediction(
            rf_model(x_rf, s), "velocity", "score", x_rf, s, rf, vp, sigma_data
        )
        got = vp_score(x_vp, t_vp)
        assert got.dtype == jnp.float64, name
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9, err_msg=name)
    truth = ring().score(x_vp, t_vp, vp)
    np.testing.assert_allclose(
        one_objective.converted_model(oracle, "velocity", rf, "score", vp, sigma_data)(x_vp, t_vp),
        truth, rtol=1e-8, atol=1e-8,
    )


def test_ml_rows_share_noise_levels_and_schedules_share_the_range():
    config = one_objective_config.get_config("tiny")
    parsed = {
        (m, v): experiment_lib.parse(one_objective.library_config(config, "mixture", m, v, 0))
        for m in config.models for v in config.variants
    }
    key = jax.random.PRNGKey(3)
    sigma_ml = []
    for (model, variant), experiment in parsed.items():
        schedule, prediction, native, _ = one_objective.MODELS[model]
        assert experiment.parameterization.prediction == prediction
        # sigma_data is the data's std (the ML proposal's Gaussian scale).
        assert experiment.parameterization.sigma_data == pytest.approx(ring().std(), rel=1e-6)
        # float32 round trips are exact up to a few ulps; 1e-5 separates rounding from a range
        # or proposal that differs by O(1).
        assert experiment.schedule.sigma_ve_min == pytest.approx(config.sigma_ve_range[0], 1e-5)
        assert experiment.schedule.sigma_ve_max == pytest.approx(config.sigma_ve_range[1], 1e-5)
        loss = experiment.loss
        if variant in ("ml", "ml_scaled"):
            assert (loss.weighting, loss.time_sampler.name, loss.importance_weighted) == (
                "ml", "ml_importance", True)
            t = loss.time_sampler.sample(key, 64, experiment.parameterization)
            sigma_ml.append(np.asarray(experiment.schedule.sigma_ve(t)))
        else:
            assert (loss.weighting, loss.time_sampler.name, loss.importance_weighted) == (
                native, "uniform", False)
    # The ML proposal lives in log-SNR: the same draws are the same noise levels everywhere.
    for other in sigma_ml[1:]:
        np.testing.assert_allclose(other, sigma_ml[0], rtol=1e-5)


@pytest.mark.parametrize("size", ["default", "digits", "full"])
def test_every_size_passes_its_checks(size):
    """Every size's library configs parse (the digits: trained dequantised and scored by the
    matching convention, whatever the base digits config's own NLL convention is)."""
    config = one_objective_config.get_config(size)
    one_objective.check_config(config)
    if "digits" in config.datasets:
        lib = one_objective.library_config(config, "digits", "vp_score", "ml", 0)
        experiment = experiment_lib.parse(lib)
        assert experiment.image_data.dequantize
        assert one_objective._likelihood_config(config, "digits", experiment).dequantization \
            == "uniform"


@pytest.mark.parametrize("key, value, match", [
    ("datasets", ("mixture", "cifar"), "unknown dataset 'cifar'; valid choices"),
    ("models", ("vp_score", "ve_x0"), "unknown model 've_x0'; valid choices"),
    ("variants", ("ml", "edm"), "unknown variant 'edm'; valid choices"),
    ("models", ("vp_score",), "conversion converts the ML-trained 'rf_velocity' model"),
    ("num_seeds", 0, "num_seeds=0 must be an integer >= 1"),
    ("alpha", 1.5, r"alpha=1.5 must be in \(0, 1\)"),
    ("sigma_ve_range", (1.0, 0.5), "must be 0 < lo < hi"),
])
def test_bad_config_is_named(tmp_path, key, value, match):
    config = one_objective_config.get_config("tiny")
    config[key] = value
    with pytest.raises(ValueError, match=match):
        one_objective.run(config, str(tmp_path))


def test_bad_steps_override_and_size_are_named(tmp_path):
    config = one_objective_config.get_config("tiny")
    config.mixture.eval_steps = (20, 30)
    with pytest.raises(ValueError, match=r"mixture.eval_steps=\(20, 30\) is not valid; valid: "
                                         "increasing multiples of training.steps_per_call=20"):
        one_objective.run(config, str(tmp_path))
    config = one_objective_config.get_config("tiny")
    config.mixture.training.num_steps = 0
    with pytest.raises(ValueError, match=r"config.training.num_steps=0 is not valid"):
        one_objective.run(config, str(tmp_path))
    with pytest.raises(ValueError, match="unknown config size 'huge'; valid choices"):
        one_objective_config.get_config("huge")


# -- end to end (slow) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    config = one_objective_config.get_config("tiny")
    config.variants = ("ml", "ml_scaled")
    workdir = tmp_path_factory.mktemp("one_objective")
    return config, workdir, one_objective.run(config, str(workdir))


@pytest.mark.slow
def test_tiny_run_writes_curves_verdict_and_figure(tiny_run):
    config, workdir, results = tiny_run
    for name in ("table.md", "config.json", "results.json", "one_objective_mixture.png"):
        assert (workdir / name).is_file(), name
    text = (workdir / "table.md").read_text()
    assert text.startswith("## Experiment 6") and "|---" in text
    for needle in ("Learning curves (mixture)", "J - J* @ 20", "The two likelihoods along",
                   "Objective identity (exact", "Equal optimum", "Optimisation speed",
                   "t(1) =", "95% CI", "Holm p =", "**Verdict (mixture).**",
                   "Conversion (mixture)", "ML, unit-variance output (control)"):
        assert needle in text, needle
    out = results["datasets"]["mixture"]
    assert len(out["runs"]) == len(config.models) * len(config.variants) * config.num_seeds
    for run in out["runs"]:
        assert [c["step"] for c in run["curve"]] == list(config.mixture.eval_steps)
        for c in run["curve"]:
            for key in ("excess", "bound", "bound_excess", "cross_z"):
                assert np.isfinite(c[key]), (key, c)
            assert c["excess"] > 0
        assert run["curve"][-1]["ode_unsolved"] == 0 and np.isfinite(run["curve"][-1]["ode"])
    rows = out["summary"]["rows"]
    for row in rows.values():  # the ODE NLL at every step for ode_curve_variants, else the last
        every = row["variant"] in config.mixture.ode_curve_variants
        assert [c is not None for c in row["curves"]["ode"]] == (
            [True] * len(row["steps"]) if every else [False] * (len(row["steps"]) - 1) + [True])
    # The objective identity: one denoiser's ML objective in three coordinates, float32 rounding.
    assert out["identity"]["max_relative_difference"] < 1e-5
    # The conversion is exact: the same VP-SDE run on the RF model directly agrees to rounding.
    assert out["conversion"]["max_abs_converted_minus_direct"] < 1e-3


@pytest.mark.slow
def test_digits_path_runs(tmp_path):
    """The digits branch (U-Net trained dequantised, uniform-bin NLL and bound, Frechet
    distance) end to end at a size that only checks the plumbing."""
    config = one_objective_config.get_config("digits")
    config.num_seeds = 2
    config.models = ("vp_score", "rf_velocity")
    config.digits.model.channels = 8
    config.digits.training.num_steps = 4
    config.digits.training.batch_size = 8
    config.digits.eval_steps = (2, 4)
    config.digits.nll.examples = 8
    config.digits.nll.batch_size = 8
    config.digits.nll.rtol = 1e-2
    config.digits.nll.atol = 1e-2
    config.digits.bound.num_times = 4
    config.digits.quality.num_samples = 16
    config.digits.sampler.nfe = 5
    results = one_objective.run(config, str(tmp_path))
    out = results["datasets"]["digits"]
    assert [(r["model"], r["variant"]) for r in out["runs"]] == [
        (m, "ml") for m in config.models for _ in range(2)]
    for run in out["runs"]:
        last = run["curve"][-1]
        assert np.isfinite(last["ode"]) and np.isfinite(last["bound"])
        assert last["ode_unsolved"] == 0
    assert (tmp_path / "one_objective_digits.png").is_file()
    text = (tmp_path / "table.md").read_text()
    assert "paired t-tests over 2 seeds" in text and "t with 1 degrees of freedom" in text
    assert "**Verdict (digits).**" in text and "SDE bound at step 4" in text
