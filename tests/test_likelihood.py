"""Probability-flow ODE likelihood against the exact Gaussian-mixture density.

The oracle gives ``log p_{t_min}(x)`` in closed form in every schedule. The ODE's own error is
isolated by closing it with the exact ``log p_{t_max}(latent)`` instead of the Gaussian prior
(the prior mismatch is a property of the schedule's end time, not of the solver).

Solver tolerance: with ``rtol = atol = tol`` a tolerance-proportional solver makes a global error
of order ``tol`` times the size of the solution; the solved log-density state ends at
``integral = int div dlam`` (``delta_log_prob`` less the Jacobian of ``x = alpha z``), and we allow
a factor 10 for accumulation over steps: ``|error| <= 10 tol (1 + |integral|)``. That the error
falls in proportion to ``tol`` is checked too. The ODE in ``log sigma_ve`` is the same for every
schedule, so the tolerance sweep runs in one schedule (VP) and the others at the tight tolerance.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback
from scipy.special import ndtr
from scipy.stats import kurtosis

from diffusion_lv import likelihood
from diffusion_lv.likelihood import LikelihoodConfig, make_likelihood_fn
from diffusion_lv.oracle import GaussianMixture, random_anisotropic
from diffusion_lv.parameterization import Parameterization
from diffusion_lv.schedules import VP, CosineVP, RectifiedFlow, VEKarras

DIM = 3
NUM_POINTS = 16
LOOSE, TIGHT = 1e-5, 1e-8


def oracle_apply(model):
    """The oracle as a network ``(params, x, t) -> native prediction``, params = the mixture."""

    def apply_fn(mixture, x, t):
        return mixture.predict(x, t, model.schedule, model.prediction, model.sigma_data)

    return apply_fn


def matched_schedules():
    """VP (default) and VE, RF, cosine VP over VP's ``sigma_ve`` range, each with its own
    prediction."""
    vp = VP()
    lo, hi = vp.sigma_ve_min, vp.sigma_ve_max

    def over_range(cls):
        probe = cls()
        return cls(t_min=float(probe.t_from_sigma_ve(lo)), t_max=float(probe.t_from_sigma_ve(hi)))

    return {
        "vp": (vp, "eps"),
        "ve": (over_range(VEKarras), "edm"),
        "rf": (over_range(RectifiedFlow), "velocity"),
        "cosine_vp": (over_range(CosineVP), "v"),
    }


def solver_bound(tol, result, schedule):
    """``10 tol (1 + |integral|)`` per example, from a LikelihoodResult."""
    t_min, t_max = (jnp.asarray(t, result.latent.dtype) for t in (schedule.t_min, schedule.t_max))
    dim = math.prod(result.latent.shape[1:])
    jacobian = dim * (jnp.log(schedule.alpha(t_max)) - jnp.log(schedule.alpha(t_min)))
    return 10 * tol * (1 + np.abs(np.asarray(result.delta_log_prob - jacobian)))


@pytest.fixture(scope="module")
def exact_runs():
    """Exact-divergence solves in float64 for every schedule and tolerance (numpy results)."""
    out = {}
    with jax.enable_x64(True):
        mixture = random_anisotropic(0, DIM, 3)
        sigma_data = mixture.std()
        z = mixture.sample_marginal(jax.random.PRNGKey(1), NUM_POINTS, VP().t_min, VP())
        z = z / VP().alpha(VP().t_min)  # canonical points at sigma_ve_min, shared by all
        for name, (schedule, prediction) in matched_schedules().items():
            x = z * schedule.alpha(jnp.asarray(schedule.t_min))
            truth = -mixture.log_prob(x, schedule.t_min, schedule)
            model = Parameterization(schedule, prediction, sigma_data=sigma_data)
            for tol in (LOOSE, TIGHT) if name == "vp" else (TIGHT,):
                config = LikelihoodConfig(rtol=tol, atol=tol)
                fn = make_likelihood_fn(oracle_apply(model), model, config)
                result = fn(mixture, x)
                exact_prior = mixture.log_prob(result.latent, schedule.t_max, schedule)
                out[name, tol] = dict(
                    truth=np.asarray(truth),
                    nll=np.asarray(result.nll),
                    nll_exact_prior=np.asarray(-(exact_prior + result.delta_log_prob)),
                    bound=solver_bound(tol, result, schedule),
                    log_alpha_min=float(jnp.log(schedule.alpha(jnp.asarray(schedule.t_min)))),
                    nfe=int(result.nfe),
                    solved=bool(result.solved),
                )
    return out


def exact_error(run):
    return np.abs(run["nll_exact_prior"] - run["truth"])


@pytest.mark.parametrize("name", ["vp", "ve", "rf", "cosine_vp"])
def test_exact_divergence_matches_oracle(exact_runs, name):
    run = exact_runs[name, TIGHT]
    assert run["solved"]
    error = exact_error(run)
    assert np.all(error <= run["bound"]), (error.max(), run["bound"].min())


def test_error_falls_with_tolerance(exact_runs):
    loose, tight = exact_runs["vp", LOOSE], exact_runs["vp", TIGHT]
    assert np.all(exact_error(loose) <= loose["bound"])
    # Tolerance proportionality: 1000x smaller tol must buy over 100x smaller error, so the
    # match is not a coincidence of one tolerance (a systematic error would not shrink).
    assert exact_error(tight).max() < exact_error(loose).max() / 100
    assert tight["nfe"] > loose["nfe"]


def test_nll_is_the_same_in_every_schedule(exact_runs):
    """Same oracle, same sigma_ve range: -log p of the canonical point agrees across schedules.

    With the Gaussian prior (the default) on both sides: in canonical coordinates every schedule's
    prior is N(0, sigma_ve_max^2), so the prior mismatch cancels too.
    """
    canonical = {
        name: exact_runs[name, TIGHT]["nll"] - DIM * exact_runs[name, TIGHT]["log_alpha_min"]
        for name in matched_schedules()
    }
    bound = 2 * exact_runs["vp", TIGHT]["bound"]
    for name, nll in canonical.items():
        np.testing.assert_array_less(np.abs(nll - canonical["vp"]), bound, err_msg=name)
    # ...and differs from log p in the schedule's own coordinates by the Jacobian d log alpha,
    # which is far from zero for RF (alpha(t_min) = 1 - t_min, t_min ~ 3e-3).
    rf = exact_runs["rf", TIGHT]
    assert abs(DIM * rf["log_alpha_min"]) > 100 * bound.max()


# -- Hutchinson: unbiased, with the Monte Carlo error it should have ---------------------------

NUM_MC_POINTS = 1024


@pytest.fixture(scope="module")
def hutchinson_runs():
    schedule = VP()
    model = Parameterization(schedule, "eps")
    mixture = random_anisotropic(0, DIM, 3)
    x = mixture.sample_marginal(jax.random.PRNGKey(2), NUM_MC_POINTS, schedule.t_min, schedule)
    truth = np.asarray(-mixture.log_prob(x, schedule.t_min, schedule))
    apply_fn = oracle_apply(model)
    out = {}
    for probe, num_probes in (("rademacher", 1), ("gaussian", 1), ("rademacher", 4)):
        config = LikelihoodConfig(divergence="hutchinson", probe=probe, num_probes=num_probes)
        result = make_likelihood_fn(apply_fn, model, config)(
            mixture, x, jax.random.PRNGKey(3)
        )
        exact_prior = mixture.log_prob(result.latent, schedule.t_max, schedule)
        out[probe, num_probes] = dict(
            error=np.asarray(-(exact_prior + result.delta_log_prob)) - truth,
            bound=solver_bound(config.rtol, result, schedule),
        )
    return out


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(hutchinson_runs, probe):
    run = hutchinson_runs[probe, 1]
    error, bound = run["error"], run["bound"]
    standard_error = error.std(ddof=1) / math.sqrt(error.size)
    # The estimator is noisy (so this test has power) and its mean error is within 4 standard
    # errors plus the solver's own error.
    assert error.std() > 10 * bound.max()
    assert abs(error.mean()) < 4 * standard_error + bound.max(), (error.mean(), standard_error)


def test_hutchinson_variance_falls_with_probes(hutchinson_runs):
    """Four probes: a quarter of the variance of one.

    A sample variance of n points with kurtosis k has ``sd(log s^2) ~ sqrt((k - 1)/n)``; the
    errors are heavy-tailed (the trace's size varies between points), so k is measured. Ignoring
    the positive correlation of the two (same points) only widens the bound: 4 sd of the ratio.
    """
    one, four = (hutchinson_runs["rademacher", p]["error"] for p in (1, 4))
    log_ratio = math.log(four.var() / one.var())
    log_sd = math.sqrt(sum((kurtosis(e, fisher=False) - 1) / e.size for e in (one, four)))
    assert abs(log_ratio - math.log(0.25)) < 4 * log_sd, (math.exp(log_ratio), log_sd)
    assert 4 * log_sd < math.log(4)  # enough points to tell 1/4 from 1


# -- discrete data -------------------------------------------------------------------------------


def test_dequantised_bits_per_dim_match_bin_probability():
    """256 levels in [-1, 1], images of shape (B, 1, 2, 1): bits/dim estimates -log2 P(bin) / d.

    The data density is one isotropic Gaussian (std s), so P(bin) is a product of normal CDF
    differences. One uniform draw per point makes an error with the bin of width w = 1/128:
    ``log p(c + w (u - 1/2)) - log p(c) = g.w(u - 1/2) - |w (u - 1/2)|^2 / (2 s^2)`` with
    ``g = grad log p(c)``, so per point it is at most ``w/2 |g|_1 + d w^2 / (8 s^2)`` away, its
    standard deviation is ``w |g| / sqrt(12)`` and its mean (Jensen's gap) about
    ``w^2 |g|^2 / 24``; the solver adds up to 10 tol (1 + |delta|).
    """
    schedule, levels, dim = VP(), 256, 2
    model = Parameterization(schedule, "eps")
    std = 0.4
    mixture = GaussianMixture.isotropic([1.0], [[0.0, 0.0]], std)
    shape = (1, 2, 1)

    def apply_fn(mix, x, t):
        flat = mix.predict(x.reshape(x.shape[0], -1), t, schedule, model.prediction)
        return flat.reshape(x.shape)

    key_k, key_fn = jax.random.split(jax.random.PRNGKey(4))
    k = np.asarray(jax.random.normal(key_k, (64, dim))) * std * 127.5 + 127.5
    k = np.round(np.clip(k, 0, levels - 1))
    x = jnp.asarray(-1 + 2 * k / (levels - 1), jnp.float32).reshape((-1, *shape))
    config = LikelihoodConfig(num_levels=levels)
    result = make_likelihood_fn(apply_fn, model, config)(mixture, x, key_fn)

    t = schedule.t_min
    s = math.sqrt(float(schedule.alpha(t)) ** 2 * std**2 + float(schedule.sigma(t)) ** 2)
    width = 2 / levels
    lower = -1 + width * k
    bin_prob = ndtr((lower + width) / s) - ndtr(lower / s)
    exact_bpd = -np.log2(bin_prob).sum(-1) / dim
    to_bpd = 1 / (dim * math.log(2))
    grad = -(lower + width / 2) / s**2
    worst = (width / 2 * np.abs(grad).sum(-1) + dim * width**2 / (8 * s**2)) * to_bpd
    sd = width * np.linalg.norm(grad, axis=-1) / math.sqrt(12) * to_bpd
    gap = width**2 * np.square(grad).sum(-1) / 24 * to_bpd
    solver = solver_bound(config.rtol, result, schedule) * to_bpd
    error = np.asarray(result.bits_per_dim) - exact_bpd
    assert np.all(np.abs(error) <= worst + solver), np.abs(error) - worst
    standard_error = np.sqrt(np.sum(sd**2)) / error.size
    assert abs(error.mean() - gap.mean()) < 4 * standard_error + solver.max(), error.mean()


def test_bits_per_dim_offset():
    # 256 levels in [-1, 1]: bins of width 1/128, 7 bits/dim; a uniform model gets log2(L) bits.
    dim = 5
    uniform_nll = dim * math.log(2.0)
    assert likelihood.bits_per_dim(uniform_nll, dim, 256) == pytest.approx(8.0)
    assert likelihood.bits_per_dim(0.0, dim, 256) == pytest.approx(7.0)
    assert likelihood.bits_per_dim(uniform_nll, dim, 17, (0.0, 2.0)) == pytest.approx(
        math.log2(17)
    )
    assert likelihood.bits_per_dim(uniform_nll, dim) == pytest.approx(1.0)


def test_dequantize_stays_in_its_bin():
    levels = 17
    k = jnp.arange(levels, dtype=jnp.float32)
    x = -1 + 2 * k / (levels - 1)
    key = jax.random.PRNGKey(0)
    out = likelihood.dequantize(key, jnp.tile(x, (100, 1)), levels)
    bins = np.floor((np.asarray(out) + 1) / 2 * levels)
    np.testing.assert_array_equal(bins, np.tile(np.asarray(k), (100, 1)))


def test_centred_decoder_is_a_distribution_over_levels(x64):
    """DDPM's decoder: normal CDF differences over the centred bins, the end bins open, so the
    probabilities of all levels sum to one wherever ``y`` is (tails included)."""
    levels, sigma = 17, 0.03
    y = jnp.asarray([-1.3, -1.0, -0.97, -0.1, 0.0625, 0.5, 1.0, 1.4])[:, None]
    log_p = np.stack([
        np.asarray(likelihood.centred_bin_log_prob(y, jnp.full(y.shape, k), sigma, levels))
        for k in range(levels)
    ], axis=-1)
    np.testing.assert_allclose(np.exp(log_p).sum(-1), 1.0, rtol=1e-12)
    centres = -1 + 2 * np.arange(levels) / (levels - 1)
    lower = np.concatenate([[-np.inf], centres[1:] - 1 / 16])
    upper = np.concatenate([centres[:-1] + 1 / 16, [np.inf]])
    yy = np.asarray(y)
    # The reference in whichever tail keeps the difference away from 1 - 1 cancellation.
    a, b = (lower - yy) / sigma, (upper - yy) / sigma
    expected = np.where(a + b > 0, ndtr(-a) - ndtr(-b), ndtr(b) - ndtr(a))
    np.testing.assert_allclose(np.exp(log_p), expected, rtol=1e-9, atol=1e-15)
    # Far in a tail the log stays finite and accurate (no 1 - 1 cancellation).
    far = likelihood.centred_bin_log_prob(jnp.asarray([[0.9]]), jnp.asarray([[0.0]]), 0.01, 17)
    assert np.isfinite(float(far[0])) and float(far[0]) < -3000


def test_matched_dequantization():
    assert likelihood.matched_dequantization(True) == "uniform"
    assert likelihood.matched_dequantization(False) == "centred"
    assert likelihood.matched_dequantization(False, "centred") == "centred"
    with pytest.raises(ValueError, match=r"^dequantization='uniform' does not match the training "
                                         r"data \(the grid values\).*\['auto', 'centred'\]"):
        likelihood.matched_dequantization(False, "uniform")
    with pytest.raises(ValueError, match=r"^dequantization='centred' does not match the training "
                                         r"data \(uniformly dequantised data\)"):
        likelihood.matched_dequantization(True, "centred")
    with pytest.raises(ValueError, match=r"^dequantization='edge' is not valid; valid choices: "
                                         r"\['auto', 'centred', 'uniform'\]"):
        likelihood.matched_dequantization(True, "edge")


def test_run_config_picks_the_matched_dequantization():
    """``config.eval.nll_dequantization``: "auto" follows ``data.dequantize``; the digits configs
    (trained on the grid) state "centred"; the other convention is refused, naming the key."""
    from configs.digits import common as digits_configs
    from diffusion_lv import experiment as experiment_lib

    config = digits_configs.digits_config("rf")
    assert experiment_lib.parse(config).eval.likelihood.dequantization == "centred"
    config.eval.nll_dequantization = "auto"
    config.data.dequantize = True
    assert experiment_lib.parse(config).eval.likelihood.dequantization == "uniform"
    config.eval.nll_dequantization = "centred"
    with pytest.raises(experiment_lib.ConfigError,
                       match=r"^config.eval.nll_dequantization='centred' does not match the "
                             r"training data \(uniformly dequantised data\)"):
        experiment_lib.parse(config)


def pixel_model(smoothing, num_levels=17):
    """The digits' pooled pixel distribution over its 17 levels in [-1, 1] smoothed by
    ``N(0, smoothing^2)`` (what a model trained on the grid values approaches as ``smoothing``
    shrinks), and 256 of its pixels as data (one dimension each)."""
    from sklearn.datasets import load_digits

    pixels = load_digits().data.astype(int).ravel()
    probs = np.bincount(pixels, minlength=num_levels) / pixels.size
    levels = -1 + 2 * np.arange(num_levels) / (num_levels - 1)
    k = np.random.default_rng(0).choice(pixels, 256)
    cross_entropy = float(-np.log2(probs[k]).mean())  # -log2 P(k) under the model, bits/dim
    return GaussianMixture.isotropic(probs, levels[:, None], smoothing), levels[k][:, None], \
        cross_entropy


def test_centred_figure_falls_to_the_entropy_as_the_pixel_model_sharpens(x64):
    """The issue's reproduction: an exact pixel model smoothed by ``N(0, s^2)``. Under the
    centred convention the ODE figure falls as ``s`` shrinks, to ``-log2 P(k)`` (within 0.01
    bits/dim at ``s = 1e-3``: the model's own ``t_min`` noise, ``sigma = 3.2e-3``, dominates
    there); under the uniform convention the same models score ever worse (measured 3.63, 10.5,
    88 bits/dim at s = 0.1, 0.01, 0.001; centred 6.54, 3.94, 2.93; data 2.93)."""
    schedule = VP()
    model = Parameterization(schedule, "eps")
    figures = {}
    for dequantization in ("centred", "uniform"):
        config = LikelihoodConfig(num_levels=17, dequantization=dequantization)
        fn = make_likelihood_fn(oracle_apply(model), model, config)
        for s in (0.1, 0.01, 1e-3):
            mixture, x, cross_entropy = pixel_model(s)
            result = fn(mixture, jnp.asarray(x), jax.random.PRNGKey(8))
            assert bool(result.solved)
            figures[dequantization, s] = float(result.bits_per_dim.mean())
    centred = [figures["centred", s] for s in (0.1, 0.01, 1e-3)]
    uniform = [figures["uniform", s] for s in (0.1, 0.01, 1e-3)]
    assert centred[0] > centred[1] > centred[2], centred
    assert abs(centred[2] - cross_entropy) < 0.01, (centred, cross_entropy)
    assert uniform[0] < uniform[1] < uniform[2] and uniform[2] > 50, uniform


# -- bookkeeping ---------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["tsit5", "dopri5"])
def test_reported_nfe_counts_model_calls(solver):
    calls = []

    def record(x):
        calls.append(1)
        return x

    # Identity with a host-side counter on the primal only: JVP tangents (the divergence) pass
    # through, so each vector-field evaluation counts once.
    @jax.custom_jvp
    def counted(x):
        return io_callback(record, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    @counted.defjvp
    def _(primals, tangents):
        return counted(primals[0]), tangents[0]

    schedule = VP()
    model = Parameterization(schedule, "eps")
    mixture = random_anisotropic(0, DIM, 3)

    def apply_fn(mix, x, t):
        return mix.predict(counted(x), t, schedule, model.prediction)

    x = mixture.sample_marginal(jax.random.PRNGKey(1), 8, schedule.t_min, schedule)
    config = LikelihoodConfig(solver=solver, rtol=1e-4, atol=1e-4)
    result = make_likelihood_fn(apply_fn, model, config)(mixture, x)
    jax.block_until_ready(result)
    assert int(result.nfe) == len(calls) > 0


def test_unsolved_is_nan():
    schedule = VP()
    model = Parameterization(schedule, "eps")
    mixture = random_anisotropic(0, DIM, 3)
    x = mixture.sample_marginal(jax.random.PRNGKey(1), 4, schedule.t_min, schedule)
    config = LikelihoodConfig(max_steps=2)
    fn = make_likelihood_fn(oracle_apply(model), model, config)
    result = fn(mixture, x)
    assert not bool(result.solved)
    assert np.all(np.isnan(np.asarray(result.nll)))
    assert np.all(np.isnan(np.asarray(result.bits_per_dim)))
    with pytest.raises(ValueError, match="no batch was solved"):
        likelihood.evaluate_likelihood(fn, mixture, [x, x], jax.random.PRNGKey(0))


def test_evaluate_likelihood_aggregates_batches():
    schedule = VP()
    model = Parameterization(schedule, "eps")
    mixture = random_anisotropic(0, DIM, 3)
    x = mixture.sample_marginal(jax.random.PRNGKey(5), 12, schedule.t_min, schedule)
    config = LikelihoodConfig(divergence="hutchinson", rtol=1e-3, atol=1e-3)
    fn = make_likelihood_fn(oracle_apply(model), model, config)
    key = jax.random.PRNGKey(6)
    batches = [x[:6], x[6:]]
    summary = likelihood.evaluate_likelihood(fn, mixture, batches, key)
    per_batch = [fn(mixture, b, jax.random.fold_in(key, i)) for i, b in enumerate(batches)]
    nll = np.concatenate([np.asarray(r.nll) for r in per_batch])
    assert summary["num_examples"] == 12 and summary["unsolved_batches"] == 0
    assert summary["nll"] == pytest.approx(nll.mean(), rel=1e-6)
    assert summary["nll_standard_error"] == pytest.approx(nll.std(ddof=1) / math.sqrt(12), rel=1e-5)
    assert summary["bits_per_dim"] == pytest.approx(nll.mean() / (DIM * math.log(2)), rel=1e-6)
    assert summary["nfe"] == pytest.approx(np.mean([int(r.nfe) for r in per_batch]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(divergence="trace"), "divergence='trace' .*'exact', 'hutchinson'"),
        (dict(probe="sphere"), "probe='sphere' .*'gaussian', 'rademacher'"),
        (dict(solver="euler"), "solver='euler' .*'dopri5', 'tsit5'"),
        (dict(error_norm="l1"), "error_norm='l1' .*'max', 'rms'"),
        (dict(rtol=0.0), r"rtol=0.0 is not valid; valid: a finite number > 0.0"),
        (dict(atol=float("inf")), r"atol=inf is not valid; valid: a finite number > 0.0"),
        (dict(num_probes=0), "num_probes=0 is not valid; valid: an integer >= 1"),
        (dict(max_steps=0), "max_steps=0 is not valid; valid: an integer >= 1"),
        (dict(num_levels=1), "num_levels=1 is not valid; valid: an integer >= 2 or None"),
        (dict(data_range=(1.0, -1.0)), r"data_range=\(1.0, -1.0\) is not valid"),
        (dict(num_levels=17, dequantization="edge"),
         r"dequantization='edge' is not valid; valid choices: \['centred', 'uniform'\]"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match="^" + match):
        LikelihoodConfig(**kwargs)


def test_bad_call_is_a_clear_error():
    schedule = VP()
    model = Parameterization(schedule, "eps")
    apply_fn = oracle_apply(model)
    mixture = random_anisotropic(0, DIM, 3)
    with pytest.raises(ValueError, match="model must be a Parameterization, got str"):
        make_likelihood_fn(apply_fn, "eps")
    fn = make_likelihood_fn(apply_fn, model, LikelihoodConfig(divergence="hutchinson"))
    with pytest.raises(ValueError, match="PRNG key is needed"):
        fn(mixture, jnp.zeros((4, DIM)))
    with pytest.raises(ValueError, match=r"shape \(batch, ...\), got shape \(3,\)"):
        fn(mixture, jnp.zeros((DIM,)), jax.random.PRNGKey(0))
