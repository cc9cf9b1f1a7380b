"""The reverse-SDE likelihood bound against the exact Gaussian-mixture model.

With the exact denoiser the bound is tight per example: it equals ``exact_bound`` (the exact
``-log p_{t_min}`` smoothed by the ``t_min`` noise, plus the point's share of the prior
mismatch), with no discretisation error, in every schedule. Both sides are Monte Carlo estimates
with standard errors of their own (the bound's from its ``num_times`` draws, the reference's
from its noise draws), so the checks allow 4 combined standard errors per example and for the
mean (a two-sided 4-sigma band: a correct estimator fails it with probability 6e-5 per check;
the keys are fixed, so the outcome is deterministic). A wrong weight, proposal density, prior or
reconstruction term moves the mean by far more than that (the tests print the z-scores).

For a wrong model the bound's mean over data exceeds the exact one by the ML objective's excess
``J(theta) - J*`` (the cross term vanishes in expectation), which ``make_excess_fn`` estimates on
its own draws: the two must agree within their combined standard error.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_lv import likelihood, losses
from diffusion_lv.likelihood import LikelihoodConfig
from diffusion_lv.likelihood_bound import (
    BoundConfig,
    band_names,
    evaluate_bound,
    exact_bound,
    excess_bits_per_dim,
    make_bound_fn,
    make_excess_fn,
    prior_kl,
)
from diffusion_lv.oracle import GaussianMixture, random_anisotropic
from diffusion_lv.parameterization import Parameterization
from diffusion_lv.schedules import VP, RectifiedFlow, VEKarras

DIM = 3
NUM_POINTS = 16
NUM_TIMES = 256
Z = 4.0


def oracle_apply(model):
    """The mixture as a network ``(params, x, t) -> native prediction`` (params = the mixture)."""

    def apply_fn(mixture, x, t):
        return mixture.predict(x, t, model.schedule, model.prediction, model.sigma_data)

    return apply_fn


def matched_models(sigma_data):
    """VP (eps), VE (edm) and RF (velocity) over VP's default ``sigma_ve`` range."""
    vp = VP()
    lo, hi = vp.sigma_ve_min, vp.sigma_ve_max

    def over_range(cls):
        probe = cls()
        return cls(t_min=float(probe.t_from_sigma_ve(lo)), t_max=float(probe.t_from_sigma_ve(hi)))

    return {
        "vp": Parameterization(vp, "eps", sigma_data),
        "ve": Parameterization(over_range(VEKarras), "edm", sigma_data),
        "rf": Parameterization(over_range(RectifiedFlow), "velocity", sigma_data),
    }


@pytest.fixture(scope="module")
def tight_runs():
    """Float64 bounds of the exact model in three schedules, the references, and a perturbed
    model's bound and excess (VP), all on the same data."""
    out = {}
    with jax.enable_x64(True):
        mixture = random_anisotropic(0, DIM, 3)
        x = mixture.sample(jax.random.PRNGKey(1), NUM_POINTS)
        config = BoundConfig(num_times=NUM_TIMES, times_per_call=64)
        key = jax.random.PRNGKey(2)
        for name, model in matched_models(mixture.std()).items():
            result = make_bound_fn(oracle_apply(model), model, config)(mixture, x, key)
            reference = exact_bound(mixture, x, jax.random.PRNGKey(3), model.schedule, 2048)
            out[name] = jax.tree.map(np.asarray, (result, reference))
        model = matched_models(mixture.std())["vp"]
        wrong = GaussianMixture(mixture.weights, 1.5 * mixture.means, mixture.eigvals,
                                mixture.eigvecs)
        bound_fn = make_bound_fn(oracle_apply(model), model, config)
        excess_fn = make_excess_fn(oracle_apply(model), model, config)
        out["perturbed"] = jax.tree.map(np.asarray, (
            bound_fn(wrong, x, key), excess_fn(wrong, x, jax.random.PRNGKey(4), mixture),
            excess_fn(mixture, x, jax.random.PRNGKey(4), mixture)))
        out["paired_excess"] = np.asarray(excess_fn(wrong, x, key, mixture).total)
        out["x"] = np.asarray(x)
    return out


@pytest.mark.parametrize("name", ["vp", "ve", "rf"])
def test_bound_is_tight_with_the_exact_denoiser(tight_runs, name):
    result, (reference, reference_se) = tight_runs[name]
    difference = result.nll - reference
    se = np.sqrt(result.standard_error**2 + reference_se**2)
    assert np.all(np.abs(difference) <= Z * se), difference / se
    se_mean = math.sqrt(np.sum(se**2)) / NUM_POINTS
    assert abs(difference.mean()) <= Z * se_mean, difference.mean() / se_mean
    # The terms: continuous data, no offset; the prior term is the closed-form Gaussian KL.
    np.testing.assert_array_equal(result.offset, 0.0)
    np.testing.assert_allclose(result.nll, result.prior + result.diffusion + result.reconstruction)
    np.testing.assert_allclose(result.bits_per_dim, result.nll / (DIM * math.log(2)))


def test_bound_is_the_same_in_every_schedule(tight_runs):
    # The ML proposal lives in log-SNR: one key draws the same noise levels and noise in every
    # schedule, and the bound is a property of the model, not of its coordinates.
    vp = tight_runs["vp"][0]
    for name in ("ve", "rf"):
        other = tight_runs[name][0]
        np.testing.assert_allclose(other.nll, vp.nll, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(other.prior, vp.prior, rtol=1e-6, atol=1e-12, err_msg=name)


def test_prior_term_is_the_gaussian_kl():
    schedule = VP(t_max=3.0)
    x = jnp.asarray([[0.5, -1.0], [2.0, 0.0]])
    alpha, sigma = float(schedule.alpha(3.0)), float(schedule.sigma(3.0))
    expected = alpha**2 * np.sum(np.square(np.asarray(x)), -1) / (2 * sigma**2)
    np.testing.assert_allclose(prior_kl(x, schedule), expected, rtol=1e-5)


def test_perturbed_model_bound_exceeds_the_exact_by_the_excess(tight_runs):
    """The mixture with its means 1.5 x as far out: its bound is above the exact one (paired:
    the same key draws the same times and noise) and above the exact NLL by more than 3 standard
    errors (one-sided; measured z = 5.2 and 5.3), by its excess (measured z = -0.3)."""
    bound, excess, exact_excess = tight_runs["perturbed"]
    exact_result, (reference, reference_se) = tight_runs["vp"]
    gap = bound.nll - exact_result.nll
    se_gap = gap.std(ddof=1) / math.sqrt(NUM_POINTS)
    assert gap.mean() > 3 * se_gap, (gap.mean(), se_gap)
    above = bound.nll - reference
    se_above = above.std(ddof=1) / math.sqrt(NUM_POINTS)
    assert above.mean() > 3 * se_above, (above.mean(), se_above)
    # Its mean is J(theta) - J*, estimated apart by the excess on its own draws.
    se = math.sqrt(gap.var(ddof=1) / NUM_POINTS + excess.total.var(ddof=1) / NUM_POINTS)
    assert abs(gap.mean() - excess.total.mean()) <= Z * se, (gap.mean(), excess.total.mean(), se)
    # With the bound's key the excess draws the bound's times and noise: the two then differ
    # per draw by the cross term 2 w <D_theta - D*, D* - x> only (mean zero over the data).
    cross = gap - tight_runs["paired_excess"]
    assert abs(cross.mean()) <= Z * cross.std(ddof=1) / math.sqrt(NUM_POINTS)
    assert cross.std(ddof=1) < gap.std(ddof=1)
    np.testing.assert_allclose(excess.bands.sum(-1), excess.total, rtol=1e-10)
    assert np.all(excess.total > 0)
    # The exact denoiser has no excess at all.
    np.testing.assert_allclose(exact_excess.total, 0.0, atol=1e-12)


def test_excess_in_bits_per_dim_by_band(tight_runs):
    (_, excess, _) = tight_runs["perturbed"]
    figures = excess_bits_per_dim(excess, DIM)
    names = band_names((0.1, 1.0, 10.0))
    assert names == ["below_0.1", "0.1_to_1", "1_to_10", "above_10"]
    assert figures["excess"] == pytest.approx(excess.total.mean() / (DIM * math.log(2)))
    assert sum(figures[f"excess_{n}"] for n in names) == pytest.approx(figures["excess"])
    assert figures["excess_standard_error"] > 0


def test_evaluate_bound_aggregates_batches():
    schedule = VP()
    mixture = random_anisotropic(0, DIM, 3)
    model = Parameterization(schedule, "eps", mixture.std())
    fn = make_bound_fn(oracle_apply(model), model, BoundConfig(num_times=8))
    x = mixture.sample(jax.random.PRNGKey(5), 12)
    key = jax.random.PRNGKey(6)
    batches = [x[:6], x[6:]]
    summary = evaluate_bound(fn, mixture, batches, key)
    per_batch = [fn(mixture, b, jax.random.fold_in(key, i)) for i, b in enumerate(batches)]
    nll = np.concatenate([np.asarray(r.nll) for r in per_batch])
    assert summary["num_examples"] == 12
    assert summary["nll"] == pytest.approx(nll.mean(), rel=1e-5)
    assert summary["nll_standard_error"] == pytest.approx(nll.std(ddof=1) / math.sqrt(12),
                                                          rel=1e-4)
    assert summary["bits_per_dim"] == pytest.approx(nll.mean() / (DIM * math.log(2)), rel=1e-5)
    assert summary["monte_carlo_standard_error_bpd"] > 0


# -- discrete data --------------------------------------------------------------------------------


def pixel_model(smoothing, num_levels=17):
    """The digits' pooled pixel distribution over its 17 levels in [-1, 1], smoothed by
    ``N(0, smoothing^2)``; data: 256 of its pixels (one dimension each)."""
    from sklearn.datasets import load_digits

    pixels = load_digits().data.astype(int).ravel()
    probs = np.bincount(pixels, minlength=num_levels) / pixels.size
    levels = -1 + 2 * np.arange(num_levels) / (num_levels - 1)
    k = np.random.default_rng(0).choice(pixels, 256)
    cross_entropy = float(-np.log2(probs[k]).mean())  # -log2 P(k) under the model, bits/dim
    x = jnp.asarray(levels[k][:, None])
    return GaussianMixture.isotropic(probs, levels[:, None], smoothing), x, cross_entropy


def test_centred_bound_of_the_sharp_pixel_model_is_its_cross_entropy(x64):
    """The DDPM/VDM bound on ``-log P(k)`` of grid data: for the exact pixel model sharpened
    to ``s = 1e-3`` the bound's mean is ``-log2 P(k)`` (the decoder loses nothing at 17 levels),
    within its Monte Carlo error; under the uniform convention the same model scores far worse.
    """
    schedule = VP()
    model = Parameterization(schedule, "eps")
    mixture, x, cross_entropy = pixel_model(1e-3)
    figures = {}
    for dequantization in ("centred", "uniform"):
        config = BoundConfig(num_times=64, num_levels=17, dequantization=dequantization)
        result = make_bound_fn(oracle_apply(model), model, config)(
            mixture, x, jax.random.PRNGKey(7))
        se = math.sqrt(np.sum(np.square(result.standard_error))) / x.shape[0] / math.log(2)
        figures[dequantization] = (float(result.bits_per_dim.mean()), se)
    bpd, se = figures["centred"]
    assert abs(bpd - cross_entropy) <= Z * se + 0.01, (bpd, cross_entropy, se)
    assert figures["uniform"][0] > cross_entropy + 10


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^num_times=1 is not valid; valid: an integer >= 2"):
        BoundConfig(num_times=1)
    with pytest.raises(ValueError, match=r"^time_sampler='uniform' is not valid; valid: a "
                                         r"losses.TimeSampler \(names \['log_snr'"):
        BoundConfig(time_sampler="uniform")
    with pytest.raises(ValueError, match=r"^dequantization='edge' is not valid; valid choices: "
                                         r"\['centred', 'uniform'\]"):
        BoundConfig(num_levels=17, dequantization="edge")
    with pytest.raises(ValueError, match=r"band_edges=\(1.0, 0.5\) is not valid"):
        make_excess_fn(lambda *a: a[1], Parameterization(VP()), band_edges=(1.0, 0.5))
    with pytest.raises(ValueError, match="model must be a Parameterization, got str"):
        make_bound_fn(lambda *a: a[1], "eps")
    fn = make_bound_fn(lambda *a: a[1], Parameterization(VP(), "x0"))
    with pytest.raises(ValueError, match=r"shape \(batch, ...\), got shape \(3,\)"):
        fn(None, jnp.zeros((3,)), jax.random.PRNGKey(0))


def test_like_copies_the_discrete_settings():
    ode = LikelihoodConfig(num_levels=17, dequantization="centred", data_range=(0.0, 1.0))
    bound = BoundConfig.like(ode, num_times=16)
    assert (bound.num_levels, bound.data_range, bound.dequantization, bound.num_times) == (
        17, (0.0, 1.0), "centred", 16)
    assert bound.time_sampler == losses.TimeSampler("ml_importance")
    assert likelihood.bin_width(17, (0.0, 1.0), "centred") == pytest.approx(1 / 16)
