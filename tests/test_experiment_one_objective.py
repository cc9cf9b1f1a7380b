"""Experiment 6 (one objective) at a tiny size: it runs end to end in-process, writes its table,
figure and numbers; the RF -> VP score conversion it samples is exact; bad configs are named.

The tiny run trains for 40 steps, so its NLLs and distances say nothing about the paper's claim
(the default-size run does); what is checked here would fail if the experiment broke: every row
and verdict is there and finite, the per-seed numbers are what the summaries say, and the
converted model's samples equal the direct run of the same sampler up to float32 rounding.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_lv import convert
from diffusion_lv import experiment as experiment_lib
from diffusion_lv.oracle import ring
from diffusion_lv.parameterization import bind
from diffusion_lv.schedules import get_schedule
from experiments import one_objective
from experiments.configs import one_objective as one_objective_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    config = one_objective_config.get_config("tiny")
    workdir = tmp_path_factory.mktemp("one_objective")
    return config, workdir, one_objective.run(config, str(workdir))


def test_writes_table_rows_and_figure(tiny_run):
    config, workdir, results = tiny_run
    for name in ("table.md", "config.json", "results.json", "one_objective_mixture.png"):
        assert (workdir / name).is_file(), name
    assert (workdir / "one_objective_mixture.png").stat().st_size > 10_000
    text = (workdir / "table.md").read_text()
    assert text.startswith("## Experiment 6") and "|---" in text
    for needle in ("vp_score (vp, score)", "ve_eps (ve, eps)", "rf_velocity (rf, velocity)",
                   "score matching", "denoising (eps)", "flow matching", "ML weighting:",
                   "native weightings:", "Conversion (mixture)", "NLL floor"):
        assert needle in text, needle
    rows = results["datasets"]["mixture"]["rows"]
    assert [(r["model"], r["weighting"]) for r in rows] == [
        (m, w) for m in config.models for w in config.weightings
    ]
    for row in rows:
        nll = [run["nll_bpd"] for run in row["runs"]]
        assert len(nll) == config.num_seeds and np.all(np.isfinite(nll))
        assert row["nll"][0] == pytest.approx(np.mean(nll))
        assert row["nll"][1] == pytest.approx(np.std(nll, ddof=1))
        assert np.isfinite(row["quality_ratio"][0]) and row["quality_ratio"][0] > 0
        assert row["unsolved"] == 0
        # The exact density's figure is below every model's (the floor of a mean over the same
        # points: no model beats the truth by more than a few test-set standard errors).
        assert row["true_nll"] < row["nll"][0] + 4 * row["nll_test_se"]
    # Seeds differ: the training runs are not copies of each other.
    assert len({run["nll_bpd"] for run in rows[0]["runs"]}) == config.num_seeds


def test_agreement_verdict_is_computed_from_the_rows(tiny_run):
    _, _, results = tiny_run
    out = results["datasets"]["mixture"]
    a = out["agreement"]
    means = {r["model"]: r["nll"][0] for r in out["rows"] if r["weighting"] == "ml"}
    assert a["max_difference"] == pytest.approx(max(means.values()) - min(means.values()))
    sds = [r["nll"][1] for r in out["rows"] if r["weighting"] == "ml"]
    se = math.sqrt(np.mean(np.square(sds))) * math.sqrt(2.0 / a["num_seeds"])
    assert a["se_difference"] == pytest.approx(se)
    assert a["agree"] == (a["max_difference"] / se <= one_objective.Z_AGREE)


def test_conversion_samples_equal_the_direct_sampler(tiny_run):
    config, _, results = tiny_run
    c = results["datasets"]["mixture"]["conversion"]
    assert len(c["per_seed"]) == config.num_seeds
    for r in c["per_seed"]:
        assert np.isfinite(r["own"]["ratio"]) and np.isfinite(r["converted"]["ratio"])
    # The converted VP score model is the RF model: the same VP-SDE run on both agrees to
    # float32 rounding of states of order one (a wrong conversion moves samples by O(1)).
    assert c["max_abs_converted_minus_direct"] < 1e-3


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
        (m, w): experiment_lib.parse(one_objective.library_config(config, "mixture", m, w, 0))
        for m in config.models for w in config.weightings
    }
    key = jax.random.PRNGKey(3)
    sigma_ml = []
    for (model, weighting), experiment in parsed.items():
        schedule, prediction, native, _ = one_objective.MODELS[model]
        assert experiment.parameterization.prediction == prediction
        # float32 round trips (sigma_ve -> t in the config, t -> sigma_ve here; the draws below
        # log-SNR -> t -> sigma_ve) are exact up to a few ulps (measured <= 6e-7 relative);
        # 1e-5 (~80 ulps) separates rounding from a range or proposal that differs by O(1).
        assert experiment.schedule.sigma_ve_min == pytest.approx(config.sigma_ve_range[0], 1e-5)
        assert experiment.schedule.sigma_ve_max == pytest.approx(config.sigma_ve_range[1], 1e-5)
        loss = experiment.loss
        if weighting == "ml":
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


@pytest.mark.parametrize("key, value, match", [
    ("datasets", ("mixture", "cifar"), "unknown dataset 'cifar'; valid choices"),
    ("models", ("vp_score", "ve_x0"), "unknown model 've_x0'; valid choices"),
    ("weightings", ("ml", "edm"), "unknown weighting 'edm'; valid choices"),
    ("models", ("vp_score",), "conversion needs the model 'rf_velocity'"),
    ("num_seeds", 0, "num_seeds=0 must be an integer >= 1"),
    ("digits_weightings", ("native", "edm"), "unknown digits weighting 'edm'; valid choices"),
    ("sigma_ve_range", (1.0, 0.5), "must be 0 < lo < hi"),
])
def test_bad_config_is_named(tmp_path, key, value, match):
    config = one_objective_config.get_config("tiny")
    config[key] = value
    with pytest.raises(ValueError, match=match):
        one_objective.run(config, str(tmp_path))


def test_bad_library_override_and_size_are_named(tmp_path):
    config = one_objective_config.get_config("tiny")
    config.mixture.training.num_steps = 0
    with pytest.raises(ValueError, match=r"config.training.num_steps=0 is not valid"):
        one_objective.run(config, str(tmp_path))
    with pytest.raises(ValueError, match="unknown config size 'huge'; valid choices"):
        one_objective_config.get_config("huge")


@pytest.mark.slow
def test_digits_path_runs(tmp_path):
    """The digits branch (U-Net, dequantised test-split NLL, Frechet distance, conversion) end
    to end at a size that only checks the plumbing."""
    config = one_objective_config.get_config("digits")
    config.digits_num_seeds = 1
    config.digits.model.channels = 8
    config.digits.training.num_steps = 3
    config.digits.training.batch_size = 8
    config.digits.nll.examples = 8
    config.digits.nll.batch_size = 8
    config.digits.nll.rtol = 1e-2
    config.digits.nll.atol = 1e-2
    config.digits.quality.num_samples = 16
    config.digits.sampler.nfe = 5
    config.conversion.nfe = 5
    results = one_objective.run(config, str(tmp_path))
    out = results["datasets"]["digits"]
    assert [(r["model"], r["weighting"]) for r in out["rows"]] == [
        (m, "ml") for m in config.models
    ]
    for row in out["rows"]:
        assert np.isfinite(row["nll"][0]) and row["unsolved"] == 0
    assert out["conversion"]["max_abs_converted_minus_direct"] < 1e-3
    assert (tmp_path / "one_objective_digits.png").is_file()
