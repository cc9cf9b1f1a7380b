"""The residual MLP and the parameterisation wrapper.

The parameterisation is checked against the exact Gaussian-mixture model: a "network" built from
the oracle (it inverts the documented input map and returns the oracle's native prediction) must
give the oracle's denoiser through ``Parameterization.denoiser`` for every schedule and output kind.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_lv import convert, losses, oracle
from diffusion_lv.models import param_count
from diffusion_lv.models.mlp import MLP
from diffusion_lv.parameterization import Parameterization, bind
from diffusion_lv.schedules import SCHEDULES, get_schedule

KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def small_mlp():
    net = MLP(width=16, num_blocks=2, embedding_features=8)
    params = jax.jit(net.init)(KEY, jnp.zeros((1, 2)), jnp.zeros((1,)))
    # Randomise the zero-initialised output layer so outputs depend on the inputs.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    leaves = [
        leaf + 0.1 * jax.random.normal(k, leaf.shape)
        for leaf, k in zip(leaves, keys, strict=True)
    ]
    return net, params, jax.tree.unflatten(tree, leaves), jax.jit(net.apply)


def test_output_shape_and_zero_init(small_mlp):
    net, params, _, apply = small_mlp
    x = jax.random.normal(KEY, (5, 2))
    out = apply(params, x, jnp.linspace(-1.0, 1.0, 5))
    assert out.shape == (5, 2)
    np.testing.assert_array_equal(out, 0.0)  # zero-initialised last layer
    assert param_count(params) > 0


def test_examples_are_independent_and_noise_level_matters(small_mlp):
    _, _, params, apply = small_mlp
    x = jax.random.normal(KEY, (6, 2))
    c = jnp.linspace(-1.0, 1.0, 6)
    full = apply(params, x, c)
    alone = jnp.concatenate([apply(params, x[i : i + 1], c[i : i + 1]) for i in range(6)])
    np.testing.assert_allclose(full, alone, rtol=1e-5, atol=1e-6)
    # A scalar noise level broadcasts over the batch.
    np.testing.assert_allclose(
        apply(params, x, c[2]), apply(params, x, jnp.full((6,), c[2])), rtol=1e-6
    )
    moved = apply(params, x, c + 0.5)
    assert float(jnp.max(jnp.abs(moved - full))) > 1e-3


def oracle_network(mixture, param: Parameterization):
    """A "network" that inverts the parameterisation's input map and answers exactly."""

    def network(net_input, c_noise):
        sigma_ve = jnp.exp(4.0 * c_noise)
        t = param.schedule.t_from_sigma_ve(sigma_ve)
        alpha = param.schedule.alpha(t)
        _, _, c_in, _ = convert.edm_preconditioning(sigma_ve, param.sigma_data)
        scaled = param.scale_input or param.prediction == "edm"
        x = net_input * (alpha / c_in)[:, None] if scaled else net_input
        return mixture.predict(x, t, param.schedule, param.prediction, param.sigma_data)

    return network


@pytest.mark.parametrize("schedule_name", sorted(SCHEDULES))
def test_denoiser_is_exact_for_every_schedule_and_output(x64, schedule_name):
    mixture = oracle.ring(num_modes=3, std=0.3)
    schedule = get_schedule(schedule_name)
    key_t, key_x = jax.random.split(jax.random.PRNGKey(3))
    t = jax.random.uniform(
        key_t, (8,), minval=schedule.t_min * 10, maxval=schedule.t_max * 0.9, dtype=jnp.float64
    )
    x = mixture.sample_marginal(key_x, 8, t, schedule)

    @jax.jit
    def errors(x, t):
        exact = mixture.denoise(x, t, schedule)
        out = {}
        for kind in convert.PREDICTIONS:
            for scale_input in (True, False):
                param = Parameterization(schedule, kind, sigma_data=0.7, scale_input=scale_input)
                denoised = param.denoiser(oracle_network(mixture, param))(x, t)
                out[kind, scale_input] = jnp.max(jnp.abs(denoised - exact))
        return out

    for (kind, scale_input), error in errors(x, t).items():
        assert float(error) < 1e-8, (kind, scale_input, float(error))


def test_network_inputs(x64):
    schedule = get_schedule("vp")
    x = jnp.array([[1.0, -2.0], [0.5, 0.25]], jnp.float64)
    t = jnp.array([0.3, 2.0], jnp.float64)
    alpha, sigma_ve = schedule.alpha(t), schedule.sigma_ve(t)
    c_in = 1.0 / jnp.sqrt(sigma_ve**2 + 0.5**2)
    net_x, c_noise = Parameterization(schedule, "eps", 0.5).network_inputs(x, t)
    np.testing.assert_allclose(net_x, x * (c_in / alpha)[:, None], rtol=1e-12)
    np.testing.assert_allclose(c_noise, 0.25 * jnp.log(sigma_ve), rtol=1e-12)
    raw_x, _ = Parameterization(schedule, "eps", 0.5, scale_input=False).network_inputs(x, t)
    np.testing.assert_array_equal(raw_x, x)
    # EDM's c_in is part of its definition: it cannot be switched off.
    edm_x, _ = Parameterization(schedule, "edm", 0.5, scale_input=False).network_inputs(x, t)
    np.testing.assert_allclose(edm_x, net_x, rtol=1e-12)


def test_loss_sees_the_model_through_convert(x64):
    """diffusion_loss of the wrapped oracle network equals that of the oracle's own model_fn."""
    mixture = oracle.ring(num_modes=4, std=0.2)
    schedule = get_schedule("rf")
    param = Parameterization(schedule, "velocity", sigma_data=1.0)
    config = losses.LossConfig(weighting="ml")
    x0 = mixture.sample(jax.random.PRNGKey(4), 16)
    key = jax.random.PRNGKey(5)

    @jax.jit
    def both(x0, key):
        wrapped = param.model_fn(oracle_network(mixture, param))
        direct = mixture.model_fn(schedule, "velocity", 1.0)
        return (
            losses.diffusion_loss(wrapped, x0, key, param, config),
            losses.diffusion_loss(direct, x0, key, param, config),
        )

    (wrapped, t1), (direct, t2) = both(x0, key)
    np.testing.assert_array_equal(t1, t2)
    np.testing.assert_allclose(wrapped, direct, rtol=1e-7)


def test_bind_and_bad_input(small_mlp):
    net, params, _, _ = small_mlp
    network = bind(net.apply, params)
    assert network(jnp.zeros((3, 2)), jnp.zeros((3,))).shape == (3, 2)
    with pytest.raises(ValueError, match="valid choices"):
        Parameterization(get_schedule("vp"), "noise")
    with pytest.raises(ValueError, match="sigma_data"):
        Parameterization(get_schedule("vp"), "eps", sigma_data=0.0)
