"""Conditional samplers and the exact conditionals of the Gaussian-mixture oracle.

* Oracle (float64): ``oracle.condition`` and ``oracle.linear_gaussian_posterior`` against Bayes'
  rule evaluated by quadrature on a fine grid (the integrands are Gaussians much wider than the
  grid step, so the Riemann sums are exact to far below the 1e-6 asserted).
* Samplers (float32, Monte Carlo, exact oracle score): one 2-D Gaussian with correlation 0.95,
  x_1 = 1.5 known. The exact conditional is ``N(1.425, 0.0975)``; the unconditional mean of x_2
  is 0, hundreds of standard errors away, so a sampler that ignored the mask fails every check.
  Tolerances are ``Z_MAX`` standard errors of the statistic at the stated sample size (mean:
  ``sqrt(v / n)``; variance ratio: ``sqrt(2 / n)``).
* Rate: the Langevin-corrected sampler's error is first order in ``1 / langevin_steps`` (at a
  fixed grid the chain lags the moving target of each level by ``O(1 / (k step_scale))``, see
  docs/conditional.md); the measured order between k = 4 and k = 16 is asserted to lie in
  [0.7, 1.5]: 1 up to the O(1/k) relative correction of a first-order method at these k and the
  Monte Carlo error of the smaller error (7 SE measured: +-0.1 in the order).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_lv import oracle
from diffusion_lv.conditional import (
    ConditionalConfig,
    Inpainting,
    Observation,
    blur_operator,
    downsample_operator,
    operator_matrix,
    sample_conditional,
    sample_dps,
    sample_langevin,
    sample_repaint,
    sample_replacement,
    sample_smc,
)
from diffusion_lv.conditional.observations import blur_matrix, pool_matrix
from diffusion_lv.parameterization import Parameterization
from diffusion_lv.samplers import get_sigmas, initial_noise
from diffusion_lv.schedules import VP, RectifiedFlow, VEKarras

Z_MAX = 5.0  # standard errors: two-sided p = 6e-7 per check


def _mixture_2d():
    covs = [[[0.5, 0.3], [0.3, 0.4]], [[0.2, -0.1], [-0.1, 0.3]], [[0.05, 0.0], [0.0, 0.6]]]
    return oracle.GaussianMixture.from_covariances(
        [0.5, 0.3, 0.2], [[-1.0, 0.5], [1.0, -1.0], [0.3, 1.5]], covs
    )


def _grid_moments(log_density, points):
    w = np.exp(log_density - log_density.max())
    w = w / w.sum()
    mean = w @ points
    centred = points - mean
    return mean, np.einsum("n,ni,nj->ij", w, centred, centred)


def test_condition_matches_bayes_by_quadrature(x64):
    gm = _mixture_2d()
    u = np.linspace(-8.0, 8.0, 32001)
    for known, y in ((0, 0.4), (1, -0.7)):
        mask = np.arange(2) == known
        values = np.where(mask, y, 0.0)
        points = np.zeros((u.size, 2))
        points[:, known], points[:, 1 - known] = y, u
        log_joint = np.asarray(gm.log_prob_ve(jnp.asarray(points), 0.0))
        mean, cov = _grid_moments(log_joint, u[:, None])
        cond = oracle.condition(gm, mask, values)
        assert cond.dim == 1
        np.testing.assert_allclose(np.asarray(cond.mean()), mean, atol=1e-6)
        np.testing.assert_allclose(np.asarray(cond.covariance()), cov, atol=1e-6)
        # The conditional is not the unconditional marginal of that coordinate.
        assert abs(float(cond.mean()[0]) - float(gm.mean()[1 - known])) > 0.1


def test_linear_gaussian_posterior_matches_bayes_by_quadrature(x64):
    gm = _mixture_2d()
    a, y, s = np.array([[1.0, 0.5]]), np.array([0.8]), 0.3
    axis = np.linspace(-6.0, 6.0, 801)
    points = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    log_post = (
        np.asarray(gm.log_prob_ve(jnp.asarray(points), 0.0))
        - 0.5 * np.square(points @ a[0] - y[0]) / s**2
    )
    mean, cov = _grid_moments(log_post, points)
    post = oracle.linear_gaussian_posterior(gm, a, y, s)
    np.testing.assert_allclose(np.asarray(post.mean()), mean, atol=1e-6)
    np.testing.assert_allclose(np.asarray(post.covariance()), cov, atol=1e-6)


def test_a_selection_observation_without_noise_is_the_conditional(x64):
    gm = oracle.random_anisotropic(1, 4, 3)
    mask = np.array([True, False, True, False])
    values = np.array([0.3, 0.0, -0.5, 0.0])
    cond = oracle.condition(gm, mask, values)
    post = oracle.linear_gaussian_posterior(gm, np.eye(4)[mask], values[mask], 1e-7)
    np.testing.assert_allclose(np.asarray(post.mean())[~mask], np.asarray(cond.mean()), atol=1e-6)
    cov = np.asarray(post.covariance())
    np.testing.assert_allclose(cov[np.ix_(~mask, ~mask)], np.asarray(cond.covariance()), atol=1e-6)
    np.testing.assert_allclose(cov[np.ix_(mask, mask)], 0.0, atol=1e-6)


def test_linear_operators():
    assert np.allclose(blur_matrix(6, 1.0).sum(1), 1.0)
    p = pool_matrix(8, 2)
    assert np.allclose(p @ p.T, np.eye(4) / 2)
    x = jnp.arange(2 * 16, dtype=jnp.float32).reshape(2, 4, 4)
    small = downsample_operator((4, 4), 2)(x)
    assert small.shape == (2, 2, 2, 1)
    np.testing.assert_allclose(small[0, 0, 0, 0], np.mean(np.asarray(x)[0, :2, :2]))
    a = operator_matrix(blur_operator((4, 4), 1.0, flat=True), (16,))
    np.testing.assert_allclose(a @ np.ones(16), np.ones(16), atol=1e-6)  # constants kept
    np.testing.assert_allclose(np.kron(blur_matrix(4, 1.0), blur_matrix(4, 1.0)), a, atol=1e-6)
    with pytest.raises(ValueError, match="factor=3"):
        downsample_operator((4, 4), 3)
    with pytest.raises(ValueError, match="std=0"):
        blur_operator((4, 4), 0)


# -- samplers on a correlated Gaussian (float32, Monte Carlo) --------------------------------

RHO, Y, N = 0.95, 1.5, 20000
LEVELS = get_sigmas("karras", 30, 0.01, 80.0, 7.0, with_final_zero=True)


def _gaussian():
    return oracle.GaussianMixture.from_covariances([1.0], [[0.0, 0.0]], [[[1, RHO], [RHO, 1]]])


def _inpainting(n, y=Y):
    values = jnp.broadcast_to(jnp.asarray([y, 0.0], jnp.float32), (n, 2))
    return Inpainting(jnp.asarray([True, False]), values)


@pytest.fixture(scope="module")
def gaussian_runs():
    """x_2 samples of replacement, RePaint and Langevin with k = 4, 16, 64 steps per level."""
    gm = _gaussian()
    z = initial_noise(jax.random.PRNGKey(0), (N, 2), 80.0)
    runs = {
        "replacement": (sample_replacement, {}),
        "repaint": (sample_repaint, dict(resamples=4)),
        **{k: (sample_langevin, dict(langevin_steps=k)) for k in (4, 16, 64)},
    }
    out = {}
    for name, (fn, kw) in runs.items():
        x, info = jax.jit(
            lambda z, fn=fn, kw=kw: fn(
                gm.denoise_ve, z, jax.random.PRNGKey(1), LEVELS, _inpainting(N), **kw
            )
        )(z)
        assert np.all(np.asarray(x[:, 0]) == np.float32(Y))  # the known part is pasted exactly
        out[name] = np.asarray(x[:, 1], np.float64)
    cond = oracle.condition(gm, np.array([True, False]), np.array([Y, 0.0]))
    mean, var = float(cond.mean()[0]), float(cond.covariance()[0, 0])
    assert abs(mean - RHO * Y) < 1e-6 and abs(var - (1 - RHO**2)) < 1e-6
    return out, mean, var


def _errors(u, mean, var):
    """Mean error in standard errors, and the variance ratio's distance from 1 in SEs."""
    return (u.mean() - mean) / math.sqrt(var / N), (u.var() / var - 1) / math.sqrt(2 / N)


def test_replacement_and_repaint_are_biased(gaussian_runs):
    runs, mean, var = gaussian_runs
    assert mean / math.sqrt(var / N) > 100 * Z_MAX  # conditional far from the unconditional 0
    for name in ("replacement", "repaint"):
        mean_err, var_err = _errors(runs[name], mean, var)
        assert abs(mean_err) > Z_MAX or abs(var_err) > Z_MAX, (name, mean_err, var_err)


def test_langevin_matches_the_exact_conditional_with_many_steps(gaussian_runs):
    runs, mean, var = gaussian_runs
    mean_err, var_err = _errors(runs[64], mean, var)
    assert abs(mean_err) < Z_MAX and abs(var_err) < Z_MAX, (mean_err, var_err)


def test_langevin_error_falls_at_first_order_in_the_steps(gaussian_runs):
    runs, mean, var = gaussian_runs
    e4, e16 = (abs(_errors(runs[k], mean, var)[0]) for k in (4, 16))
    assert e16 > Z_MAX  # both errors are measurable at this N, so their ratio is
    order = math.log(e4 / e16) / math.log(4)
    assert 0.7 < order < 1.5, (e4, e16, order)


# -- any model, exact NFE, bad inputs -------------------------------------------------------


def test_any_schedule_and_output_kind_gives_the_same_samples(x64):
    gm = _gaussian()
    cfg = ConditionalConfig(
        method="langevin", nfe=20, sigma_min=0.02, sigma_max=50.0, langevin_steps=1, final_steps=2
    )
    condition = _inpainting(16)
    condition = condition.replace(values=condition.values.astype(jnp.float64))
    outputs = []
    for schedule, prediction in ((VEKarras(), "x0"), (VP(), "eps"), (RectifiedFlow(), "velocity")):
        model = Parameterization(schedule, prediction)
        x, info = sample_conditional(
            gm.model_fn(schedule, prediction), model, jax.random.PRNGKey(3), condition, cfg
        )
        assert info["nfe"] <= 20
        outputs.append(np.asarray(x))
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-6)
    np.testing.assert_allclose(outputs[2], outputs[0], atol=1e-6)


def _counting(denoiser, count):
    def counted(z, sigma):
        jax.debug.callback(lambda: count.__setitem__(0, count[0] + 1))
        return denoiser(z, sigma)

    return counted


@pytest.mark.parametrize(
    "method, options, expected",
    [
        ("replacement", {}, 9),  # 8 steps + final denoise
        ("repaint", dict(resamples=3), 7),  # 2 steps x 3 + final denoise
        ("langevin", dict(langevin_steps=2, final_steps=3), 10),  # 2 x (1 + 2) + 3 + 1
        ("langevin", dict(langevin_steps=(1, 0, 2), step_scale=(0.1, 0.2, 0.3)), 7),  # 3+3+1
        ("dps", dict(final_steps=2), 9),  # 6 steps + 2 + final denoise (6 backward passes)
        ("smc", dict(langevin_steps=1, particles=2), 17),  # 8 x (1 + 1) + final denoise
    ],
)
def test_info_nfe_is_the_exact_number_of_model_calls(method, options, expected):
    gm = _gaussian()
    count = [0]
    levels = {"repaint": 3, "dps": 7}.get(method, 4 if "step_scale" in options else 9)
    if method == "langevin" and "final_steps" in options:
        levels = 3
    sigmas = get_sigmas("karras", levels, 0.05, 10.0, with_final_zero=True)
    condition = _inpainting(4)
    if method == "dps":
        condition = condition.as_observation(noise_std=0.1)
    fn = {
        "replacement": sample_replacement,
        "repaint": sample_repaint,
        "langevin": sample_langevin,
        "dps": sample_dps,
        "smc": sample_smc,
    }[method]
    z = initial_noise(jax.random.PRNGKey(0), (4, 2), 10.0)
    traced = {}

    def run(z):
        x, info = fn(
            _counting(gm.denoise_ve, count), z, jax.random.PRNGKey(1), sigmas, condition, **options
        )
        traced.update(info)
        return x

    jax.jit(run)(z).block_until_ready()
    jax.effects_barrier()
    assert isinstance(traced["nfe"], int) and traced["nfe"] == expected == count[0]
    if method == "dps":
        assert traced["vjp"] == levels - 1


def test_a_budget_is_never_exceeded():
    model = Parameterization(VEKarras(), "x0")
    for cfg in (
        ConditionalConfig(method="repaint", nfe=30, resamples=4),
        ConditionalConfig(
            method="langevin", nfe=50, langevin_steps=3, final_steps=5, langevin_sigma_max=1.0
        ),
    ):
        sigmas = cfg.sigmas(model.schedule)
        x, info = sample_conditional(
            _gaussian().model_fn(VEKarras(), "x0"),
            model,
            jax.random.PRNGKey(0),
            _inpainting(4),
            cfg,
        )
        assert cfg.nfe - 4 < info["nfe"] <= cfg.nfe and len(info["sigmas"]) == len(sigmas) - 1


def test_a_per_step_schedule_fixes_the_grid():
    model = Parameterization(VEKarras(), "x0")
    cfg = ConditionalConfig(method="langevin", nfe=40, langevin_steps=[0, 0, 1, 2, 4, 8])
    x, info = sample_conditional(
        _gaussian().model_fn(VEKarras(), "x0"), model, jax.random.PRNGKey(0), _inpainting(4), cfg
    )
    assert len(info["sigmas"]) == 7 and info["nfe"] == 6 + 15 + 1
    with pytest.raises(ValueError, match=r"nfe=20 is not valid .* 6-step .* nfe >= 22"):
        ConditionalConfig(method="langevin", nfe=20, langevin_steps=[0, 0, 1, 2, 4, 8]).sigmas(
            model.schedule
        )
    with pytest.raises(ValueError, match="langevin_steps.: 2, .step_scale.: 3"):
        ConditionalConfig(langevin_steps=(1, 2), step_scale=(1.0, 1.0, 1.0))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(method="nope"), "method"),
        (dict(method="repaint", resamples=0), "resamples"),
        (dict(langevin_steps=-1), "langevin_steps"),
        (dict(hold="dirty"), "hold"),
        (dict(c=0.5), "c"),
        (dict(method="replacement", resamples=2), "resamples"),
        (dict(step_scale=0.0), "step_scale"),
        (dict(nfe=0), "nfe"),
        (dict(method="dps", guidance_scale=-1.0), "guidance_scale"),
    ],
)
def test_bad_settings_name_the_bad_value(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ConditionalConfig(**kwargs)


def test_bad_conditions_name_the_problem():
    gm, sigmas = _gaussian(), get_sigmas("karras", 3, 0.1, 10.0)
    z, key = jnp.zeros((4, 2)), jax.random.PRNGKey(0)
    good = _inpainting(4)
    with pytest.raises(ValueError, match="values must have"):
        sample_replacement(gm.denoise_ve, z, key, sigmas, _inpainting(3))
    with pytest.raises(ValueError, match="mask must be boolean"):
        sample_replacement(gm.denoise_ve, z, key, sigmas, good.replace(mask=jnp.ones(2)))
    with pytest.raises(ValueError, match="langevin_steps has 3 entries"):
        sample_langevin(gm.denoise_ve, z, key, sigmas, good, langevin_steps=(1, 2, 3))
    with pytest.raises(ValueError, match="Observation"):
        sample_repaint(gm.denoise_ve, z, key, sigmas, good.as_observation())
    with pytest.raises(ValueError, match="noise_std > 0"):
        sample_dps(gm.denoise_ve, z, key, sigmas, good, final_steps=3)


# -- DPS on a blurred 16-D Gaussian -----------------------------------------------------------


def test_dps_guidance_moves_samples_to_the_posterior():
    """DPS is approximate at every NFE; what it promises is that the guidance pulls samples
    from the prior to the posterior. Asserted: the error of the sample mean falls below half of
    the prior-to-posterior distance (2.3; the Monte Carlo SE of the mean's norm is 0.035), and
    without guidance it stays above 90% of it (a check that ignored the observation fails)."""
    gm = oracle.correlated_gaussian(16, 2.0, 0.01)
    op = blur_operator((4, 4), 1.0, flat=True)
    x_true = np.asarray(gm.sample(jax.random.PRNGKey(9), 1))[0]
    y = operator_matrix(op, (16,)) @ x_true + 0.1 * np.random.default_rng(0).standard_normal(16)
    post = oracle.linear_gaussian_posterior(gm, operator_matrix(op, (16,)), y, 0.1)
    distance = float(np.linalg.norm(post.mean()))  # the prior mean is 0
    n = 2000
    observation = Observation(op, jnp.broadcast_to(jnp.asarray(y, jnp.float32), (n, 16)), 0.1)
    sigmas = get_sigmas("karras", 50, 0.01, 80.0, with_final_zero=True)
    z = initial_noise(jax.random.PRNGKey(0), (n, 16), 80.0)
    for scale, bound in ((0.0, None), (1.0, 0.5)):
        x, _ = jax.jit(
            lambda z, s=scale: sample_dps(
                gm.denoise_ve, z, jax.random.PRNGKey(1), sigmas, observation, guidance_scale=s
            )
        )(z)
        error = float(np.linalg.norm(np.asarray(x).mean(0) - np.asarray(post.mean())))
        if bound is None:
            assert error > 0.9 * distance
        else:
            assert error < bound * distance, (error, distance)


def test_the_readme_snippet_conditions_the_ring():
    """The README's snippet as printed. Given x_1 = 0 the ring's exact conditional is two
    modes N(+-2, 0.01) of weight 1/2 (the oracle drops the other six, below 1e-30). Checked:
    the median |x_2| (exact 2, MC sd 1.25 * 0.1 / sqrt(1000) = 0.004; 0.1 only asks "is it
    the conditional": the unconditional median |x_2| is 1.41) and the share of x_2 > 0 within
    Z_MAX standard errors of 1/2."""
    from tests.test_readme import python_blocks

    (snippet,) = python_blocks("Conditional sampling")
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    x, info = np.asarray(namespace["x"]), namespace["info"]
    exact = oracle.condition(oracle.ring(), np.array([True, False]), np.zeros(2))
    np.testing.assert_allclose(np.sort(np.asarray(exact.means)[:, 0]), [-2.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(exact.weights), [0.5, 0.5], atol=1e-6)
    assert x.shape == (1000, 2) and info["nfe"] <= 200 and np.all(x[:, 0] == 0.0)
    assert abs(np.median(np.abs(x[:, 1])) - 2.0) < 0.1
    assert abs(np.mean(x[:, 1] > 0) - 0.5) < Z_MAX * math.sqrt(0.25 / len(x))
