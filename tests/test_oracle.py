"""The Gaussian-mixture oracle is the ground truth, so it is checked against independent truths.

* exact identities (float64): score = grad log p (autodiff), Tweedie ``D = z + s^2 score``,
  log p and D against a direct numpy/scipy evaluation from the covariance matrices;
* dynamics (float32, Monte Carlo): the oracle's marginal ``p_t`` is what simulating the forward
  SDE from data gives. Tolerances are Monte Carlo standard errors; the Euler-Maruyama bias on
  the first two moments is computed exactly (the SDE is linear) and asserted to be far below them.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffusion_lv import langevin, oracle
from diffusion_lv import schedules as S

ALL = [S.VP(), S.VEKarras(), S.RectifiedFlow(), S.LinearVP(), S.CosineVP()]
IDS = [s.name for s in ALL]
Z_MAX = 5.0  # |z-score| bound for Monte Carlo statistics: two-sided p = 6e-7 each


def full_covariance_params(dim=3):
    rng = np.random.default_rng(7)
    weights = np.array([0.5, 0.3, 0.2])
    means = 1.5 * rng.standard_normal((3, dim))
    covs = []
    for _ in range(3):
        a = rng.standard_normal((dim, dim))
        covs.append(0.3 * a @ a.T / dim + 0.02 * np.eye(dim))
    return weights, means, np.stack(covs)


def diagonal_params(dim=3):
    rng = np.random.default_rng(8)
    weights = np.array([0.2, 0.3, 0.5])
    means = 1.5 * rng.standard_normal((3, dim))
    variances = np.exp(rng.uniform(np.log(0.01), np.log(1.0), (3, dim)))
    return weights, means, variances[:, :, None] * np.eye(dim)[None]


def build(kind, dim=3):
    """A mixture from its covariance matrices (the matrices are also returned, for numpy)."""
    weights, means, covs = (full_covariance_params if kind == "full" else diagonal_params)(dim)
    if kind == "full":
        gm = oracle.GaussianMixture.from_covariances(weights, means, covs)
    else:
        gm = oracle.GaussianMixture.diagonal(weights, means, np.diagonal(covs, axis1=1, axis2=2))
    return gm, (weights, means, covs)


MIXTURES = ["full", "diagonal"]


def points(schedule, n, seed, dim=3):
    """Noisy points over the whole domain (both ends included), float64."""
    rng = np.random.default_rng(seed)
    sv = np.exp(rng.uniform(math.log(schedule.sigma_ve_min), math.log(schedule.sigma_ve_max), n))
    sv[:2] = schedule.sigma_ve_min, schedule.sigma_ve_max
    t = schedule.t_from_sigma_ve(jnp.asarray(sv))
    z = 1.5 * rng.standard_normal((n, dim)) + rng.standard_normal((n, 1)) * sv[:, None]
    x = jnp.asarray(z) * schedule.alpha(t)[:, None]
    return x, t


# -- exact identities (float64) ---------------------------------------------------------------


@pytest.mark.parametrize("mixture", MIXTURES)
@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_score_is_the_gradient_of_log_prob(x64, schedule, mixture):
    gm, _ = build(mixture)
    x, t = points(schedule, 16, seed=1)
    autodiff = jax.grad(lambda x: jnp.sum(gm.log_prob(x, t, schedule)))(x)
    score = gm.score(x, t, schedule)
    # Both are sums over components of terms <= max|score|; reverse-mode adds O(10) roundings.
    np.testing.assert_allclose(score, autodiff, rtol=1e-9, atol=1e-12 * np.abs(score).max())


@pytest.mark.parametrize("mixture", MIXTURES)
@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_tweedie_denoiser_is_x_plus_sigma2_score(x64, schedule, mixture):
    """``alpha D = x + sigma^2 score`` (Tweedie), with D and the score computed independently."""
    gm, _ = build(mixture)
    x, t = points(schedule, 16, seed=2)
    alpha, sigma = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    tweedie = (x + sigma**2 * gm.score(x, t, schedule)) / alpha
    # x/alpha and D are O(|z|); the sum cancels down to D: error ~ eps |z|, bounded by 1e-12 |z|.
    scale = np.abs(np.asarray(x / alpha)).max()
    np.testing.assert_allclose(gm.denoise(x, t, schedule), tweedie, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(gm.predict(x, t, schedule, "x0"), gm.denoise(x, t, schedule))


@pytest.mark.parametrize("mixture", MIXTURES)
def test_log_prob_and_denoiser_match_direct_bayes(x64, mixture):
    """log p_t and E[x0|x_t] from the covariance matrices with numpy/scipy (no eigenvectors)."""
    gm, (weights, means, covs) = build(mixture)
    dim = means.shape[1]
    for schedule in (S.VP(), S.RectifiedFlow()):
        x, t = points(schedule, 8, seed=3)
        alpha, sv = np.asarray(schedule.alpha(t)), np.asarray(schedule.sigma_ve(t))
        x_np = np.asarray(x)
        for i in range(x_np.shape[0]):
            # x = alpha (x0 + sv eps): component k is N(alpha mu_k, alpha^2 (C_k + sv^2 I)).
            comp_cov = alpha[i] ** 2 * (covs + sv[i] ** 2 * np.eye(dim))
            log_joint = np.array([
                np.log(w) + stats.multivariate_normal(alpha[i] * m, c).logpdf(x_np[i])
                for w, m, c in zip(weights, means, comp_cov, strict=True)
            ])
            log_p = np.logaddexp.reduce(log_joint)
            resp = np.exp(log_joint - log_p)
            z = x_np[i] / alpha[i]
            wiener = [m + c @ np.linalg.solve(c + sv[i] ** 2 * np.eye(dim), z - m)
                      for m, c in zip(means, covs, strict=True)]
            denoised = resp @ np.stack(wiener)
            got_log_p = float(gm.log_prob(x[i : i + 1], t[i], schedule)[0])
            assert got_log_p == pytest.approx(log_p, rel=1e-10, abs=1e-10)
            np.testing.assert_allclose(gm.denoise(x[i : i + 1], t[i], schedule)[0], denoised,
                                       rtol=1e-9, atol=1e-12 * np.abs(z).max())


def test_moments_and_sampling_match_the_parameters():
    gm, (weights, means, covs) = build("full", dim=2)
    mean = weights @ means
    cov = np.einsum("k,kij->ij", weights, covs) + np.einsum(
        "k,ki,kj->ij", weights, means - mean, means - mean
    )
    np.testing.assert_allclose(gm.mean(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gm.covariance(), cov, rtol=1e-5, atol=1e-6)
    assert gm.std() == pytest.approx(np.sqrt(np.trace(cov) / 2), rel=1e-5)
    n = 40000
    x = np.asarray(gm.sample(jax.random.key(0), n), np.float64)
    assert_moments_match(x, mean, cov, "data samples")


def test_constructors_validate_and_agree():
    ring = oracle.ring(num_modes=8, radius=2.0, std=0.1)
    np.testing.assert_allclose(np.linalg.norm(ring.means, axis=1), 2.0, rtol=1e-6)
    np.testing.assert_allclose(ring.eigvals, 0.01, rtol=1e-5)
    np.testing.assert_allclose(ring.weights, 1 / 8, rtol=1e-6)
    w, m, v = [1.0, 3.0], [[0.0, 1.0], [2.0, -1.0]], [[0.5, 0.2], [0.1, 0.3]]
    diag = oracle.GaussianMixture.diagonal(w, m, v)
    full = oracle.GaussianMixture.from_covariances(w, m, np.stack([np.diag(r) for r in v]))
    np.testing.assert_allclose(diag.weights, [0.25, 0.75])
    np.testing.assert_allclose(diag.covariance(), full.covariance(), rtol=1e-6)
    with pytest.raises(ValueError, match="weights must be"):
        oracle.GaussianMixture.from_covariances([1.0], m, np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match=r"covariances must have shape \(2, 2, 2\)"):
        oracle.GaussianMixture.from_covariances(w, m, np.ones((2, 3, 3)))
    with pytest.raises(ValueError, match="mixture weights must be positive"):
        oracle.GaussianMixture.from_covariances([1.0, 0.0], m, np.stack([np.eye(2)] * 2))
    with pytest.raises(ValueError, match="positive semi-definite"):
        oracle.GaussianMixture.from_covariances(w, m, np.stack([-np.eye(2)] * 2))
    with pytest.raises(ValueError, match="unknown prediction"):
        ring.model_fn(S.VP(), "noise")


# -- the marginal is the forward SDE's (float32, Monte Carlo) --------------------------------


def assert_moments_match(x, mean, cov, what):
    """Sample mean and covariance of ``x`` (n, d) agree with ``mean``, ``cov`` within Z_MAX SEs.

    Standard errors come from the sample itself: Var(x_i)/n for means, and the variance of the
    products (x_i - m_i)(x_j - m_j) over n for covariances (valid for non-Gaussian data).
    """
    n = x.shape[0]
    centred = x - x.mean(0)
    z_mean = (x.mean(0) - mean) / np.sqrt(x.var(0) / n)
    products = centred[:, :, None] * centred[:, None, :]
    z_cov = (products.mean(0) - cov) / np.sqrt(products.var(0) / n)
    worst = max(np.abs(z_mean).max(), np.abs(z_cov).max())
    assert worst < Z_MAX, f"{what}: mean z {z_mean}, covariance z {z_cov}"


def moment_standard_errors(mean, cov, n):
    """Gaussian-approximation standard errors of sample means and covariances (for design)."""
    var = np.diag(cov)
    return np.sqrt(var / n), np.sqrt((np.outer(var, var) + cov**2) / n)


def em_moments(schedule, t0, dt, num_steps, mean, cov):
    """Exact mean/covariance after Euler-Maruyama steps of the linear forward SDE, in float64."""
    t = t0 + dt * np.arange(num_steps)
    with jax.enable_x64(True):
        f, g2 = np.asarray(schedule.f(jnp.asarray(t))), np.asarray(schedule.g2(jnp.asarray(t)))
    for fi, gi in zip(f, g2, strict=True):
        mean, cov = (1 + fi * dt) * mean, (1 + fi * dt) ** 2 * cov + gi * dt * np.eye(len(mean))
    return mean, cov


@functools.partial(jax.jit, static_argnums=(0, 3))
def simulate_forward(schedule, x, t0, num_steps, dt, key):
    """``num_steps`` forward split steps (Euler-Maruyama of the forward SDE) in one scan."""

    def step(carry, i):
        x, t = carry
        return langevin.forward_split_step(schedule, x, t, dt, jax.random.fold_in(key, i)), None

    (x, t), _ = jax.lax.scan(step, (x, t0), jnp.arange(num_steps))
    return x, t


FORWARD_STEPS = 1000
FORWARD_SAMPLES = 20000


@pytest.mark.parametrize("mixture", MIXTURES)
@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_marginal_is_the_forward_sde_from_data(schedule, mixture):
    """Simulate the forward SDE from near-data samples to sigma_ve = 1; compare with ``p_t``.

    Statistics: mean, covariance, and E[log p_t(X)] under the oracle's density (sensitive to the
    shape, not only the moments), the latter against exact samples of ``p_t``.
    """
    gm, _ = build(mixture, dim=2)
    t0 = schedule.t_min
    t1 = float(schedule.t_from_sigma_ve(1.0))
    dt = (t1 - t0) / FORWARD_STEPS
    n = FORWARD_SAMPLES
    k_start, k_path, k_exact = jax.random.split(jax.random.key(IDS.index(schedule.name)), 3)
    x_start = gm.sample_marginal(k_start, n, t0, schedule)
    x_end, t_end = simulate_forward(schedule, x_start, t0, FORWARD_STEPS, dt, k_path)
    assert float(t_end) == pytest.approx(t1, rel=1e-5)

    alpha, sigma = float(schedule.alpha(t1)), float(schedule.sigma(t1))
    mean = alpha * np.asarray(gm.mean(), np.float64)
    cov = alpha**2 * np.asarray(gm.covariance(), np.float64) + sigma**2 * np.eye(2)
    # Design check: the Euler-Maruyama bias of the moments (exact for this linear SDE) is at
    # most a quarter of their Monte Carlo standard errors: it moves a z-score by <= 0.25 of
    # the bound Z_MAX = 5, so it cannot decide the test.
    a0, s0 = float(schedule.alpha(t0)), float(schedule.sigma(t0))
    mean0 = a0 * np.asarray(gm.mean(), np.float64)
    cov0 = a0**2 * np.asarray(gm.covariance(), np.float64) + s0**2 * np.eye(2)
    em_mean, em_cov = em_moments(schedule, t0, dt, FORWARD_STEPS, mean0, cov0)
    se_mean, se_cov = moment_standard_errors(mean, cov, n)
    assert np.all(np.abs(em_mean - mean) < 0.25 * se_mean)
    assert np.all(np.abs(em_cov - cov) < 0.25 * se_cov)

    x_end = np.asarray(x_end, np.float64)
    assert_moments_match(x_end, mean, cov, f"forward SDE ({schedule.name})")
    log_p_sim = np.asarray(gm.log_prob(jnp.asarray(x_end, jnp.float32), t1, schedule), np.float64)
    x_exact = gm.sample_marginal(k_exact, 2 * n, t1, schedule)
    log_p_exact = np.asarray(gm.log_prob(x_exact, t1, schedule), np.float64)
    se = np.sqrt(log_p_sim.var() / n + log_p_exact.var() / (2 * n))
    z = (log_p_sim.mean() - log_p_exact.mean()) / se
    assert abs(z) < Z_MAX, f"E log p_t: simulated {log_p_sim.mean()}, exact {log_p_exact.mean()}"
    assert_moments_match(np.asarray(x_exact, np.float64), mean, cov, "sample_marginal")
