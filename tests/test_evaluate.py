"""Evaluation helpers: batched held-out NLL, sample-quality metrics and the progress bar.

The NLL path (network -> parameterisation -> likelihood, in padded batches) is checked against
the exact Gaussian-mixture density with the oracle as the "network"; the tolerance is the one
derived in tests/test_likelihood.py, ``10 tol (1 + |integral|)`` per example (the VP prior at
``t_max = 10`` differs from the true ``p_T`` by a negligible ``alpha(t_max) ~ e^-50``).
"""

import io
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_lv import progress
from diffusion_lv.eval import nll
from diffusion_lv.eval import toy as toy_eval
from diffusion_lv.likelihood import LikelihoodConfig
from diffusion_lv.oracle import random_anisotropic
from diffusion_lv.parameterization import Parameterization
from diffusion_lv.schedules import VP

TOL = 1e-4


def oracle_network(schedule):
    """The oracle behind a parameterisation with unscaled input: ``(mixture, x, c_noise) -> x0``
    with EDM's ``c_noise = log(sigma_ve) / 4`` read back as the schedule's time."""

    def apply_fn(mixture, x, c_noise):
        t = schedule.t_from_sigma_ve(jnp.exp(4.0 * c_noise))
        return mixture.predict(x, t, schedule, "x0")

    return apply_fn


def test_batched_nll_matches_the_exact_density(capsys):
    schedule = VP()
    mixture = random_anisotropic(0, 3, 3)
    parameterization = Parameterization(schedule, "x0", sigma_data=1.0, scale_input=False)
    x = mixture.sample_marginal(jax.random.PRNGKey(1), 10, schedule.t_min, schedule)
    truth = -np.asarray(mixture.log_prob(x, schedule.t_min, schedule), np.float64)
    config = LikelihoodConfig(rtol=TOL, atol=TOL)
    # Batches of 4: 4 + 4 + 2 real examples, the last padded to 4 and the padding dropped.
    figures = nll.evaluate_nll(
        oracle_network(schedule), mixture, parameterization, np.asarray(x), config, 4,
        jax.random.PRNGKey(2),
    )
    assert figures["num_examples"] == 10 and figures["unsolved_batches"] == 0
    # |mean error| <= mean per-example bound; |integral| <= |nll| + |prior| + |jacobian| <~ 50.
    bound = 10 * TOL * (1 + 50)
    assert abs(figures["nll"] - truth.mean()) <= bound, (figures["nll"], truth.mean())
    # The same per-example bound e moves the sample sd (a norm of the centred vector over
    # sqrt(n - 1)) by at most e sqrt(n / (n - 1)), so the standard error by e / sqrt(n - 1).
    se = truth.std(ddof=1) / math.sqrt(10)
    assert abs(figures["nll_standard_error"] - se) <= bound / math.sqrt(10 - 1), (
        figures["nll_standard_error"], se)
    # Both are means of float32 per-example figures of size up to max|truth|; their mean sits
    # near 0 here, so the tolerance is float32 rounding of the terms, not of the mean.
    assert figures["bits_per_dim"] == pytest.approx(
        figures["nll"] / (3 * math.log(2)), rel=1e-6, abs=1e-6 * max(1.0, np.abs(truth).max()))
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("NLL (10 examples) [") and "0/3" in lines[0]
    assert "3/3" in lines[-1]


def test_progress_track_yields_everything_and_draws_in_tenths():
    stream = io.StringIO()
    assert list(progress.track(range(25), 25, "work", stream=stream)) == list(range(25))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11  # 0/25 and one line per tenth, not one per item
    assert lines[-1].startswith("work [####################] 25/25")
    silent = io.StringIO()
    assert list(progress.track(range(3), 3, "x", stream=silent, enabled=False)) == [0, 1, 2]
    assert silent.getvalue() == ""


def test_sample_quality_reports_mmd_with_its_floor():
    mixture = random_anisotropic(0, 2, 3)

    def reference(key, n):
        return mixture.sample(key, n)

    true = reference(jax.random.PRNGKey(3), 1024)
    shifted = true + 0.5
    compiled_before = toy_eval._quality_draws._cache_size()
    good = toy_eval.sample_quality(true, reference, jax.random.PRNGKey(4), 32, repeats=16)
    bad = toy_eval.sample_quality(shifted, reference, jax.random.PRNGKey(4), 32, repeats=16)
    # Same reference and shapes: the second call reuses the first one's program.
    assert toy_eval._quality_draws._cache_size() == compiled_before + 1
    assert toy_eval.reference_sampler("ring8") is toy_eval.reference_sampler("ring8")
    # True samples: MMD^2 is a draw of the floor's distribution (mean 0); a shift is far above.
    # 16 repeats: the floor's sd is estimated with 15 degrees of freedom (within ~35%).
    assert abs(good["mmd2"]) <= 4 * good["mmd2_floor_sd"]
    assert bad["mmd2"] > 20 * bad["mmd2_floor_sd"]
    assert good["mmd_num_samples"] == 1024
