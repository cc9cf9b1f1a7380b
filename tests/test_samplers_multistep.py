"""The linear multistep engine: the order rule, plans from traced levels, and exact identities
between the multistep samplers (float64), including UniPC against a direct predictor-corrector
loop."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_lv.oracle import GaussianMixture
from diffusion_lv.samplers import (
    SAMPLERS,
    SamplerConfig,
    get_sigmas,
    sample_deis,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_euler,
    sample_exponential_multistep,
    sample_ipndm,
    sample_lms,
    sample_unipc,
)
from diffusion_lv.samplers.multistep import phi, step_orders
from diffusion_lv.schedules import VEKarras

# -- the order rule -------------------------------------------------------------------------


def test_history_orders_ramp_up_at_the_start():
    np.testing.assert_array_equal(step_orders(np.ones(6), 3, "history"), [1, 2, 3, 3, 3, 3])
    np.testing.assert_array_equal(step_orders(np.ones(6), 4, "history"), [1, 2, 3, 4, 4, 4])


def test_auto_orders_drop_after_a_step_ratio_jump_and_climb_back():
    steps = np.array([1.0, 1.0, 1.0, 2.5, 2.5, 2.5, 2.5])
    np.testing.assert_array_equal(step_orders(steps, 3, "auto"), [1, 2, 3, 1, 2, 3, 3])
    # A step exactly twice the previous one is allowed; shrinking steps are fine.
    np.testing.assert_array_equal(step_orders(np.array([1.0, 2.0, 1.0, 0.1]), 3), [1, 2, 3, 3])


def test_auto_orders_in_lambda_follow_the_step_length():
    # order k only where (k - 1) h <= 1
    hs = np.array([0.2, 0.3, 0.4, 0.5, 0.6, 0.9, 1.0, 1.1])
    np.testing.assert_array_equal(step_orders(hs, 3, "auto", unit=1.0), [1, 2, 3, 3, 2, 2, 2, 1])
    np.testing.assert_array_equal(step_orders(hs, 3, "history", unit=1.0), [1, 2, 3, 3, 3, 3, 3, 3])


def test_equal_step_weights_drop_order_where_steps_shrink_fast():
    steps = np.array([10.0, 8.0, 6.0, 2.0, 1.5, 1.2])
    np.testing.assert_array_equal(step_orders(steps, 4, "auto", equal_steps=True),
                                  [1, 2, 3, 1, 2, 3])
    np.testing.assert_array_equal(step_orders(steps, 4, "auto"), [1, 2, 3, 4, 4, 4])


def test_traced_orders_match_numpy():
    hs = np.array([0.2, 0.3, 0.9, 0.4, 0.5, 1.6, 0.7, 1.1])
    for kwargs in (dict(unit=1.0), dict(equal_steps=True), {}):
        traced = jax.jit(lambda h, kw=kwargs: step_orders(h, 3, "auto", jnp, **kw))(hs)
        np.testing.assert_array_equal(traced, step_orders(hs, 3, "auto", np, **kwargs))


def test_phi_series_and_recursion_agree():
    for m in (1, 2, 3, 4):
        for big_h in (1e-6, 0.3, 0.99, 1.01, 3.0, 30.0):
            exact = _phi_quadrature(m, big_h)
            assert abs(float(phi(m, big_h)) - exact) < 1e-12 * max(1.0, abs(exact)), (m, big_h)


def _phi_quadrature(m, big_h):
    u, w = np.polynomial.legendre.leggauss(40)
    u, w = 0.5 * (u + 1.0), 0.5 * w
    return float(np.sum(w * np.exp(-big_h * (1.0 - u)) * u ** (m - 1)) / math.factorial(m - 1))


# -- plans from traced levels (what grid fitting differentiates) ------------------------------

PLANNED = [(name, options) for name in SAMPLERS if SAMPLERS[name].plan is not None
           for options in ({}, {"order_limit": "history"} if "order_limit" in
                           SAMPLERS[name].options else {})]


@pytest.mark.parametrize("name, options", PLANNED)
def test_plans_from_traced_levels_equal_the_numpy_plans(name, options, x64):
    cfg = SamplerConfig(name=name, nfe=9, **options)
    levels = get_sigmas("karras", cfg.num_levels, 0.002, 80.0)
    keywords = cfg.resolved_options
    expected = cfg.spec.plan(levels, np, **keywords)
    plan = jax.jit(lambda lv: (lambda p: (p.coefficients, p.noise_std))(
        cfg.spec.plan(lv, jnp, **keywords)))
    coefficients, noise_std = plan(jnp.asarray(levels))
    np.testing.assert_allclose(coefficients, expected.coefficients, rtol=1e-9, atol=1e-12)
    if expected.noise_std is not None:  # the SDE variants
        np.testing.assert_allclose(noise_std, expected.noise_std, rtol=1e-9)


# -- exact identities (float64) ---------------------------------------------------------------


def _problem():
    rng = np.random.default_rng(1)
    gm = GaussianMixture.isotropic([1.0, 2.0, 1.5], rng.standard_normal((3, 3)), [0.2, 0.4, 0.3])
    z = 20.0 * jax.random.normal(jax.random.PRNGKey(0), (16, 3), jnp.float64)
    return gm.denoise_ve, z


def _run(fn):
    return np.asarray(jax.jit(lambda: fn()[0])())


def test_first_order_adams_is_euler_and_deis_in_ve_time_is_lms(x64):
    d, z = _problem()
    s = get_sigmas("karras", 12, 0.01, 20.0, with_final_zero=True)
    euler = _run(lambda: sample_euler(d, z, None, s))
    np.testing.assert_allclose(_run(lambda: sample_lms(d, z, None, s, order=1)), euler,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_run(lambda: sample_ipndm(d, z, None, s, order=1)), euler,
                               rtol=1e-12, atol=1e-12)
    lms = _run(lambda: sample_lms(d, z, None, s, order=3))
    np.testing.assert_allclose(_run(lambda: sample_deis(d, z, None, s, step_schedule="ve")), lms,
                               rtol=1e-12, atol=1e-12)


def test_ipndm_is_lms_on_a_grid_uniform_in_sigma(x64):
    d, z = _problem()
    s = get_sigmas("karras", 15, 0.5, 20.0, rho=1.0, with_final_zero=True)
    for order in (2, 3, 4):
        np.testing.assert_allclose(_run(lambda o=order: sample_ipndm(d, z, None, s, order=o)),
                                   _run(lambda o=order: sample_lms(d, z, None, s, order=o)),
                                   rtol=1e-10, atol=1e-10)


def test_lms_weights_integrate_the_lagrange_basis_exactly(x64):
    # On eps that is a cubic in sigma along the path, order-4 LMS is exact after its start:
    # check it on the weights, sum_j c_ij p(sigma_{i-j}) = int p for p = 1, s, s^2, s^3.
    from diffusion_lv.samplers.adams import adams_plan

    levels = get_sigmas("karras", 9, 0.01, 20.0)
    coefficients = adams_plan(levels, np, order=4, order_limit="history").coefficients
    for i in range(3, levels.shape[0] - 1):
        nodes = levels[i - np.arange(4)]
        for power in range(4):
            exact = (levels[i + 1] ** (power + 1) - levels[i] ** (power + 1)) / (power + 1)
            np.testing.assert_allclose(coefficients[i, 1:] @ nodes**power, exact, rtol=1e-9)


def test_dpmpp_2m_sde_at_rate_one_is_dpmpp_2m_and_the_exponential_second_order(x64):
    d, z = _problem()
    s = get_sigmas("karras", 12, 0.01, 20.0, with_final_zero=True)
    for limit in ("history", "auto"):
        np.testing.assert_allclose(
            _run(lambda lim=limit: sample_dpmpp_2m_sde(d, z, None, s, c=1.0, order_limit=lim)),
            _run(lambda lim=limit: sample_dpmpp_2m(d, z, None, s, order_limit=lim)),
            rtol=1e-12, atol=1e-12)
    # The exponential family's second-order step is the published (midpoint) one.
    np.testing.assert_allclose(
        _run(lambda: sample_exponential_multistep(d, z, None, s, order=2)),
        _run(lambda: sample_dpmpp_2m(d, z, None, s)), rtol=1e-12, atol=1e-12)
    heun = _run(lambda: sample_dpmpp_2m_sde(d, z, None, s, c=1.0, solver_type="heun"))
    assert np.max(np.abs(heun - _run(lambda: sample_dpmpp_2m(d, z, None, s)))) > 1e-6


def test_dpmpp_2m_sde_midpoint_is_the_published_update(x64):
    # z' = e^{-ch} z + (1 - e^{-ch}) (D_0 + (D_0 - D_1) h / (2 h_prev)) + sigma' sqrt(1 -
    # e^{-2(c-1)h}) xi, first step without the correction; noise from fold_in(key, i).
    d, z = _problem()
    s = get_sigmas("log_snr", 10, 0.01, 20.0, with_final_zero=True)
    key = jax.random.PRNGKey(4)
    c = 2.0
    out = _run(lambda: sample_dpmpp_2m_sde(d, z, key, s, c=c, order_limit="history"))
    levels = s[:-1]
    x, previous, h_previous = np.asarray(z), None, None
    for i in range(levels.shape[0] - 1):
        denoised = np.asarray(d(jnp.asarray(x), jnp.full((x.shape[0],), levels[i])))
        h = math.log(levels[i] / levels[i + 1])
        target = denoised
        if previous is not None:
            target = denoised + (denoised - previous) * h / (2.0 * h_previous)
        x = math.exp(-c * h) * x + (1.0 - math.exp(-c * h)) * target
        noise = np.asarray(jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float64))
        x = x + levels[i + 1] * math.sqrt(1.0 - math.exp(-2.0 * (c - 1.0) * h)) * noise
        previous, h_previous = denoised, h
    expected = np.asarray(d(jnp.asarray(x), jnp.full((x.shape[0],), levels[-1])))
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)


def _unipc_loop(d, z, levels, order, variant):
    """UniPC written step by step: UniP predictor, evaluate, UniC corrector (not at the end)."""

    def coefficients(h, rs, with_new):
        b = h if variant == "bh1" else -math.expm1(-h)
        g = [math.factorial(k) * h * float(phi(k + 1, h)) / b for k in range(1, 4)]
        nodes = list(rs) + ([1.0] if with_new else [])
        k = len(nodes)
        if k == 0:
            return b, []
        if k == 1:
            return b, [0.5]  # the paper's UniP-2 / UniC-1 coefficient
        matrix = np.array([[r ** (row) for r in nodes] for row in range(k)])
        return b, list(np.linalg.solve(matrix, g[:k]))

    lam = -np.log(levels)
    x, outputs = np.asarray(z), []
    prev = None  # (x_corrected_base, D_i, lambdas used, order) of the last predictor
    for i in range(levels.shape[0]):
        denoised = np.asarray(d(jnp.asarray(x), jnp.full((x.shape[0],), levels[i])))
        if prev is not None:  # correct the previous step with the new output
            x_base, j, p = prev
            h = lam[i] - lam[j]
            rs = [(lam[j - m] - lam[j]) / h for m in range(1, p)]
            b, a = coefficients(h, rs, True)
            diffs = [(outputs[j - m] - outputs[j]) / r for m, r in zip(range(1, p), rs,
                                                                           strict=True)]
            diffs.append(denoised - outputs[j])
            x = (math.exp(-h) * x_base + (1.0 - math.exp(-h)) * outputs[j]
                 + b * sum(am * dm for am, dm in zip(a, diffs, strict=True)))
        outputs.append(denoised)
        if i == levels.shape[0] - 1:
            return denoised  # the final denoise, no corrector after it
        p = min(order, i + 1)
        h = lam[i + 1] - lam[i]
        rs = [(lam[i - m] - lam[i]) / h for m in range(1, p)]
        b, a = coefficients(h, rs, False)
        diffs = [(outputs[i - m] - outputs[i]) / r for m, r in zip(range(1, p), rs, strict=True)]
        prev = (x, i, p)
        x = (math.exp(-h) * x + (1.0 - math.exp(-h)) * denoised
             + b * sum(am * dm for am, dm in zip(a, diffs, strict=True)))


@pytest.mark.parametrize("order, variant", [(1, "bh2"), (2, "bh1"), (2, "bh2"), (3, "bh2"),
                                            (3, "bh1")])
def test_unipc_plan_is_the_predictor_corrector_loop(order, variant, x64):
    d, z = _problem()
    s = get_sigmas("karras", 9, 0.01, 20.0, with_final_zero=True)
    out = _run(lambda: sample_unipc(d, z, None, s, order=order, variant=variant,
                                    order_limit="history"))
    np.testing.assert_allclose(out, _unipc_loop(d, z, s[:-1], order, variant),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["dpmpp_3m", "unipc", "lms", "deis", "dpmpp_2m"])
def test_order_limit_leaves_fine_grids_alone(name, x64):
    d, z = _problem()
    cfg = SamplerConfig(name=name, nfe=120, grid="log_snr", sigma_min=0.01, sigma_max=20.0)
    s = cfg.sigmas(VEKarras())
    auto = _run(lambda: cfg.run(d, z, None, s))
    history = SamplerConfig(name=name, nfe=120, grid="log_snr", sigma_min=0.01, sigma_max=20.0,
                            order_limit="history")
    np.testing.assert_allclose(_run(lambda: history.run(d, z, None, s)), auto, rtol=1e-12,
                               atol=1e-12)


def test_the_lambda_step_limit_stops_at_second_order_on_the_sde():
    # On the Karras grid at 6 NFE the lambda steps exceed 1: the ODE drops to first order there,
    # the SDE variants (c > 1) to second order (first order made their law worse).
    from diffusion_lv.samplers.multistep import dpmpp_2m_plan, exponential_plan

    levels = get_sigmas("karras", 6, 0.002, 80.0)
    hs = np.log(levels[:-1] / levels[1:])
    assert np.all(hs > 1.0)
    np.testing.assert_array_equal(step_orders(hs, 3, "auto", unit=1.0), [1, 1, 1, 1, 1])
    np.testing.assert_array_equal(step_orders(hs, 3, "auto", unit=1.0, unit_floor=2),
                                  [1, 2, 2, 2, 2])
    for c, same_as_history in ((1.0, False), (2.0, True)):
        auto = dpmpp_2m_plan(levels, np, c=c).coefficients
        history = dpmpp_2m_plan(levels, np, c=c, order_limit="history").coefficients
        assert np.allclose(auto, history) == same_as_history, c
    # dpmpp_3m_sde under the rule is dpmpp_2m_sde (midpoint) on these long steps.
    np.testing.assert_allclose(exponential_plan(levels, np, order=3, c=2.0).coefficients,
                               dpmpp_2m_plan(levels, np, c=2.0).coefficients, atol=1e-15)
