"""Samplers against exact answers from the Gaussian-mixture oracle.

* Convergence order: for Gaussian data the probability-flow ODE is solved in closed form,
  ``z_sigma = mu + U diag(sqrt((lam + sigma^2) / (lam + sigma_T^2))) U^T (z_T - mu)``; the error
  of an order-p solver falls as ``N^-p``, so doubling the steps divides it by ``2^p``. With
  ``e(N) = K N^-p (1 + a/N + ...)`` the measured ``log2(e(N)/e(2N))`` at N = 64 is within 0.25 of
  p for any ``|a| < 20``: that is the band asserted. The Adams methods on ``eps`` in sigma see
  the Karras grid's steps in sigma, which vary by orders of magnitude (``|a|`` up to ~100 for
  order 4): they are measured at N = 256, where the same band holds for ``|a| < 80``. UniPC of
  order p converges at p + 1 (its corrector); iPNDM's equal-step weights make it order 2 on
  any grid not uniform in sigma, whatever its order.
* Distributions: a sliced Wasserstein distance between n samples and n exact samples is never 0;
  its null distribution (both sides exact) is measured in the same test from independent exact
  draws and a sampler passes when its distance is below ``null mean + 4 null sd`` (discretisation
  bias at high NFE is far below that; a too-coarse sampler is shown to fail it).
* Marginals along the way: forward-reverse duality, ``q_t' = p_{T - t'}`` for c = 2 and c = 3.

The test mixture is centred: a deterministic sampler started from ``N(0, sigma_max^2)`` instead
of ``p_sigma_max`` keeps a bias of order ``|mean| * std / sigma_max`` in its output (the PF-ODE
map does not forget its start), which would show at these sample sizes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_lv.eval.metrics import sliced_wasserstein
from diffusion_lv.oracle import GaussianMixture, random_anisotropic
from diffusion_lv.parameterization import Parameterization
from diffusion_lv.samplers import (
    SamplerConfig,
    get_sigmas,
    initial_noise,
    sample,
    sample_deis,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_euler,
    sample_exponential_multistep,
    sample_heun,
    sample_ipndm,
    sample_lms,
    sample_ode,
    sample_unipc,
)
from diffusion_lv.schedules import VP, CosineVP, LinearVP, RectifiedFlow, VEKarras

# -- convergence order on Gaussian data (float64) --------------------------------------------

SIGMA_MAX, SIGMA_MIN = 80.0, 0.02
EIGVALS = np.array([0.01, 0.05, 0.3, 1.0])


def _gaussian():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    mu = rng.standard_normal(4)
    gm = GaussianMixture.from_covariances([1.0], [mu], [(q * EIGVALS) @ q.T])
    z_T = initial_noise(jax.random.PRNGKey(0), (32, 4), SIGMA_MAX)
    ratio = np.sqrt((EIGVALS + SIGMA_MIN**2) / (EIGVALS + SIGMA_MAX**2))
    exact = mu + ((np.asarray(z_T) - mu) @ q * ratio) @ q.T
    return gm, z_T, exact


ODE_SOLVERS = {  # name -> (order, solve, N)
    "euler": (1, lambda d, z, s: sample_euler(d, z, None, s), 64),
    "euler_in_vp": (1, lambda d, z, s: sample_euler(d, z, None, s, step_schedule=VP()), 64),
    "heun": (2, lambda d, z, s: sample_heun(d, z, None, s), 64),
    "heun_in_rf": (2, lambda d, z, s: sample_heun(d, z, None, s, step_schedule=RectifiedFlow()),
                   64),
    "dpmpp_2m": (2, lambda d, z, s: sample_dpmpp_2m(d, z, None, s), 64),
    "dpmpp_2m_heun": (2, lambda d, z, s: sample_dpmpp_2m_sde(d, z, None, s, c=1.0,
                                                             solver_type="heun"), 64),
    "exp_2m": (2, lambda d, z, s: sample_exponential_multistep(d, z, None, s, order=2), 64),
    "dpmpp_3m": (3, lambda d, z, s: sample_exponential_multistep(d, z, None, s, order=3), 64),
    "unipc_1": (2, lambda d, z, s: sample_unipc(d, z, None, s, order=1), 64),
    "unipc_2_bh1": (3, lambda d, z, s: sample_unipc(d, z, None, s, order=2, variant="bh1"), 64),
    "unipc_3": (4, lambda d, z, s: sample_unipc(d, z, None, s, order=3), 64),
    "lms_2": (2, lambda d, z, s: sample_lms(d, z, None, s, order=2), 256),
    "lms_3": (3, lambda d, z, s: sample_lms(d, z, None, s, order=3), 256),
    "lms_4": (4, lambda d, z, s: sample_lms(d, z, None, s, order=4), 256),
    "deis_3_vp": (3, lambda d, z, s: sample_deis(d, z, None, s, order=3), 256),
    "deis_4_rf": (4, lambda d, z, s: sample_deis(d, z, None, s, order=4, step_schedule="rf"),
                  256),
    "ipndm_4": (2, lambda d, z, s: sample_ipndm(d, z, None, s, order=4), 64),
}


@pytest.mark.parametrize("name", list(ODE_SOLVERS))
def test_ode_solvers_converge_at_their_order(name, x64):
    order, solve, n = ODE_SOLVERS[name]
    gm, z_T, exact = _gaussian()
    errors = []
    for steps in (n, 2 * n):
        sigmas = get_sigmas("karras", steps + 1, SIGMA_MIN, SIGMA_MAX, 7.0)
        z = jax.jit(lambda s=sigmas: solve(gm.denoise_ve, z_T, s)[0])()
        errors.append(float(jnp.sqrt(jnp.mean(jnp.square(z - exact)))))
    measured = np.log2(errors[0] / errors[1])
    assert abs(measured - order) < 0.25, (name, errors, measured)


def test_adaptive_ode_reference_meets_the_closed_form(x64):
    gm, z_T, exact = _gaussian()
    sigmas = np.array([SIGMA_MAX, SIGMA_MIN])
    z, info = jax.jit(
        lambda: sample_ode(gm.denoise_ve, z_T, None, sigmas, rtol=1e-10, atol=1e-10)
    )()
    error = float(jnp.max(jnp.abs(z - exact)))
    assert error < 1e-7, error  # tolerance 1e-10 per unit log-sigma over ~8.3 units
    assert int(info["num_steps"]) < 2000


# -- every sampler reaches the data distribution ---------------------------------------------

N_SAMPLES = 8192


@pytest.fixture(scope="module")
def problem():
    """Centred 2-D anisotropic mixture, reference samples, and the SWD null distribution."""
    raw = random_anisotropic(0, 2, 4)
    gm = raw.replace(means=raw.means - raw.mean())
    exact = jax.jit(lambda key: gm.sample(key, N_SAMPLES))
    ref = exact(jax.random.PRNGKey(100))
    # 2-D: 32 directions resolve every projection that matters; XLA's CPU sort is the cost.
    distance = jax.jit(
        lambda x, y: sliced_wasserstein(x, y, jax.random.PRNGKey(99), num_projections=32)
    )

    def statistic(x):
        return float(distance(x, ref))

    # The null is heavy-tailed (mode-count fluctuations): 24 draws pin its sd to ~15%.
    null = [statistic(exact(jax.random.PRNGKey(200 + k))) for k in range(24)]
    threshold = float(np.mean(null) + 4.0 * np.std(null, ddof=1))
    return gm, statistic, threshold


def _draw(gm, name, schedule, kind, nfe, **kwargs):
    cfg = SamplerConfig(name=name, nfe=nfe, sigma_max=50.0, sigma_min=0.005, **kwargs)
    model = Parameterization(schedule, kind, gm.std() if kind == "edm" else 0.5)
    model_fn = gm.model_fn(schedule, kind)
    run = jax.jit(lambda k: sample(model_fn, model, k, (N_SAMPLES, 2), cfg)[0])
    return run(jax.random.PRNGKey(0))


REACH_CASES = [
    ("euler", VEKarras(), "x0", 200, {}),
    ("euler", RectifiedFlow(), "velocity", 400, dict(c=2.0, step_schedule="vp")),  # VP rev. SDE
    ("euler", RectifiedFlow(), "velocity", 400, dict(c=3.0, step_schedule="rf")),
    ("heun", VP(), "score", 100, {}),  # VP score model, Karras-step Heun
    ("heun", VEKarras(), "edm", 200, dict(s_churn=20.0, s_tmin=0.05, s_tmax=10.0)),
    ("ddim", LinearVP(), "eps", 200, dict(eta=0.5)),
    ("ddpm", CosineVP(), "v", 400, {}),
    ("dpmpp_2m", RectifiedFlow(), "velocity", 100, {}),
    ("dpmpp_3m", VEKarras(), "x0", 100, dict(grid="log_snr")),
    ("dpmpp_2m_sde", VP(), "eps", 200, {}),
    ("dpmpp_3m_sde", VP(), "eps", 200, dict(c=1.5)),
    ("dpmpp_2m_sde", CosineVP(), "v", 200, dict(solver_type="heun")),
    ("unipc", RectifiedFlow(), "velocity", 50, {}),
    ("unipc", VP(), "eps", 50, dict(order=2, variant="bh1", grid="log_snr")),
    ("lms", VEKarras(), "edm", 50, {}),
    ("deis", LinearVP(), "eps", 50, {}),
    ("ipndm", VP(), "score", 50, {}),
    ("pc", VP(), "score", 400, dict(predictor="ddpm", snr=0.16)),
    ("pc", VP(), "score", 400, dict(predictor="euler", c=2.0, snr="split")),
    ("smld", VEKarras(), "x0", 3001, dict(grid="log_snr", langevin_steps=100,
                                          langevin_step_size=0.2)),
    ("ode", VEKarras(), "x0", 1, dict(rtol=1e-5, atol=1e-5)),
]


@pytest.mark.parametrize(
    "name, schedule, kind, nfe, kwargs",
    REACH_CASES,
    ids=[f"{c[0]}-{c[1].name}-{c[2]}-{i}" for i, c in enumerate(REACH_CASES)],
)
def test_every_sampler_reaches_the_data_distribution(problem, name, schedule, kind, nfe, kwargs):
    gm, statistic, threshold = problem
    value = statistic(_draw(gm, name, schedule, kind, nfe, **kwargs))
    assert value < threshold, (value, threshold)


def test_the_distribution_check_can_fail(problem):
    gm, statistic, threshold = problem
    value = statistic(_draw(gm, "euler", VEKarras(), "x0", 8))
    assert value > 2.0 * threshold, (value, threshold)


# -- forward-reverse duality: the right marginals at intermediate noise levels ---------------


@pytest.mark.parametrize("c", [2.0, 3.0])
def test_reverse_split_has_the_forward_marginals_on_the_way(problem, c):
    # Euler-Maruyama of the VP reverse split with rate c (c = 2: the paper's VP reverse SDE):
    # the state at reverse time t' must be distributed as the forward p_{T - t'}. Two checks at
    # each level: the shape (sliced Wasserstein against its null) and the scale, the second
    # moment E||z||^2 = tr(Cov_data) + d sigma^2 within 4 of its own standard errors (a 10%
    # error in the noise variance moves it by more than 5 standard errors).
    gm, _, _ = problem
    n = N_SAMPLES
    cfg = SamplerConfig(name="euler", nfe=201, grid="log_snr", sigma_max=50.0, sigma_min=0.01,
                        c=c, step_schedule="vp", trajectory=True)
    model = Parameterization(VP(), "eps")
    info = jax.jit(
        lambda k: sample(gm.model_fn(VP(), "eps"), model, k, (n, 2), cfg)[1]
    )(jax.random.PRNGKey(1))
    sigmas = info["sigmas"]
    distance = jax.jit(
        lambda x, y: sliced_wasserstein(x, y, jax.random.PRNGKey(98), num_projections=32)
    )
    exact = jax.jit(lambda key, level: gm.sample_marginal(key, n, level, VEKarras()))
    data_second_moment = float(jnp.trace(gm.covariance()))  # the mixture is centred
    for target in (1.0, 0.1):
        index = int(np.argmin(np.abs(sigmas[1:] - target)))
        level = float(sigmas[index + 1])
        z = info["trajectory"][index]
        ref = exact(jax.random.PRNGKey(300), level)
        null = [float(distance(exact(jax.random.PRNGKey(400 + k), level), ref)) for k in range(16)]
        value = float(distance(z, ref))
        assert value < np.mean(null) + 4.0 * np.std(null, ddof=1), (level, value, null)
        squared = np.sum(np.square(np.asarray(z, np.float64)), axis=1)
        z_score = (squared.mean() - data_second_moment - 2 * level**2) / (
            squared.std() / np.sqrt(n)
        )
        assert abs(z_score) < 4.0, (level, z_score)
