"""Schedules: the paper's closed forms, autodiff against finite differences, inverses, domains.

Every schedule is two functions (alpha, sigma); f, g^2, log-SNR and sigma_ve are derived by
autodiff. These tests compare the derivations with the printed closed forms (paper Table 1 and
the DDPM / cosine schedules) and with finite differences, and check that the safe domain
``[t_min, t_max]`` is finite and accurate in float32 as well as float64.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_lv import schedules as S

ALL = [S.VP(), S.VEKarras(), S.RectifiedFlow(), S.LinearVP(), S.CosineVP()]
IDS = [s.name for s in ALL]
EPS64 = np.finfo(np.float64).eps


def sample_times(schedule, n, seed):
    """Times spread over the whole domain, dense near both singular ends, ends included."""
    rng = np.random.default_rng(seed)
    lo, hi = schedule.t_min, schedule.t_max
    near_lo = np.exp(rng.uniform(math.log(lo), math.log(hi), n))
    near_hi = hi - (hi - lo) * np.exp(rng.uniform(math.log(1e-6), 0.0, n))
    return np.clip(np.concatenate([[lo, hi], near_lo, near_hi]), lo, hi)


def assert_derivative(derivative, fn, t, h, what):
    """``derivative`` agrees with the five-point central difference of ``fn`` at step ``h``.

    Truncation is O((h/scale)^4) = 1e-12 relative with h = 1e-3 * scale, bounded here by 1e-9;
    rounding is at most (1 + 8 + 8 + 1)/12 * (few ulps of fn) / h, bounded by 10 eps (|fn| + 1) / h
    (the 1 covers quantities computed through a log, whose error is absolute).
    """
    def at(u):
        return np.asarray(fn(jnp.asarray(u)))

    fd = (at(t - 2 * h) - 8 * at(t - h) + 8 * at(t + h) - at(t + 2 * h)) / (12 * h)
    derivative = np.asarray(derivative)
    bound = 1e-9 * np.abs(derivative) + 10 * EPS64 * (np.abs(at(t)) + 1) / h
    err = np.abs(derivative - fd)
    worst = np.argmax(err / bound)
    assert np.all(err <= bound), (
        f"{what}: autodiff {derivative[worst]} vs finite difference {fd[worst]} at t={t[worst]}"
    )


# -- the printed closed forms -----------------------------------------------------------------


def closed_forms(schedule, t):
    """``(alpha, sigma, f, g^2)`` as printed: paper Table 1, DDPM linear beta, cosine beta."""
    if isinstance(schedule, S.VP):  # alpha_t = e^{-t} in the paper is alpha^2 here
        return np.exp(-t / 2), np.sqrt(1 - np.exp(-t)), -0.5 * np.ones_like(t), np.ones_like(t)
    if isinstance(schedule, S.VEKarras):  # dz = sqrt(2 sigma) dW
        return np.ones_like(t), t, np.zeros_like(t), 2 * t
    if isinstance(schedule, S.RectifiedFlow):  # dr = -r/(1-s) ds + sqrt(2s/(1-s)) dW
        return 1 - t, t, -1 / (1 - t), 2 * t / (1 - t)
    if isinstance(schedule, S.LinearVP):
        b0, b1 = schedule.beta_min, schedule.beta_max
        beta = b0 + (b1 - b0) * t
        integral = b0 * t + 0.5 * (b1 - b0) * t**2
        return np.exp(-integral / 2), np.sqrt(-np.expm1(-integral)), -beta / 2, beta
    if isinstance(schedule, S.CosineVP):  # alpha_bar = cos^2(phi)/cos^2(phi0)
        s = schedule.offset
        phi = (t + s) / (1 + s) * np.pi / 2
        phi0 = s / (1 + s) * np.pi / 2
        alpha = np.cos(phi) / np.cos(phi0)
        beta = np.pi / (1 + s) * np.tan(phi)
        return alpha, np.sqrt(1 - alpha**2), -beta / 2, beta
    raise AssertionError(schedule)


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_alpha_sigma_f_g2_match_printed_closed_forms(x64, schedule):
    t = sample_times(schedule, 200, seed=0)
    alpha, sigma, f, g2 = closed_forms(schedule, t)
    tj = jnp.asarray(t)
    # The closed forms above lose up to ~|d log sigma/d log t| * eps / (1 - alpha^2) relative
    # accuracy near t_min (1 - alpha^2 ~ 1e-7 for cosine); the library forms do not. 1e-8
    # covers that with a margin of 100, and any algebraic slip is O(1).
    np.testing.assert_allclose(schedule.alpha(tj), alpha, rtol=1e-12)
    np.testing.assert_allclose(schedule.sigma(tj), sigma, rtol=1e-8)
    np.testing.assert_allclose(schedule.f(tj), f, rtol=1e-8, atol=1e-300)
    np.testing.assert_allclose(schedule.g2(tj), g2, rtol=1e-8)


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_data_at_zero(x64, schedule):
    assert float(schedule.alpha(jnp.asarray(0.0))) == 1.0
    assert float(schedule.sigma(jnp.asarray(0.0))) == 0.0


# -- autodiff against finite differences ------------------------------------------------------


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_derivatives_match_finite_differences(x64, schedule):
    t = sample_times(schedule, 100, seed=1)
    alpha, sigma, dalpha, dsigma = (np.asarray(v) for v in schedule.alpha_sigma_derivatives(t))
    f, g2 = np.asarray(schedule.f(t)), np.asarray(schedule.g2(t))
    # h = 1e-3 * the local time scale: the time over which log alpha or log-SNR change by O(1)
    # (|dt/d lambda| = sigma^2/g^2 <= t near 0), capped at 1 and at the distance to t_end.
    with np.errstate(divide="ignore"):
        local = [np.ones_like(t), schedule.t_end - t, 1 / np.abs(f), sigma**2 / g2]
    scale = np.minimum.reduce(local)
    h = 1e-3 * scale
    assert_derivative(dalpha, schedule.alpha, t, h, "d alpha/dt")
    assert_derivative(dsigma, schedule.sigma, t, h, "d sigma/dt")
    assert_derivative(f, lambda u: jnp.log(schedule.alpha(u)), t, h, "f = d log alpha/dt")
    # g^2 = d sigma^2/dt - 2 f sigma^2 (its definition) ...
    assert_derivative(g2 + 2 * f * sigma**2, lambda u: schedule.sigma(u) ** 2, t, h, "g^2")
    # ... = alpha^2 d sigma_ve^2/dt, and d log-SNR/dt = -g^2 / sigma^2.
    sve2 = lambda u: schedule.sigma_ve(u) ** 2
    assert_derivative(g2 / alpha**2, sve2, t, h, "g^2 / alpha^2 = d sigma_ve^2/dt")
    assert_derivative(-g2 / sigma**2, schedule.log_snr, t, h, "d log-SNR/dt")


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_forward_mode_matches_reverse_mode(x64, schedule):
    t = jnp.asarray(sample_times(schedule, 20, seed=2))
    _, _, dalpha, dsigma = schedule.alpha_sigma_derivatives(t)
    np.testing.assert_allclose(dalpha, jax.vmap(jax.grad(schedule.alpha))(t), rtol=1e-13)
    np.testing.assert_allclose(dsigma, jax.vmap(jax.grad(schedule.sigma))(t), rtol=1e-13)


# -- inverses ------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_time_inverses_round_trip(x64, schedule):
    t = jnp.asarray(sample_times(schedule, 200, seed=3))
    # |d log t / d log sigma_ve| <= 2 on every domain here, so a round trip loses a few eps.
    np.testing.assert_allclose(schedule.t_from_sigma_ve(schedule.sigma_ve(t)), t, rtol=1e-12)
    np.testing.assert_allclose(schedule.t_from_log_snr(schedule.log_snr(t)), t, rtol=1e-12)
    sv = jnp.exp(jnp.linspace(math.log(schedule.sigma_ve_min), math.log(schedule.sigma_ve_max), 50))
    np.testing.assert_allclose(schedule.sigma_ve(schedule.t_from_sigma_ve(sv)), sv, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_generic_bisection_matches_closed_form(schedule, dtype):
    """``Schedule.t_from_sigma_ve`` (bisection on log sigma_ve) vs each subclass's closed form."""
    with jax.enable_x64(dtype == "float64"):
        rng = np.random.default_rng(4)
        log_lo, log_hi = math.log(schedule.sigma_ve_min), math.log(schedule.sigma_ve_max)
        sv = jnp.asarray(np.exp(rng.uniform(log_lo, log_hi, 200)), dtype)
        generic = S.Schedule.t_from_sigma_ve(schedule, sv)
        closed = schedule.t_from_sigma_ve(sv)
        assert generic.dtype == closed.dtype == jnp.dtype(dtype)
        # Either result is t to within eps * |log sigma_ve| * |d log t/d log sigma_ve| <= 30 eps.
        rtol = 1e-12 if dtype == "float64" else 2e-5
        np.testing.assert_allclose(generic, closed, rtol=rtol)


# -- safe domains -----------------------------------------------------------------------------


def derived_quantities(schedule, t):
    alpha, sigma, dalpha, dsigma = schedule.alpha_sigma_derivatives(t)
    return {
        "alpha": alpha,
        "sigma": sigma,
        "dalpha": dalpha,
        "dsigma": dsigma,
        "f": schedule.f(t),
        "g2": schedule.g2(t),
        "log_snr": schedule.log_snr(t),
        "sigma_ve": schedule.sigma_ve(t),
        "t(sigma_ve)": schedule.t_from_sigma_ve(schedule.sigma_ve(t)),
        "t(log_snr)": schedule.t_from_log_snr(schedule.log_snr(t)),
    }


def domain_grid(schedule, dtype):
    t = np.concatenate(
        [
            np.linspace(schedule.t_min, schedule.t_max, 500),
            np.geomspace(schedule.t_min, schedule.t_max, 500),
            schedule.t_max - np.geomspace(1e-7, 1.0, 100) * (schedule.t_max - schedule.t_min),
        ]
    )
    return jnp.asarray(np.sort(np.clip(t, schedule.t_min, schedule.t_max)), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_everything_finite_and_monotone_on_the_safe_domain(schedule, dtype):
    with jax.enable_x64(dtype == "float64"):
        t = domain_grid(schedule, dtype)
        schedule.check_times(t)  # the grid, in its own precision, is inside the domain
        q = {k: np.asarray(v) for k, v in derived_quantities(schedule, t).items()}
    for name, value in q.items():
        assert value.dtype == np.dtype(dtype), name
        assert np.all(np.isfinite(value)), f"{schedule.name}: {name} not finite in {dtype}"
    assert np.all(q["alpha"] > 0) and np.all(q["sigma"] > 0) and np.all(q["g2"] > 0)
    # sigma_ve strictly increasing is what makes convert_time a bijection.
    assert np.all(np.diff(q["sigma_ve"]) >= 0) and q["sigma_ve"][-1] > q["sigma_ve"][0]
    assert np.all(np.diff(q["log_snr"]) <= 0)


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_float32_keeps_its_precision_on_the_safe_domain(schedule):
    """float32 results agree with float64 to 1e-4 relative: no catastrophic cancellation.

    The formulas here have condition numbers below ~100, so honest float32 errors stay below
    ~1e-5; a cancellation (e.g. sigma = sqrt(1 - alpha^2) near t = 0, which lost 10% for the
    cosine schedule) fails by orders of magnitude. d sigma/dt is left out: JAX differentiates
    expm1 as expm1(x) + 1, which loses ~6e-4 relative for VP-type schedules at t_max (it enters
    g^2 only through terms a thousand times smaller, and g^2 is checked).
    """
    t32 = domain_grid(schedule, "float32")
    q32 = derived_quantities(schedule, t32)
    with jax.enable_x64(True):
        q64 = derived_quantities(schedule, jnp.asarray(np.asarray(t32), jnp.float64))
        q64 = {k: np.asarray(v) for k, v in q64.items()}
    q64["t(sigma_ve)"] = q64["t(log_snr)"] = np.asarray(t32, np.float64)
    for name in q32:
        if name == "dsigma":
            continue
        if name == "log_snr":  # log-SNR crosses zero: its float32 error is absolute
            np.testing.assert_allclose(q32[name], q64[name], atol=1e-4, err_msg=name)
        else:
            np.testing.assert_allclose(q32[name], q64[name], rtol=1e-4, atol=0, err_msg=name)


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_check_times_rejects_outside_and_names_the_domain(schedule):
    schedule.check_times(schedule.t_min)
    schedule.check_times(np.float32(schedule.t_min))
    schedule.check_times(np.asarray([schedule.t_min, schedule.t_max], np.float32))
    bad_values = [
        schedule.t_min / 2,
        schedule.t_max * 1.001,
        np.float32(schedule.t_max * 1.001),
        -1.0,
        np.nan,
        [schedule.t_min, np.inf],
    ]
    for bad in bad_values:
        with pytest.raises(ValueError, match=r"outside the safe domain") as info:
            schedule.check_times(bad, what="t_start")
        message = str(info.value)
        assert "t_start=" in message and str(schedule.t_min) in message
        assert str(schedule.t_max) in message and type(schedule).__name__ in message
    # Traced times cannot be checked and are let through (checks happen before jit).
    jax.jit(lambda t: schedule.check_times(t) or t)(jnp.asarray(-1.0))


def test_get_schedule_builds_and_validates():
    for name, cls in S.SCHEDULES.items():
        assert type(S.get_schedule(name)) is cls
    assert S.get_schedule("rf", t_max=0.99).t_max == 0.99
    with pytest.raises(ValueError, match="unknown schedule 'vpp'") as info:
        S.get_schedule("vpp")
    for name in S.SCHEDULES:
        assert repr(name) in str(info.value)
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['beta'\]") as info:
        S.get_schedule("linear_vp", beta=3.0)
    assert "'beta_max'" in str(info.value) and "'t_max'" in str(info.value)
    with pytest.raises(ValueError, match="t_max=1.5 exceeds the end of the schedule 1.0"):
        S.get_schedule("rf", t_max=1.5)
    with pytest.raises(ValueError, match="need 0 < t_min < t_max"):
        S.get_schedule("vp", t_min=0.0)
    with pytest.raises(ValueError, match="need 0 < t_min < t_max"):
        S.get_schedule("ve", t_min=5.0, t_max=1.0)


def test_schedules_are_hashable_static_arguments():
    assert hash(S.VP()) == hash(S.VP()) and S.VP() == S.VP() and S.VP() != S.VP(t_max=5.0)
    sigma_at = jax.jit(lambda sched, t: sched.sigma(t), static_argnums=0)
    assert float(sigma_at(S.VEKarras(), 3.0)) == 3.0


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_prior_is_the_marginal_scale_at_t_max(x64, schedule):
    assert schedule.prior_std() == pytest.approx(float(schedule.sigma(schedule.t_max)), rel=1e-6)
    x = jnp.asarray(np.random.default_rng(5).standard_normal((4, 3, 2)))
    s = schedule.prior_std()
    expected = -0.5 * np.sum(np.asarray(x) ** 2, axis=(1, 2)) / s**2 - 6 * np.log(
        s * np.sqrt(2 * np.pi)
    )
    np.testing.assert_allclose(schedule.prior_log_prob(x), expected, rtol=1e-12)
    sample = schedule.prior_sample(jax.random.key(0), (20000, 1))
    # Sample std of 20000 normals: relative standard error 1/sqrt(2 * 20000) = 0.5%.
    assert float(jnp.std(sample)) == pytest.approx(s, rel=5 * 0.005)


def test_expand_to_broadcasts_per_example_coefficients():
    x = jnp.zeros((3, 4, 5))
    assert S.expand_to(jnp.arange(3.0), x).shape == (3, 1, 1)
    assert S.expand_to(2.0, x).shape == (1, 1, 1)
