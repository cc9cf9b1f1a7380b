"""Sampler API: validation, options, grids, exact NFE, keys, jit, and exact identities between
samplers."""

import dataclasses
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_lv.oracle import GaussianMixture, ring
from diffusion_lv.parameterization import Parameterization
from diffusion_lv.samplers import (
    COMMON_FIELDS,
    CONFIG_KEYS,
    SAMPLERS,
    SamplerConfig,
    get_sigmas,
    initial_noise,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_deis,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_euler,
    sample_exponential_multistep,
    sample_heun,
    sample_ipndm,
    sample_lms,
    sample_pc,
    sample_unipc,
)
from diffusion_lv.samplers.ddim import ddim_step
from diffusion_lv.schedules import VP, CosineVP, RectifiedFlow, VEKarras

# -- validation ---------------------------------------------------------------------------


BAD_CONFIGS = [  # (settings, the key its message starts with)
    (dict(name="nope"), "name"), (dict(grid="cosine"), "grid"), (dict(nfe=0), "nfe"),
    (dict(nfe=True), "nfe"), (dict(name="heun", nfe=1), "nfe"),
    (dict(name="pc", nfe=2, corrector_steps=3), "nfe"), (dict(sigma_min=-1.0), "sigma_min"),
    (dict(sigma_max=float("inf")), "sigma_max"), (dict(rho=0.0), "rho"),
    (dict(final_denoise="yes"), "final_denoise"), (dict(grid_schedule="nope"), "grid_schedule"),
    (dict(c=0.5), "c"), (dict(c="2"), "c"), (dict(name="heun", c=2.0), "c"),
    (dict(step_schedule="nope"), "step_schedule"), (dict(name="ddim", eta=1.5), "eta"),
    (dict(name="heun", s_churn=-1.0), "s_churn"), (dict(name="heun", s_tmin=5.0, s_tmax=1.0),
                                                   "s_tmin"),
    (dict(name="pc", predictor="heun"), "predictor"), (dict(name="pc", snr=0.0), "snr"),
    (dict(name="pc", corrector_steps=-1), "corrector_steps"),
    (dict(name="pc", predictor="ddpm", c=2.0), "c"), (dict(name="pc", eta=0.5), "eta"),
    (dict(name="pc", predictor="ddim", step_schedule="vp"), "step_schedule"),
    (dict(name="ode", ode_solver="euler"), "ode_solver"), (dict(name="ode", rtol=0.0), "rtol"),
    (dict(name="ode", max_steps=2.5), "max_steps"),
    (dict(name="smld", langevin_steps=0), "langevin_steps"),
    (dict(name="smld", langevin_step_size=-0.1), "langevin_step_size"),
    (dict(name="smld", trajectory=True), "trajectory"),
    (dict(name="unipc", order=4), "order"), (dict(name="unipc", variant="bh3"), "variant"),
    (dict(name="unipc", order_limit="none"), "order_limit"), (dict(name="lms", order=5), "order"),
    (dict(name="lms", order=2.0), "order"), (dict(name="deis", step_schedule="nope"),
                                             "step_schedule"),
    (dict(name="ipndm", order=0), "order"), (dict(name="dpmpp_2m_sde", solver_type="rk4"),
                                             "solver_type"),
    (dict(name="dpmpp_3m", order_limit=True), "order_limit"), (dict(grid="fitted"), "grid"),
    (dict(grid="karras", fitted_sigmas=(80.0, 0.1)), "fitted_sigmas"),
    (dict(grid="optimized", nfe=3, fitted_sigmas=(80.0, 0.1)), "fitted_sigmas"),
    (dict(grid="optimized", nfe=3, fitted_sigmas=(1.0, 2.0, 0.1)), "fitted_sigmas"),
    (dict(grid="optimized", nfe=3, fitted_sigmas=(80.0, -1.0, -2.0)), "fitted_sigmas"),
]


@pytest.mark.parametrize("kwargs, key", BAD_CONFIGS)
def test_bad_config_raises_starting_with_the_key(kwargs, key):
    # "<key>=<value>" first: the config layer puts "config.sampler." in front.
    with pytest.raises(ValueError, match=f"^{key}="):
        SamplerConfig(**kwargs)


# -- per-sampler options ------------------------------------------------------------------


def test_an_option_the_sampler_does_not_read_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"^eta=0\.5 is not read by sampler 'heun'") as info:
        SamplerConfig(name="heun", nfe=35, eta=0.5)
    message = str(info.value)
    assert all(option in message for option in SAMPLERS["heun"].options)  # heun's options
    assert "'ddim'" in message  # and who reads eta
    with pytest.raises(ValueError, match="^c=1.0 is not read by sampler 'ddpm'"):
        SamplerConfig(name="ddpm", c=1.0)


def test_an_unknown_name_or_key_lists_the_valid_ones():
    with pytest.raises(ValueError, match="dpmpp_3m"):
        SamplerConfig(name="dpm_fast")
    with pytest.raises(ValueError, match="^etta=0.5 is not a sampler setting") as info:
        SamplerConfig(name="ddim", etta=0.5)
    assert all(repr(key) in str(info.value) for key in CONFIG_KEYS)
    with pytest.raises(ValueError, match="^etta=None"):
        SamplerConfig(name="ddim", etta=None)  # None is "not set", a misspelling still fails


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_options_given_as_none_are_not_set(name):
    unset = {key: None for key in CONFIG_KEYS if key not in COMMON_FIELDS}
    cfg = SamplerConfig(name=name, nfe=12, **unset)
    assert cfg == SamplerConfig(name=name, nfe=12) and cfg.options == ()
    assert cfg.resolved_options == dict(SAMPLERS[name].options)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_options_are_the_family_functions_keyword_only_parameters(name):
    spec = SAMPLERS[name]
    parameters = inspect.signature(spec.family).parameters.values()
    keyword_only = {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}
    set_by_sampler = {"trajectory", *spec.fixed, *spec.fixed_by_budget}
    expected = {k: spec.defaults.get(k, v) for k, v in keyword_only.items()
                if k not in set_by_sampler}
    assert dict(spec.options) == expected
    assert all(p.kind is not p.POSITIONAL_OR_KEYWORD or p.default is p.empty for p in parameters)
    # Every option is validated on construction: the check takes exactly the options.
    checked = [] if spec.check is None else list(inspect.signature(spec.check).parameters)
    assert sorted(checked) == sorted(spec.options)


def test_config_keys_are_the_common_fields_and_every_option():
    options = {key for spec in SAMPLERS.values() for key in spec.options}
    assert set(CONFIG_KEYS) == set(COMMON_FIELDS) | options
    assert len(CONFIG_KEYS) == len(set(CONFIG_KEYS))
    assert set(COMMON_FIELDS) == {f.name for f in dataclasses.fields(SamplerConfig)} - {"options"}
    assert SamplerConfig(name="dpmpp_2m_sde").resolved_options == {  # its own default c
        "c": 2.0, "solver_type": "midpoint", "order_limit": "auto"}
    assert SamplerConfig(name="dpmpp_3m").resolved_options == {"c": 1.0, "order_limit": "auto"}
    assert SamplerConfig(name="deis").resolved_options == {
        "order": 3, "step_schedule": "vp", "order_limit": "auto"}


def test_equal_configs_are_equal_and_hash_equal():
    a = SamplerConfig(name="euler", nfe=200, c=2.0, step_schedule="vp")
    b = SamplerConfig(step_schedule="vp", nfe=200, c=2, name="euler", eta=None)
    assert a == b and hash(a) == hash(b) and a.options == (("c", 2.0), ("step_schedule", "vp"))
    assert a != SamplerConfig(name="euler", nfe=200, c=3.0, step_schedule="vp")
    assert dataclasses.replace(a, nfe=8) == SamplerConfig(name="euler", nfe=8, c=2.0,
                                                          step_schedule="vp")
    assert dataclasses.replace(a, c=3.0).resolved_options["c"] == 3.0
    assert eval(repr(a)) == a  # the repr is the keyword construction
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.nfe = 3
    cached = functools.lru_cache(lambda cfg: [cfg])
    assert cached(a) is cached(b)  # one cache entry


def test_sigma_range_is_checked_once_with_the_resolved_values():
    ve = VEKarras()
    assert SamplerConfig().sigma_range(ve) == (ve.sigma_ve_min, ve.sigma_ve_max)
    assert SamplerConfig(sigma_min=0.1, sigma_max=10.0).sigma_range(ve) == (0.1, 10.0)
    with pytest.raises(ValueError, match=r"^sigma_min=0\.001 is outside the schedule's noise "
                       r"range; valid: \[0\.002, 80\] \(sigma_ve of VEKarras\("):
        SamplerConfig(sigma_min=0.001).sigma_range(ve)
    with pytest.raises(ValueError, match="^sigma_max=10000.0 is outside"):
        SamplerConfig(sigma_max=1e4).sigma_range(ve)
    with pytest.raises(ValueError, match=r"^sigma_min=5\.0 must be < sigma_max=1\.0"):
        SamplerConfig(sigma_min=5.0, sigma_max=1.0).sigma_range(ve)
    with pytest.raises(ValueError, match=r"^sigma_min=90\.0 is outside"):
        SamplerConfig(sigma_min=90.0).sigma_range(ve)  # above the default sigma_max


def test_sample_rejects_bad_inputs_before_compiling():
    gm = ring()
    model = Parameterization(VP(), "eps")
    model_fn = gm.model_fn(VP(), "eps")
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="^sigma_max=10000.0 is outside"):
        sample(model_fn, model, key, (4, 2), SamplerConfig(sigma_max=1e4))
    with pytest.raises(ValueError, match="^model="):
        sample(model_fn, "eps", key, (4, 2), SamplerConfig())
    with pytest.raises(ValueError, match="^cfg="):
        sample(model_fn, model, key, (4, 2), {"name": "euler"})
    with pytest.raises(ValueError, match="^shape="):
        sample(model_fn, model, key, (4,), SamplerConfig())


# -- grids ----------------------------------------------------------------------------------


def test_grids_end_points_and_spacing():
    lo, hi = 0.01, 50.0
    for grid in ("karras", "log_snr", "uniform_t"):
        s = get_sigmas(grid, 9, lo, hi, schedule=VP())
        assert s[0] == hi and s[-1] == lo and np.all(np.diff(s) < 0), grid
    np.testing.assert_allclose(np.diff(np.log(get_sigmas("log_snr", 9, lo, hi))), -np.log(5000) / 8)
    np.testing.assert_allclose(np.diff(get_sigmas("karras", 9, lo, hi, rho=1.0)), -(hi - lo) / 8)
    s = get_sigmas("karras", 9, lo, hi, rho=7.0)
    np.testing.assert_allclose(np.diff(s ** (1 / 7)), (lo ** (1 / 7) - hi ** (1 / 7)) / 8)
    t = np.log1p(np.square(get_sigmas("uniform_t", 9, lo, hi, schedule=VP())))  # VP time
    np.testing.assert_allclose(np.diff(t), np.diff(t)[0], rtol=1e-4)
    with_zero = get_sigmas("karras", 9, lo, hi, with_final_zero=True)
    assert with_zero.shape == (10,) and with_zero[-1] == 0.0


def test_uniform_t_grid_in_float64_mode(x64):
    s = get_sigmas("uniform_t", 5, 0.01, 50.0, schedule=VP())
    assert s[0] == 50.0 and s[-1] == 0.01 and s.dtype == np.float64


# -- exact NFE ------------------------------------------------------------------------------


def _counting(denoiser, count):
    def counted(z, sigma):
        jax.debug.callback(lambda: count.__setitem__(0, count[0] + 1))
        return denoiser(z, sigma)

    return counted


@pytest.mark.parametrize(
    "name, nfe, kwargs, expected",
    [
        ("euler", 7, {}, 7),
        ("heun", 7, {}, 7),  # 3 Heun steps + final denoise
        ("heun", 8, {}, 8),  # 3 Heun steps + 1 Euler step + final denoise
        ("dpmpp_3m", 5, dict(final_denoise=False), 5),
        ("pc", 9, dict(corrector_steps=2), 7),  # 2 steps x (1 + 2) + final denoise
        ("smld", 11, dict(langevin_steps=3), 10),  # 3 levels x 3 + final denoise
        ("unipc", 6, {}, 6),  # the corrector reuses the next step's evaluation
        ("lms", 5, {}, 5),
        ("deis", 6, {}, 6),
        ("ipndm", 4, dict(final_denoise=False), 4),
        ("dpmpp_2m_sde", 5, {}, 5),
    ],
)
def test_info_nfe_is_the_exact_number_of_model_calls(name, nfe, kwargs, expected):
    gm = ring()
    count = [0]
    model_fn = _counting(gm.model_fn(VEKarras(), "x0"), count)
    cfg = SamplerConfig(name=name, nfe=nfe, **kwargs)
    traced = {}

    def run(key):
        x, info = sample(model_fn, Parameterization(VEKarras(), "x0"), key, (4, 2), cfg)
        traced.update(info)
        return x

    jax.jit(run)(jax.random.PRNGKey(0)).block_until_ready()
    jax.effects_barrier()
    assert isinstance(traced["nfe"], int)  # static while tracing
    assert traced["nfe"] == expected == count[0]


def test_adaptive_ode_reports_its_traced_nfe():
    gm = ring()
    count = [0]
    model_fn = _counting(gm.model_fn(VEKarras(), "x0"), count)
    cfg = SamplerConfig(name="ode", rtol=1e-3, atol=1e-3)
    model = Parameterization(VEKarras(), "x0")
    x, info = jax.jit(lambda k: sample(model_fn, model, k, (4, 2), cfg))(jax.random.PRNGKey(0))
    x.block_until_ready()
    jax.effects_barrier()
    assert int(info["nfe"]) == count[0] > 7


# -- keys and initial noise --------------------------------------------------------------


def _zero_model(x, t):
    return jnp.zeros_like(x)


@pytest.mark.parametrize(
    "name", ["euler", "ddim", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "lms", "deis", "ipndm"]
)
def test_budgets_share_the_initial_noise(name, x64):
    # With D = 0 the PF-ODE is z_sigma = z_T sigma / sigma_T, which every one of these solvers
    # integrates exactly: the output exposes x_T, which must not depend on the budget.
    key = jax.random.PRNGKey(3)
    lo, hi = 0.01, 40.0
    expected = initial_noise(key, (5, 3), hi) * (lo / hi)
    model = Parameterization(VEKarras(), "x0")
    for nfe in (3, 8):
        cfg = SamplerConfig(name=name, nfe=nfe, sigma_min=lo, sigma_max=hi, final_denoise=False)
        x = jax.jit(lambda k, cfg=cfg: sample(_zero_model, model, k, (5, 3), cfg)[0])(key)
        np.testing.assert_allclose(x, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "name, kwargs",
    [("euler", dict(c=2.0)), ("heun", dict(s_churn=5.0)), ("ddpm", {}), ("dpmpp_2m_sde", {})],
)
def test_same_key_same_samples_other_key_other_samples(name, kwargs):
    gm = ring()
    cfg = SamplerConfig(name=name, nfe=6, sigma_max=10.0, sigma_min=0.01, **kwargs)
    model = Parameterization(VP(), "eps")
    run = jax.jit(lambda k: sample(gm.model_fn(VP(), "eps"), model, k, (8, 2), cfg)[0])
    a, b, c = run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_settings_without_noise_draw_no_random_numbers():
    # key=None would fail on the first draw: these settings must draw nothing.
    gm = ring()
    z = 10.0 * jax.random.normal(jax.random.PRNGKey(0), (4, 2))
    s = get_sigmas("karras", 5, 0.01, 10.0, with_final_zero=True)
    d = gm.denoise_ve
    for run in (
        lambda: sample_euler(d, z, None, s, c=1.0, step_schedule=VP()),
        lambda: sample_heun(d, z, None, s, s_churn=0.0),
        lambda: sample_heun(d, z, None, s, s_churn=10.0, s_tmin=100.0),  # churn window empty
        lambda: sample_ddim(d, z, None, s, eta=0.0),
        lambda: sample_dpmpp_2m(d, z, None, s),
        lambda: sample_exponential_multistep(d, z, None, s, order=3, c=1.0),
        lambda: sample_dpmpp_2m_sde(d, z, None, s, c=1.0),
        lambda: sample_unipc(d, z, None, s),
        lambda: sample_lms(d, z, None, s),
        lambda: sample_deis(d, z, None, s),
        lambda: sample_ipndm(d, z, None, s),
    ):
        assert np.all(np.isfinite(jax.jit(lambda run=run: run()[0])()))


def test_low_level_samplers_run_the_same_checks_and_take_keyword_options():
    d = ring().denoise_ve
    z = 10.0 * jax.random.normal(jax.random.PRNGKey(0), (4, 2))
    s = get_sigmas("karras", 5, 0.01, 10.0, with_final_zero=True)
    with pytest.raises(ValueError, match="^eta=2.0 is not valid"):
        sample_ddim(d, z, None, s, eta=2.0)
    with pytest.raises(ValueError, match="^c=0.5 is not valid"):
        sample_euler(d, z, None, s, c=0.5)
    with pytest.raises(ValueError, match="^eta=0.3 is not read by predictor='ddpm'"):
        sample_pc(d, z, None, s, predictor="ddpm", eta=0.3)
    with pytest.raises(TypeError):
        sample_ddim(d, z, None, s, 0.5)
    # pc's predictor: a name, or any one-evaluation step (z, sigma, sigma_next, key) -> z_next.
    key = jax.random.PRNGKey(1)
    named, _ = sample_pc(d, z, key, s, predictor="ddim", eta=0.3, snr="split")
    step = lambda z, sigma, sigma_next, key: ddim_step(d, z, sigma, sigma_next, key, 0.3)
    np.testing.assert_array_equal(named, sample_pc(d, z, key, s, predictor=step, snr="split")[0])


# -- jit and trajectories ----------------------------------------------------------------


def test_sample_inside_an_outer_jit_with_traced_parameters():
    gm = ring()
    cfg = SamplerConfig(name="dpmpp_3m", nfe=6, sigma_max=10.0, sigma_min=0.01)
    model = Parameterization(CosineVP(), "v")

    @jax.jit
    def run(params, key):
        return sample(params.model_fn(CosineVP(), "v"), model, key, (8, 2), cfg)[0]

    x = run(gm, jax.random.PRNGKey(0))
    closed_over = jax.jit(
        lambda key: sample(gm.model_fn(CosineVP(), "v"), model, key, (8, 2), cfg)[0]
    )(jax.random.PRNGKey(0))
    np.testing.assert_allclose(x, closed_over, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["heun", "dpmpp_3m", "unipc", "lms", "ode"])
def test_trajectory_only_when_asked(name):
    gm = ring()
    model = Parameterization(VP(), "eps")
    for trajectory in (True, False):
        cfg = SamplerConfig(name=name, nfe=8, sigma_max=10.0, sigma_min=0.01,
                            trajectory=trajectory)
        info = jax.jit(
            lambda k, cfg=cfg: sample(gm.model_fn(VP(), "eps"), model, k, (3, 2), cfg)[1]
        )(jax.random.PRNGKey(0))
        if trajectory:
            assert info["trajectory"].shape == (len(info["sigmas"]) - 1, 3, 2)
        else:
            assert "trajectory" not in info


# -- exact identities between samplers (float64) --------------------------------------------


def _mixture64():
    """A small 3-D mixture and float64 noise (call inside an x64 test)."""
    rng = np.random.default_rng(0)
    gm = GaussianMixture.isotropic([1.0, 2.0], rng.standard_normal((2, 3)), [0.3, 0.5])
    return gm, 20.0 * jax.random.normal(jax.random.PRNGKey(0), (16, 3), jnp.float64)


def test_ddim_is_euler_in_ve_and_first_order_exponential(x64):
    gm, z = _mixture64()
    s = get_sigmas("karras", 12, 0.01, 20.0, with_final_zero=True)
    euler, _ = sample_euler(gm.denoise_ve, z, None, s)
    ddim, _ = sample_ddim(gm.denoise_ve, z, None, s, eta=0.0)
    exp1, _ = sample_exponential_multistep(gm.denoise_ve, z, None, s, order=1, c=1.0)
    np.testing.assert_allclose(ddim, euler, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(exp1, euler, rtol=1e-12, atol=1e-12)


def test_ddpm_is_the_exact_split_with_rate_two(x64):
    # The exponential integrator of the c = 2 split with D frozen over a step is the DDPM
    # posterior: same mean r^2 z + (1 - r^2) D, same noise sigma' sqrt(1 - r^2), same key.
    gm, z = _mixture64()
    s = get_sigmas("log_snr", 12, 0.01, 20.0, with_final_zero=True)
    key = jax.random.PRNGKey(5)
    ddpm, _ = sample_ddpm(gm.denoise_ve, z, key, s)
    exp1, _ = sample_exponential_multistep(gm.denoise_ve, z, key, s, order=1, c=2.0)
    np.testing.assert_allclose(exp1, ddpm, rtol=1e-10, atol=1e-10)


def test_euler_in_ve_and_rf_is_exact_on_one_point_but_not_in_vp(x64):
    # The paper's Fig. 5: for a single data point the VE-Karras and rectified-flow reverse
    # trajectories are straight lines (Euler exact at any step count), VP's bend.
    point = np.array([[1.5, -0.5]])
    gm = GaussianMixture.isotropic([1.0], point, 0.0)
    lo, hi = 0.05, 20.0
    z = hi * jax.random.normal(jax.random.PRNGKey(0), (8, 2), jnp.float64)
    exact = point + (lo / hi) * (z - point)
    s = get_sigmas("karras", 4, lo, hi)
    errors = {}
    for schedule in (VEKarras(), RectifiedFlow(), VP()):
        run = jax.jit(
            lambda sch=schedule: sample_euler(gm.denoise_ve, z, None, s, step_schedule=sch)[0]
        )
        out = run()
        errors[schedule.name] = float(jnp.max(jnp.abs(out - exact)))
    assert errors["ve"] < 1e-12 and errors["rf"] < 1e-12
    assert errors["vp"] > 1e-2
