"""Conversions between schedules (states, times) and predictions, to float64 precision.

Property-based: hypothesis draws a seed, two schedules and two prediction kinds; the arrays are
made with numpy inside the test (no new JAX compilation per example). Tolerances are rounding
bounds: every conversion goes through the denoiser ``D`` and computes affine combinations
``c_x x + c_D D``; each loses a few ulps of its largest term, so a chain of conversions is exact up
to ``K eps`` times the largest term met along the way (measured: K < 250; asserted: K = 1e4).
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffusion_lv import convert as C
from diffusion_lv import oracle
from diffusion_lv import schedules as S

ALL = [S.VP(), S.VEKarras(), S.RectifiedFlow(), S.LinearVP(), S.CosineVP()]
IDS = [s.name for s in ALL]
EPS64 = np.finfo(np.float64).eps
ROUNDING_K = 1e4
SIGMA_DATA = 0.7  # not convert.DEFAULT_SIGMA_DATA, so that a dropped sigma_data argument shows
BATCH, DIM = 6, 3

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
schedules_st = st.sampled_from(ALL)
kinds_st = st.sampled_from(C.PREDICTIONS)
seeds_st = st.integers(0, 2**31 - 1)


@functools.cache
def mixture64():
    """A 3-D mixture with full covariances (eigenvalues 0.01..1), built in float64."""
    with jax.enable_x64(True):
        return oracle.random_anisotropic(seed=0, dim=DIM, num_modes=3)


def noisy_points(seed, source, target=None):
    """``(x, t, D)``: data pushed to random noise levels inside both schedules' domains.

    Noise levels are log-uniform in sigma_ve with both ends of the common range included; D is
    the oracle's exact denoiser there (a realistic size for predictions).
    """
    target = source if target is None else target
    rng = np.random.default_rng(seed)
    lo = max(source.sigma_ve_min, target.sigma_ve_min)
    hi = min(source.sigma_ve_max, target.sigma_ve_max)
    sigma_ve = np.exp(rng.uniform(math.log(lo), math.log(hi), BATCH))
    sigma_ve[:2] = lo, hi
    t = source.t_from_sigma_ve(jnp.asarray(sigma_ve))
    gm = mixture64()
    comp = rng.choice(gm.num_components, BATCH, p=np.asarray(gm.weights))
    z0 = np.asarray(gm.means)[comp] + 0.3 * rng.standard_normal((BATCH, DIM))
    alpha, sigma = np.asarray(source.alpha(t)), np.asarray(source.sigma(t))
    x = jnp.asarray(alpha[:, None] * z0 + sigma[:, None] * rng.standard_normal((BATCH, DIM)))
    return x, t, gm.denoise(x, t, source)


def term_sizes(kind, x, t, schedule, denoised):
    """``(|c_x x| + |c_D D|, |c_D|)`` for ``prediction = c_x x + c_D D`` (from_x0 is linear)."""
    zero = jnp.zeros_like(x)
    cx_x = np.abs(C.from_x0(zero, kind, x, t, schedule, SIGMA_DATA))
    cd_d = np.abs(C.from_x0(denoised, kind, zero, t, schedule, SIGMA_DATA))
    cd = np.abs(C.from_x0(jnp.ones_like(x), kind, zero, t, schedule, SIGMA_DATA))
    return cx_x + cd_d, cd


def assert_rounding_close(actual, expected, kind, chain, what):
    """``actual`` equals ``expected`` (a prediction of ``kind``) up to the rounding of a chain.

    ``chain`` lists ``(kind, x, t, schedule, D)`` for every representation passed through. In D
    units a representation's largest term is ``terms / |c_D|``; the final kind scales D errors
    by its ``|c_D|`` and adds its own rounding.
    """
    sizes = [term_sizes(*link) for link in chain]
    d_scale = np.max([terms / cd for terms, cd in sizes], axis=0)
    final_terms, final_cd = term_sizes(kind, *chain[-1][1:])
    bound = ROUNDING_K * EPS64 * (final_cd * d_scale + final_terms)
    err = np.abs(np.asarray(actual) - np.asarray(expected))
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert np.all(err <= bound), (
        f"{what}: error {err[worst]:.3g} > bound {bound[worst]:.3g} "
        f"({err[worst] / bound[worst] * ROUNDING_K:.0f} eps units) at {worst}"
    )


# -- predictions ------------------------------------------------------------------------------


@PROPERTY
@given(seed=seeds_st, source=schedules_st, target=schedules_st, kind_a=kinds_st, kind_b=kinds_st)
def test_prediction_round_trip_between_schedules(x64, seed, source, target, kind_a, kind_b):
    """A -> B -> A is the identity for every pair of schedules and prediction kinds."""
    x, t, denoised = noisy_points(seed, source, target)
    rng = np.random.default_rng(seed + 1)
    # A generic prediction (not the oracle's): a random denoiser output of the data's size.
    guess = denoised + jnp.asarray(rng.standard_normal(denoised.shape))
    pred = C.from_x0(guess, kind_a, x, t, source, SIGMA_DATA)
    sd = SIGMA_DATA
    there, x_b, t_b = C.convert_prediction(pred, kind_a, kind_b, x, t, source, target, sd)
    back, x_a, t_a = C.convert_prediction(there, kind_b, kind_a, x_b, t_b, target, source, sd)
    np.testing.assert_allclose(t_a, t, rtol=1e-13)
    np.testing.assert_allclose(x_a, x, rtol=1e-13)
    chain = [(kind_a, x, t, source, guess), (kind_b, x_b, t_b, target, guess)]
    assert_rounding_close(back, pred, kind_a, chain + [chain[0]], f"{kind_a}->{kind_b}->{kind_a}")


@PROPERTY
@given(seed=seeds_st, source=schedules_st, target=schedules_st, kind_a=kinds_st, kind_b=kinds_st)
def test_converting_the_exact_prediction_gives_the_exact_prediction(
    x64, seed, source, target, kind_a, kind_b
):
    """The oracle's prediction in (A, kind_a), converted, is the oracle's in (B, kind_b)."""
    gm = mixture64()
    x, t, denoised = noisy_points(seed, source, target)
    pred = gm.predict(x, t, source, kind_a, SIGMA_DATA)
    converted, x_b, t_b = C.convert_prediction(
        pred, kind_a, kind_b, x, t, source, target, SIGMA_DATA
    )
    exact = gm.predict(x_b, t_b, target, kind_b, SIGMA_DATA)
    chain = [(kind_a, x, t, source, denoised), (kind_b, x_b, t_b, target, denoised)]
    assert_rounding_close(converted, exact, kind_b, chain, f"{source.name}/{kind_a} -> "
                          f"{target.name}/{kind_b}")


@PROPERTY
@given(seed=seeds_st, schedule=schedules_st, kind=kinds_st)
def test_to_x0_inverts_from_x0(x64, seed, schedule, kind):
    x, t, denoised = noisy_points(seed, schedule)
    pred = C.from_x0(denoised, kind, x, t, schedule, SIGMA_DATA)
    back = C.to_x0(pred, kind, x, t, schedule, SIGMA_DATA)
    assert_rounding_close(back, denoised, "x0", [(kind, x, t, schedule, denoised)], kind)


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_predictions_match_their_definitions(x64, schedule):
    """eps, score, flow velocity and Salimans v from D, as the module docstring defines them."""
    x, t, d = (np.asarray(a) for a in noisy_points(11, schedule))
    alpha, sigma, dalpha, dsigma = (np.asarray(c)[:, None] for c in
                                    schedule.alpha_sigma_derivatives(jnp.asarray(t)))
    eps = (x - alpha * d) / sigma
    expected = {
        "x0": d,
        "eps": eps,
        "score": -eps / sigma,
        "velocity": dalpha * d + dsigma * eps,
        "v": alpha * eps - sigma * d,
    }
    for kind, value in expected.items():
        got = C.from_x0(jnp.asarray(d), kind, jnp.asarray(x), jnp.asarray(t), schedule)
        np.testing.assert_allclose(got, value, rtol=1e-9, err_msg=kind)


def test_edm_preconditioning_is_karras_table_1(x64):
    sv = np.geomspace(0.002, 80, 7)
    sd = SIGMA_DATA
    c_skip, c_out, c_in, c_noise = C.edm_preconditioning(jnp.asarray(sv), sd)
    np.testing.assert_allclose(c_skip, sd**2 / (sv**2 + sd**2), rtol=1e-14)
    np.testing.assert_allclose(c_out, sv * sd / np.sqrt(sv**2 + sd**2), rtol=1e-14)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(sv**2 + sd**2), rtol=1e-14)
    np.testing.assert_allclose(c_noise, np.log(sv) / 4, rtol=1e-14)
    # The network's target F = (x0 - c_skip z) / c_out has unit variance for unit-variance
    # Gaussian data of std sigma_data: Var = (c_skip^2 s^2 + (1 - c_skip)^2 sd^2) / c_out^2.
    var = (c_skip**2 * sv**2 + (1 - c_skip) ** 2 * sd**2) / c_out**2
    np.testing.assert_allclose(var, 1.0, rtol=1e-12)


# -- states and times ----------------------------------------------------------------------


@PROPERTY
@given(seed=seeds_st, source=schedules_st, target=schedules_st)
def test_state_conversion_preserves_the_distribution(x64, seed, source, target):
    """``p_B(x_B, t_B) |dx_B/dx_A| = p_A(x_A, t_A)``: the two states are one distribution."""
    gm = mixture64()
    x, t, _ = noisy_points(seed, source, target)
    x_b, t_b = C.convert_state(x, t, source, target)
    np.testing.assert_allclose(target.sigma_ve(t_b), source.sigma_ve(t), rtol=1e-13)
    scale = np.asarray(x_b)[:, 0] / np.asarray(x)[:, 0]
    np.testing.assert_allclose(scale, target.alpha(t_b) / source.alpha(t), rtol=1e-13)
    log_pa = np.asarray(gm.log_prob(x, t, source))
    log_pb = np.asarray(gm.log_prob(x_b, t_b, target)) + DIM * np.log(scale)
    # log p is a sum of O(10) terms of size <= |log p| + d |log sigma_ve|; 1e-10 is 1e6 eps.
    np.testing.assert_allclose(log_pb, log_pa, rtol=0, atol=1e-10 * (np.abs(log_pa).max() + 30))


@pytest.mark.parametrize("source", ALL, ids=IDS)
def test_paper_table_2_state_conversions(x64, source):
    """The paper's Table 2, evaluated literally (alpha_t = e^-t there is alpha^2 here)."""
    vp, ve, rf = S.VP(), S.VEKarras(), S.RectifiedFlow()
    x, t, _ = noisy_points(12, source, S.RectifiedFlow(t_max=0.99))
    # Go to VP first, then apply each printed row.
    x_vp, t_vp = (np.asarray(a) for a in C.convert_state(x, t, source, vp))
    a_t = np.exp(-t_vp)[:, None]
    b_t = -np.expm1(-t_vp)[:, None]  # 1 - a_t without cancellation
    z, sig = (np.asarray(a) for a in C.convert_state(jnp.asarray(x_vp), jnp.asarray(t_vp), vp, ve))
    r, s = (np.asarray(a) for a in C.convert_state(jnp.asarray(x_vp), jnp.asarray(t_vp), vp, rf))
    sig_c, s_c = sig[:, None], s[:, None]
    close = functools.partial(np.testing.assert_allclose, rtol=1e-12)
    close(z, x_vp / np.sqrt(a_t))  # VP -> VE
    close(sig_c, np.sqrt(b_t) / np.sqrt(a_t))
    close(r, x_vp / (np.sqrt(a_t) + np.sqrt(b_t)))  # VP -> RF
    close(s_c, np.sqrt(b_t) / (np.sqrt(a_t) + np.sqrt(b_t)))
    close(x_vp, z / np.sqrt(1 + sig_c**2))  # VE -> VP
    close(a_t, 1 / (1 + sig_c**2))
    close(r, z / (1 + sig_c))  # VE -> RF
    close(s_c, sig_c / (1 + sig_c))
    close(x_vp, r / np.sqrt((1 - s_c) ** 2 + s_c**2))  # RF -> VP
    close(a_t, (1 - s_c) ** 2 / ((1 - s_c) ** 2 + s_c**2))
    close(z, r / (1 - s_c))  # RF -> VE
    close(sig_c, s_c / (1 - s_c))


@pytest.mark.parametrize("source", ALL, ids=IDS)
def test_paper_table_5_prediction_conversions(x64, source):
    """The paper's Table 5 (VP score s_x, VE noise eps, RF velocity v), evaluated literally."""
    vp, ve, rf = S.VP(), S.VEKarras(), S.RectifiedFlow()
    gm = mixture64()
    x, t, denoised = noisy_points(13, source, S.RectifiedFlow(t_max=0.99))
    pred = gm.predict(x, t, source, "eps")
    s_x, x_vp, t_vp = C.convert_prediction(pred, "eps", "score", x, t, source, vp)
    e, z, sig = C.convert_prediction(pred, "eps", "eps", x, t, source, ve)
    v, r, s = C.convert_prediction(pred, "eps", "velocity", x, t, source, rf)
    links = {
        "score": ("score", x_vp, t_vp, vp, denoised),
        "eps": ("eps", z, sig, ve, denoised),
        "velocity": ("velocity", r, s, rf, denoised),
    }
    chain = [("eps", x, t, source, denoised), *links.values()]

    def close(actual, literal, kind):
        assert_rounding_close(actual, literal, kind, [*chain, links[kind]], f"Table 5 {kind}")

    x_vp, r, z = np.asarray(x_vp), np.asarray(r), np.asarray(z)
    s_x, e, v = np.asarray(s_x), np.asarray(e), np.asarray(v)
    sig, s = np.asarray(sig)[:, None], np.asarray(s)[:, None]
    a_t = np.exp(-np.asarray(t_vp))[:, None]
    b_t = -np.expm1(-np.asarray(t_vp))[:, None]  # 1 - a_t without cancellation
    close(e, -np.sqrt(b_t) * s_x, "eps")  # VP score -> VE noise
    close(v, -x_vp / np.sqrt(a_t) - (b_t + np.sqrt(a_t * b_t)) / np.sqrt(a_t) * s_x, "velocity")
    close(s_x, -np.sqrt(1 + sig**2) / sig * e, "score")  # VE noise -> VP score
    close(v, (1 + sig) * e - z, "velocity")  # VE noise -> RF velocity
    close(s_x, -np.sqrt((1 - s) ** 2 + s**2) / s * (r + (1 - s) * v), "score")  # RF v -> VP
    close(e, r + (1 - s) * v, "eps")  # RF velocity -> VE noise
    # For rectified flow the velocity is the paper's v = eps - x0.
    close(v, e - np.asarray(denoised), "velocity")


# -- models seen as denoisers ----------------------------------------------------------------


@pytest.mark.parametrize("schedule", ALL, ids=IDS)
def test_every_model_is_the_same_ve_denoiser(x64, schedule):
    """``as_ve_denoiser`` of the oracle's native model is the oracle's ``D(z, sigma_ve)``."""
    gm = mixture64()
    x, t, denoised = noisy_points(14, schedule)
    z = x / schedule.alpha(t)[:, None]
    sigma_ve = schedule.sigma_ve(t)
    for kind in C.PREDICTIONS:
        model = gm.model_fn(schedule, kind, sigma_data=SIGMA_DATA)
        got = C.as_ve_denoiser(model, kind, schedule, SIGMA_DATA)(z, sigma_ve)
        assert_rounding_close(got, denoised, "x0", [(kind, x, t, schedule, denoised)], kind)
        np.testing.assert_allclose(C.as_denoiser(model, kind, schedule, SIGMA_DATA)(x, t), got,
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("source", "target"), list(itertools.permutations(ALL[:3], 2)),
                         ids=[f"{a.name}-{b.name}" for a, b in itertools.permutations(ALL[:3], 2)])
def test_as_model_moves_a_model_to_another_schedule(x64, source, target):
    """A model trained in ``source`` (any output kind) serves ``target`` (any output kind)."""
    gm = mixture64()
    x, t, denoised = noisy_points(15, target, source)
    for kind_a, kind_b in itertools.product(C.PREDICTIONS, ["eps", "velocity", "edm"]):
        ve = C.as_ve_denoiser(gm.model_fn(source, kind_a, SIGMA_DATA), kind_a, source, SIGMA_DATA)
        moved = C.as_model(ve, kind_b, target, SIGMA_DATA)(x, t)
        exact = gm.predict(x, t, target, kind_b, SIGMA_DATA)
        x_a, t_a = C.convert_state(x, t, target, source)
        chain = [(kind_a, x_a, t_a, source, denoised), (kind_b, x, t, target, denoised)]
        assert_rounding_close(moved, exact, kind_b, chain, f"{kind_a}->{kind_b}")


def test_unknown_prediction_kinds_are_rejected_with_the_choices():
    x, t = jnp.zeros((2, 3)), jnp.full((2,), 0.5)
    for call in (
        lambda: C.to_x0(x, "noise", x, t, S.VP()),
        lambda: C.from_x0(x, "noise", x, t, S.VP()),
        lambda: C.convert_prediction(x, "eps", "noise", x, t, S.VP()),
        lambda: C.as_denoiser(lambda x, t: x, "noise", S.VP()),
        lambda: C.as_model(lambda z, s: z, "noise", S.VP()),
    ):
        with pytest.raises(ValueError, match="unknown prediction 'noise'") as info:
            call()
        for kind in C.PREDICTIONS:
            assert repr(kind) in str(info.value)
