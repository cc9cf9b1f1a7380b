"""The toy data sets' sample metrics: MMD^2 comes with its floor's mean and spread."""

import jax
import numpy as np
import pytest

from diffusion_lv.eval import toy as toy_eval
from diffusion_lv.eval.config import EvalConfig
from diffusion_lv.oracle import random_anisotropic

NUM, PROJECTIONS, REPEATS = 256, 16, 8


def _reference():
    mixture = random_anisotropic(0, 2, 3)
    return lambda key, n: mixture.sample(key, n)


REFERENCE = _reference()  # one callable: sample_quality compiles once per shape


def test_mmd2_floor_is_the_mean_of_the_floor_draws():
    true = REFERENCE(jax.random.PRNGKey(3), NUM)
    key = jax.random.PRNGKey(4)
    good = toy_eval.sample_quality(true, REFERENCE, key, PROJECTIONS, REPEATS)
    bad = toy_eval.sample_quality(true + 0.5, REFERENCE, key, PROJECTIONS, REPEATS)
    _, _, _, floor_draws = toy_eval._quality_draws(
        np.asarray(true, np.float32), REFERENCE, key, PROJECTIONS, REPEATS
    )
    floor_draws = np.asarray(floor_draws, np.float64)
    assert good["mmd2_floor"] == pytest.approx(np.mean(floor_draws), rel=1e-5, abs=1e-9)
    assert good["mmd2_floor_sd"] == pytest.approx(np.std(floor_draws, ddof=1), rel=1e-5)
    # The floor compares two true draws: it does not depend on the samples.
    assert bad["mmd2_floor"] == good["mmd2_floor"]
    assert bad["mmd2_floor_sd"] == good["mmd2_floor_sd"]
    # Unbiased: the floor's mean is 0 within its standard error (4 of them), not the sd itself.
    assert abs(good["mmd2_floor"]) <= 4 * good["mmd2_floor_sd"] / np.sqrt(REPEATS)
    assert good["mmd2_floor"] != good["mmd2_floor_sd"]
    # Read against the floor: true samples are within it, shifted ones far above.
    assert abs(good["mmd2"] - good["mmd2_floor"]) <= 4 * good["mmd2_floor_sd"]
    assert bad["mmd2"] - bad["mmd2_floor"] > 20 * bad["mmd2_floor_sd"]


def test_one_repeat_has_a_floor_mean_but_no_spread():
    true = REFERENCE(jax.random.PRNGKey(5), NUM)
    result = toy_eval.sample_quality(true, REFERENCE, jax.random.PRNGKey(6), PROJECTIONS, 1)
    assert isinstance(result["mmd2_floor"], float) and np.isfinite(result["mmd2_floor"])
    assert result["mmd2_floor_sd"] is None
    assert result["repeats"] == 1


def test_toy_evaluator_quality_reports_the_fraction_outside_the_plot(monkeypatch):
    calls = []

    def distances(samples, reference, key, num_projections, repeats):
        calls.append((reference, num_projections, repeats))
        return {"swd": 1.0}

    monkeypatch.setattr(toy_eval, "sample_quality", distances)
    samples = np.zeros((NUM, 2), np.float32)
    samples[: NUM // 4] = 20.0
    config = EvalConfig(num_projections=PROJECTIONS, repeats=REPEATS)
    result = toy_eval.ToyEvaluator("ring8", config).quality(samples, jax.random.PRNGKey(0))
    assert result == {"swd": 1.0, "fraction_outside_plot_frame": pytest.approx(0.25)}
    assert calls == [(toy_eval.reference_sampler("ring8"), PROJECTIONS, REPEATS)]
