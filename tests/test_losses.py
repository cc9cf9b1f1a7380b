"""The one loss: weightings, time samplers, maximum likelihood, DSM = SM + constant, KL decay.

Exact identities run in float64 with rounding tolerances. Monte Carlo checks use common random
numbers (one key for every model compared), so differences between models carry only the noise
of a zero-mean cross term, whose standard error is measured from the samples; ``Z_MAX``
standard errors is the bound (two-sided p = 6e-7 per statistic).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffusion_lv import convert as C
from diffusion_lv import losses as L
from diffusion_lv import oracle
from diffusion_lv import schedules as S
from diffusion_lv.parameterization import Parameterization

ALL = [S.VP(), S.VEKarras(), S.RectifiedFlow(), S.LinearVP(), S.CosineVP()]
IDS = [s.name for s in ALL]
EPS64 = np.finfo(np.float64).eps
Z_MAX = 5.0
SAMPLERS = list(L.TIME_SAMPLERS)
SD = C.DEFAULT_SIGMA_DATA  # weightings other than edm do not read it
THREE = [S.VP(), S.VEKarras(), S.RectifiedFlow()]  # the paper's three processes
THREE_IDS = [s.name for s in THREE]


def times(schedule, n, seed):
    rng = np.random.default_rng(seed)
    sv = np.exp(rng.uniform(math.log(schedule.sigma_ve_min), math.log(schedule.sigma_ve_max), n))
    sv[:2] = schedule.sigma_ve_min, schedule.sigma_ve_max
    return schedule.t_from_sigma_ve(jnp.asarray(sv))


@functools.cache
def mixture(x64=True):
    with jax.enable_x64(x64):
        return oracle.random_anisotropic(seed=5, dim=2, num_modes=3, spread=1.0,
                                         eig_range=(0.05, 0.5))


# -- weightings --------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_ml_weight_is_minus_half_dsnr_dt(x64, schedule):
    t = times(schedule, 64, seed=0)
    snr = lambda t: (schedule.alpha(t) / schedule.sigma(t)) ** 2
    dsnr = jax.vmap(jax.grad(snr))(t)
    # -1/2 dSNR/dt = SNR * g^2 / (2 sigma^2): two roundings of O(1) relative each.
    np.testing.assert_allclose(L.weight_ml(schedule, t, SD), -0.5 * dsnr, rtol=1e-12)


@pytest.mark.parametrize("schedule", THREE, ids=THREE_IDS)
def test_ml_weight_is_the_paper_table_6_weight(x64, schedule):
    """Table 6: VP 1/2 ||score||^2, VE-Karras 1/sigma ||eps||^2, RF (1-s)/s ||v||^2."""
    t = times(schedule, 64, seed=1)
    prediction, printed = {
        "vp": ("score", 0.5 * jnp.ones_like(t)),
        "ve": ("eps", 1 / t),
        "rf": ("velocity", (1 - t) / t),
    }[schedule.name]
    # Each prediction's own weighting has its name: its plain MSE (next test).
    native = L.weighting(prediction, schedule, t, SD)
    np.testing.assert_allclose(L.weighting("ml", schedule, t, SD), printed * native, rtol=1e-12)


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_each_weighting_is_its_native_mse_in_x0_space(x64, schedule):
    """``||P(D) - P(x0)||^2 = w_P ||D - x0||^2`` for the native output P of each prediction, with
    ``w_P`` the weighting of the same name."""
    rng = np.random.default_rng(2)
    t = times(schedule, 64, seed=2)
    x0 = jnp.asarray(rng.standard_normal((64, 2)))
    x_t = L.perturb(x0, jnp.asarray(rng.standard_normal((64, 2))), t, schedule)
    guess = x0 + jnp.asarray(rng.standard_normal((64, 2)))
    for prediction in C.PREDICTIONS:
        native_mse = L.squared_error(
            C.from_x0(guess, prediction, x_t, t, schedule, SD),
            C.from_x0(x0, prediction, x_t, t, schedule, SD),
        )
        x0_mse = L.weighting(prediction, schedule, t, SD) * L.squared_error(guess, x0)
        # Both sides hold the same difference; the native one computes it as a difference of
        # two predictions with terms |c_x x| + |c_D D|: rounding is eps * (terms/|c_D|)^2-ish.
        terms = np.abs(C.from_x0(jnp.zeros_like(x0), prediction, x_t, t, schedule, SD))
        coef = np.abs(C.from_x0(jnp.ones_like(x0), prediction, jnp.zeros_like(x0), t, schedule, SD))
        scale = np.max((terms / coef + np.abs(x0) + np.abs(guess)), axis=1)
        rel = 1e4 * EPS64 * scale / np.asarray(np.sqrt(L.squared_error(guess, x0)))
        np.testing.assert_array_less(np.abs(native_mse - x0_mse), rel * np.asarray(x0_mse) + 1e-300)
    snr = (schedule.alpha(t) / schedule.sigma(t)) ** 2
    np.testing.assert_allclose(L.weighting("min_snr", schedule, t, SD), np.minimum(snr, 5.0))


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_perturb_is_the_forward_marginal(x64, schedule):
    """``x_t = alpha x0 + sigma eps``: the samples the loss sees are the oracle's p_t."""
    rng = np.random.default_rng(3)
    t = times(schedule, 8, seed=3)
    x0, eps = (jnp.asarray(rng.standard_normal((8, 2, 3))) for _ in range(2))
    alpha, sigma = schedule.alpha(t)[:, None, None], schedule.sigma(t)[:, None, None]
    terms = np.abs(alpha * x0) + np.abs(sigma * eps)  # a sum of two products: <= 2 ulps of these
    err = np.abs(L.perturb(x0, eps, t, schedule) - (alpha * x0 + sigma * eps))
    np.testing.assert_array_less(err, 4 * EPS64 * terms + 1e-300)


def test_loss_equals_the_familiar_native_losses(x64):
    """diffusion_loss with native weighting, no importance weights: the usual eps/v/x0 MSEs."""
    schedule = S.RectifiedFlow()
    gm = mixture()
    x0 = gm.sample(jax.random.key(0), 256)
    key = jax.random.key(1)
    seen = {}

    def network(x_t, t):
        seen["x_t"], seen["t"] = x_t, t
        return jnp.tanh(x_t) + t[:, None]  # any network

    for prediction in ("eps", "velocity", "x0", "score", "v"):
        model = Parameterization(schedule, prediction)
        config = L.LossConfig(weighting=prediction, importance_weighted=False)
        loss, t = L.diffusion_loss(network, x0, key, model, config)
        x_t = seen["x_t"]
        np.testing.assert_array_equal(t, seen["t"])
        alpha, sigma = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
        eps = (x_t - alpha * x0) / sigma
        target = {"eps": eps, "velocity": eps - x0, "x0": x0, "score": -eps / sigma,
                  "v": alpha * eps - sigma * x0}[prediction]
        expected = jnp.mean((jnp.tanh(x_t) + t[:, None] - target) ** 2, axis=1)
        # eps = (x_t - alpha x0)/sigma loses eps64 |x|/sigma <= 1e-12 relative at s = t_min.
        np.testing.assert_allclose(loss, expected, rtol=1e-9)


# -- time samplers -----------------------------------------------------------------------


def gauss_legendre(a, b, n):
    nodes, weights = np.polynomial.legendre.leggauss(n)
    mid, half = 0.5 * (a + b), 0.5 * (b - a)
    return mid + half * nodes[..., :], half * weights


def density_in_log_snr(sampler, model, lam):
    """``q(t(lambda)) |dt/d lambda|``: the sampler's density in log-SNR (smooth everywhere)."""
    schedule = model.schedule
    t = schedule.t_from_log_snr(jnp.asarray(lam))
    return np.asarray(sampler.density(t, model) * schedule.sigma(t) ** 2 / schedule.g2(t))


def log_snr_range(schedule):
    return float(schedule.log_snr(schedule.t_max)), float(schedule.log_snr(schedule.t_min))


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_time_sampler_density_and_samples_agree(x64, schedule, name):
    sampler, model = L.TimeSampler(name), Parameterization(schedule)
    n = 10000
    t = np.asarray(sampler.sample(jax.random.key(3), n, model))
    assert t.dtype == np.float64 and t.min() >= schedule.t_min and t.max() <= schedule.t_max
    lo, hi = log_snr_range(schedule)
    # Density integrates to 1: Gauss-Legendre in log-SNR, where every density is analytic;
    # 200 and 400 nodes agree to 1e-12, so 1e-9 is a quadrature bound with margin.
    for nodes in (200, 400):
        lam, w = gauss_legendre(lo, hi, nodes)
        assert np.sum(w * density_in_log_snr(sampler, model, lam)) == pytest.approx(1, abs=1e-9)
    # The samples follow the density: Kolmogorov-Smirnov against its CDF (quadrature from the
    # low-noise end, 32 nodes per sample: error < 1e-5), rejecting at p = 1e-6 (the test then
    # detects a CDF off by 0.027 anywhere).
    lam_samples = np.asarray(schedule.log_snr(jnp.asarray(t)))
    lam_nodes, w = gauss_legendre(lam_samples[:, None], hi, 32)
    tail = np.sum(w * density_in_log_snr(sampler, model, lam_nodes), axis=1)
    cdf_in_t = tail  # log-SNR decreases with t: P(T <= t) = P(lambda >= lambda(t))
    result = stats.kstest(cdf_in_t, "uniform")
    assert result.pvalue > 1e-6, (name, result)


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_importance_weights_keep_the_uniform_time_expectation(x64, schedule, name):
    """E_q[h(t) u/q] = E_u[h(t)] for a smooth h, within the estimator's exact standard error."""
    sampler, model = L.TimeSampler(name), Parameterization(schedule, "x0")
    config = L.LossConfig(weighting="x0", time_sampler=sampler)
    n = 20000
    h = lambda t: 1 / (1 + schedule.sigma_ve(t) ** 2)
    t = sampler.sample(jax.random.key(4), n, model)
    importance = L.loss_weight(config, model, t)  # u(t)/q(t) (x0 weighting is 1)
    estimate = float(jnp.mean(h(t) * importance))
    # Truth and the estimator's variance, by quadrature in log-SNR.
    lo, hi = log_snr_range(schedule)
    lam, w = gauss_legendre(lo, hi, 400)
    t_nodes = schedule.t_from_log_snr(jnp.asarray(lam))
    jac = np.asarray(schedule.sigma(t_nodes) ** 2 / schedule.g2(t_nodes))
    u = 1 / (schedule.t_max - schedule.t_min)
    q = np.asarray(sampler.density(t_nodes, model))
    hv = np.asarray(h(t_nodes))
    truth = np.sum(w * jac * hv * u)
    variance = np.sum(w * jac * hv**2 * u**2 / q) - truth**2
    se = math.sqrt(max(variance, 0.0) / n)
    assert abs(estimate - truth) <= Z_MAX * se + 1e-12 * abs(truth), (estimate, truth, se)


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_ml_importance_is_the_zero_variance_proposal_for_gaussian_data(x64, schedule):
    """``w_ML(t) mmse(t) u(t)/q(t)`` is constant in t for data of std sigma_data."""
    sd = 0.7
    model = Parameterization(schedule, sigma_data=sd)  # the sampler reads the model's sigma_data
    config = L.LossConfig(weighting="ml", time_sampler=L.TimeSampler("ml_importance"))
    t = times(schedule, 64, seed=5)
    sv = schedule.sigma_ve(t)
    mmse = sd**2 * sv**2 / (sd**2 + sv**2)
    integrand = np.asarray(L.loss_weight(config, model, t) * mmse)
    np.testing.assert_allclose(integrand, integrand.mean(), rtol=1e-10)


def test_bad_settings_are_rejected_with_the_choices():
    with pytest.raises(ValueError, match="^name='loguniform' is not valid; valid choices") as info:
        L.TimeSampler("loguniform")
    assert all(repr(n) in str(info.value) for n in SAMPLERS)
    with pytest.raises(ValueError, match="^weighting='snr' is not valid; valid choices") as info:
        L.LossConfig(weighting="snr")
    assert all(repr(n) in str(info.value) for n in L.WEIGHTINGS)
    with pytest.raises(ValueError, match="^weighting='snr' is not valid"):
        L.weighting("snr", S.VP(), 0.5, SD)
    with pytest.raises(ValueError, match=r"^p_std=0.0 is not valid; valid: a finite number > 0.0"):
        L.TimeSampler("lognormal", p_std=0.0)
    with pytest.raises(ValueError, match=r"^p_mean=nan is not valid; valid: a finite number"):
        L.TimeSampler("lognormal", p_mean=float("nan"))


# -- maximum likelihood: KL decay (paper eq. 17) ------------------------------------------


def gaussian_kl(m1, c1, m2, c2):
    d = len(m1)
    c2_inv = np.linalg.inv(c2)
    diff = m2 - m1
    return 0.5 * (np.trace(c2_inv @ c1) + diff @ c2_inv @ diff - d
                  + np.linalg.slogdet(c2)[1] - np.linalg.slogdet(c1)[1])


def five_point(fn, t, h):
    return (fn(t - 2 * h) - 8 * fn(t - h) + 8 * fn(t + h) - fn(t + 2 * h)) / (12 * h)


def local_time_scale(schedule, t):
    f, g2, sigma = (float(v) for v in (schedule.f(t), schedule.g2(t), schedule.sigma(t)))
    return min(1.0, schedule.t_end - t, 1 / abs(f) if f else math.inf, sigma**2 / g2)


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_kl_decay_between_gaussians(x64, schedule):
    """d/dt KL(p_t||q_t) = -g^2/2 E_p||grad log p - grad log q||^2 for Gaussians in closed form."""
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((2, 2, 2))
    m_p, c_p = np.array([0.5, -1.0]), a @ a.T + 0.1 * np.eye(2)
    m_q, c_q = np.array([-0.3, 0.4]), b @ b.T + 0.2 * np.eye(2)

    def marginal(m, c, t):
        alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
        return alpha * m, alpha**2 * c + sigma**2 * np.eye(2)

    def kl(t):
        return gaussian_kl(*marginal(m_p, c_p, t), *marginal(m_q, c_q, t))

    for sv in (0.05, 0.5, 3.0):
        t = float(schedule.t_from_sigma_ve(sv))
        h = 1e-3 * local_time_scale(schedule, t)
        lhs = five_point(kl, t, h)
        (mp, cp), (mq, cq) = marginal(m_p, c_p, t), marginal(m_q, c_q, t)
        # grad log p - grad log q = A x + b with A = Q^-1 - P^-1, b = P^-1 mp - Q^-1 mq.
        p_inv, q_inv = np.linalg.inv(cp), np.linalg.inv(cq)
        lin, off = q_inv - p_inv, p_inv @ mp - q_inv @ mq
        fisher = np.sum((lin @ mp + off) ** 2) + np.trace(lin @ cp @ lin.T)
        rhs = -0.5 * float(schedule.g2(t)) * fisher
        # Five-point error (h/scale)^4 ~ 1e-12 relative; rounding ~ 1e3 eps KL / h.
        assert lhs == pytest.approx(rhs, rel=1e-8, abs=1e3 * EPS64 * abs(kl(t)) / h), (sv, lhs, rhs)
        assert rhs < 0


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_kl_decay_between_gaussian_mixtures(x64, schedule):
    """The same for two 1-D mixtures, with the oracle's exact densities and scores on a grid."""
    p = oracle.GaussianMixture.isotropic([0.3, 0.7], [[-1.0], [1.5]], [0.3, 0.6])
    q = oracle.GaussianMixture.isotropic([0.5, 0.2, 0.3], [[-0.5], [0.5], [2.0]], [0.5, 0.4, 0.3])

    def on_grid(t):
        # x = alpha z: a grid in z covering +-12 std of the widest marginal component.
        alpha, sv = float(schedule.alpha(t)), float(schedule.sigma_ve(t))
        half = 3.0 + 12 * math.sqrt(0.36 + sv**2)
        z = np.linspace(-half, half, 6001)
        return jnp.asarray(alpha * z[:, None]), alpha * (z[1] - z[0])

    def kl(t):
        x, dx = on_grid(t)
        log_p, log_q = p.log_prob(x, t, schedule), q.log_prob(x, t, schedule)
        return float(jnp.sum(jnp.exp(log_p) * (log_p - log_q)) * dx)  # trapezoid: ends ~ 0

    for sv in (0.1, 1.0):
        t = float(schedule.t_from_sigma_ve(sv))
        h = 1e-3 * local_time_scale(schedule, t)
        lhs = five_point(kl, t, h)
        x, dx = on_grid(t)
        diff = p.score(x, t, schedule) - q.score(x, t, schedule)
        fisher = float(jnp.sum(jnp.exp(p.log_prob(x, t, schedule)) * diff[:, 0] ** 2) * dx)
        rhs = -0.5 * float(schedule.g2(t)) * fisher
        # The trapezoid rule is spectrally accurate here (error < 1e-14); five-point FD as above.
        assert lhs == pytest.approx(rhs, rel=1e-7, abs=1e4 * EPS64 * kl(t) / h), (sv, lhs, rhs)


# -- maximum likelihood in practice: DSM = SM + constant, the oracle minimises the loss ---------


def perturbed_models(gm, schedule, prediction, sizes, seed):
    """The oracle's native-``prediction`` model plus smooth perturbations ``eps_k(x, t)`` in D
    space.

    The perturbation is ``size * s/sqrt(1+s^2) * tanh(W z + b)`` (s = sigma_ve): bounded, and
    shrinking like the posterior spread at low noise, as a trained network's error does.
    """
    rng = np.random.default_rng(seed)
    models = []
    for size in sizes:
        w = jnp.asarray(rng.standard_normal((gm.dim, gm.dim)))
        b = jnp.asarray(rng.standard_normal(gm.dim))

        def model(x, t, size=size, w=w, b=b):
            alpha, sv = schedule.alpha(t)[:, None], schedule.sigma_ve(t)[:, None]
            z = x / alpha
            delta = size * sv / jnp.sqrt(1 + sv**2) * jnp.tanh(z @ w + b)
            return C.from_x0(gm.denoise(x, t, schedule) + delta, prediction, x, t, schedule, SD)

        models.append(model)
    return models


def recorded(model, seen):
    def wrapped(x, t):
        seen["x_t"], seen["t"] = x, t
        return model(x, t)
    return wrapped


@pytest.mark.parametrize("schedule", THREE, ids=THREE_IDS)
def test_dsm_equals_sm_plus_a_constant(x64, schedule):
    """Paper A.4: over several models, DSM - SM (same x0, eps, t) is one constant."""
    gm = mixture()
    n = 4096
    model = Parameterization(schedule, "eps")
    config = L.LossConfig(weighting="ml", time_sampler=L.TimeSampler("log_snr"))
    x0 = gm.sample(jax.random.key(7), n)
    key = jax.random.key(8)
    diffs, sms = [], []
    for network in perturbed_models(gm, schedule, "eps", [0.0, 0.5, 1.0, 2.0], seed=9):
        seen = {}
        dsm, t = L.diffusion_loss(recorded(network, seen), x0, key, model, config)
        # SM: the same weight on the distance to the exact denoiser (= score distance in x0 space).
        x_t = seen["x_t"]
        d_theta = C.to_x0(network(x_t, t), "eps", x_t, t, schedule)
        exact = gm.denoise(x_t, t, schedule)
        sm = L.loss_weight(config, model, t) * L.squared_error(d_theta, exact)
        diffs.append(np.asarray(dsm - sm))
        sms.append(np.asarray(sm))
    for k in range(1, len(diffs)):
        d = diffs[k] - diffs[0]  # = 2 w <D_k - D*, D* - x0> / dim: mean zero, per example
        se = d.std() / math.sqrt(n)
        assert abs(d.mean()) < Z_MAX * se, (k, d.mean(), se)
        # Not vacuous: SM itself changes between the models by many standard errors.
        s = sms[k] - sms[0]
        assert s.mean() > 10 * (s.std() / math.sqrt(n)) and s.mean() > 10 * se


@pytest.mark.parametrize("weighting", list(L.WEIGHTINGS))
def test_oracle_denoiser_minimises_the_loss(x64, weighting):
    """For each weighting: the loss does not depend on the prediction (the same D), and every
    perturbation of the oracle increases the Monte Carlo loss (common random numbers).

    Loss(D*+delta) - Loss(D*) = Q + C with Q = mean w |delta|^2 > 0 and C = mean 2 w <delta,
    D* - x0> of mean zero (D* = E[x0 | x_t]). Asserted: |C| < Z_MAX SE(C) (first-order
    condition), Q > Z_MAX SE(C) for the perturbation sizes used (design), hence Loss rises.
    """
    schedule, gm, n = S.VP(), mixture(), 4096
    config = L.LossConfig(weighting=weighting, time_sampler=L.TimeSampler("log_snr"))
    x0 = gm.sample(jax.random.key(10), n)
    key = jax.random.key(11)
    per_prediction = {}
    for prediction in C.PREDICTIONS:
        model = Parameterization(schedule, prediction)
        (network,) = perturbed_models(gm, schedule, prediction, [0.0], seed=12)
        per_prediction[prediction] = np.asarray(
            L.diffusion_loss(network, x0, key, model, config)[0]
        )
    best = per_prediction["x0"]
    for prediction, loss in per_prediction.items():
        # Converting D to a native output and back loses ~1e4 eps of |z|/sigma_ve <= 1e8 eps.
        np.testing.assert_allclose(loss, best, rtol=1e-7, err_msg=prediction)
    seen = {}
    model = Parameterization(schedule, "x0")
    networks = perturbed_models(gm, schedule, "x0", [0.3, 1.0, 3.0], seed=13)
    for network in networks:
        loss, t = L.diffusion_loss(recorded(network, seen), x0, key, model, config)
        x_t = seen["x_t"]
        w = np.asarray(L.loss_weight(config, model, t))
        assert np.all(w > 0)
        delta = np.asarray(network(x_t, t) - gm.denoise(x_t, t, schedule))
        quad = w * np.mean(delta**2, axis=1)
        cross = np.asarray(loss) - best - quad
        se = cross.std() / math.sqrt(n)
        assert abs(cross.mean()) < Z_MAX * se, (cross.mean(), se)
        assert quad.mean() > Z_MAX * se
        assert float(np.mean(loss)) > float(np.mean(best))
