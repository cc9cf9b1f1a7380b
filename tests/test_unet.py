"""The DDPM++ U-Net: parameter count of a published config, shapes, conditioning and label
dropout, dropout, bfloat16, input checks, classifier-free guidance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_lv import convert
from diffusion_lv.models import unet
from diffusion_lv.schedules import get_schedule

SMALL = dict(channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), dropout=0.0)
SHAPE = (8, 8, 1)


def test_parameter_count_matches_edm_cifar10_network():
    # EDM's CIFAR-10 DDPM++ (SongUNet, model_channels=128, channel_mult=[2,2,2], num_blocks=4,
    # attn at 16) has 55,733,891 parameters, of which 9 * 128 map its augmentation labels.
    edm = unet.UNet(channels=128, channel_mult=(2, 2, 2), num_blocks=4, attn_resolutions=(16,))
    assert unet.param_counts(edm, (32, 32, 3))["total"] == 55_733_891 - 9 * 128
    # Class conditioning adds one dense layer from the one-hot labels to the noise embedding.
    conditional = edm.clone(num_classes=10)
    assert unet.param_counts(conditional, (32, 32, 3))["total"] == 55_732_739 + 10 * 128 + 128
    assert "55,732,739 parameters" in unet.describe(edm, (32, 32, 3))


def _random_params(net, x, *args, seed=0):
    """Params of ``net``'s shapes drawn on the host, N(0, 0.3^2): far from the near-zero output
    initialisation, so every input matters (and no PRNG-heavy init has to compile)."""
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), x, *args)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)


BATCH = 16  # one batch shape for every call: each compiled function is compiled once


@pytest.fixture(scope="module")
def conditional():
    """A small class-conditional U-Net with label dropout, its params and a jitted apply."""
    net = unet.UNet(**SMALL, num_classes=10, label_dropout=0.5)
    x = jnp.zeros((BATCH, *SHAPE))
    params = _random_params(net, x, jnp.zeros((BATCH,)), jnp.zeros(BATCH, int))
    apply = jax.jit(net.apply, static_argnames="train")
    return net, params, apply


def _inputs(seed=2, same=False):
    key = jax.random.PRNGKey(seed)
    if same:  # one image repeated: differences come from the other inputs only
        return jnp.broadcast_to(jax.random.normal(key, SHAPE), (BATCH, *SHAPE))
    return jax.random.normal(key, (BATCH, *SHAPE))


NULL = jnp.full((BATCH,), unet.NULL_LABEL)


def test_shapes_and_attention_placement(conditional):
    net, params, apply = conditional
    x = _inputs()
    out = apply(params, x, jnp.linspace(-1.0, 1.0, BATCH), NULL)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    # Attention at 4x4 only: in the 4x4 encoder blocks and the decoder's blocks there.
    with_attention = sorted(k for k, v in params["params"].items() if "Attention_0" in v)
    assert with_attention == ["dec_4_block1", "dec_4_in0", "enc_4_block0"]
    # Three channels in, a chosen number out (shapes only: nothing compiles).
    rgb = unet.UNet(**SMALL, out_channels=6)
    x_rgb = jnp.zeros((2, 8, 8, 3))
    p = jax.eval_shape(rgb.init, jax.random.PRNGKey(0), x_rgb, jnp.zeros((2,)))
    assert jax.eval_shape(rgb.apply, p, x_rgb, jnp.zeros((2,))).shape == (2, 8, 8, 6)


def test_noise_level_and_labels_condition_the_output(conditional):
    _, params, apply = conditional
    x = _inputs(3, same=True)
    labels = jnp.arange(BATCH) % 2 * 4 + 3  # 3, 7, 3, 7, ...
    c = jnp.arange(BATCH) // 2 * 0.25  # pairs of equal noise levels
    out = apply(params, x, c, labels)
    assert not np.allclose(out[0], out[2], atol=1e-3)  # same label, other noise level
    assert not np.allclose(out[0], out[1], atol=1e-3)  # same noise level, other label
    np.testing.assert_array_equal(out[0], apply(params, x, c, jnp.full((BATCH,), 3))[0])
    # No labels means the null label.
    np.testing.assert_array_equal(apply(params, x, c, None), apply(params, x, c, NULL))


def test_label_dropout_replaces_labels_by_null_at_train_time_only(conditional):
    _, params, apply = conditional
    x, c, labels = _inputs(4, same=True), jnp.zeros(BATCH), jnp.full((BATCH,), 3)
    cond = apply(params, x, c, labels)
    uncond = apply(params, x, c, NULL)
    assert float(jnp.max(jnp.abs(cond - uncond))) > 1e-2
    dropped = []
    for seed in range(4):
        trained = apply(params, x, c, labels, train=True,
                        rngs={"dropout": jax.random.PRNGKey(seed)})
        is_cond = np.all(np.isclose(trained, cond, atol=1e-5), axis=(1, 2, 3))
        is_uncond = np.all(np.isclose(trained, uncond, atol=1e-5), axis=(1, 2, 3))
        assert np.all(is_cond ^ is_uncond)  # each example is exactly one of the two
        dropped.append(is_uncond)
    # label_dropout = 0.5: the dropped count of 64 is binomial, mean 32, sd 4: within 5 sd.
    assert abs(int(np.sum(dropped)) - 32) <= 20


def test_dropout_is_active_only_in_training(conditional):
    net, params, apply = conditional
    noisy = jax.jit(net.clone(dropout=0.5).apply, static_argnames="train")
    x, c, labels = _inputs(), jnp.zeros(BATCH), jnp.full((BATCH,), 3)
    plain = apply(params, x, c, labels)
    # label_dropout is also on in training: compare examples whose label was kept.
    rngs = {"dropout": jax.random.PRNGKey(3)}
    a = noisy(params, x, c, labels, train=True, rngs=rngs)
    b = noisy(params, x, c, labels, train=True, rngs=rngs)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, plain, atol=1e-3)


def test_bfloat16_compute_tracks_float32(conditional):
    net, params, apply = conditional
    x, c = _inputs(), jnp.ones(BATCH)
    reference = apply(params, x, c, NULL)
    out = jax.jit(net.clone(dtype=jnp.bfloat16).apply)(params, x, c, NULL)
    assert out.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    # bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 per operation); through ~20
    # layers the relative error of the output stays of order 1e-2.
    error = float(jnp.linalg.norm(out - reference) / jnp.linalg.norm(reference))
    assert 0 < error < 0.05


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"not divisible by 2.*channel_mult=\(1, 2\)"):
        unet.UNet(**SMALL).init(jax.random.PRNGKey(0), jnp.zeros((1, 7, 7, 1)), jnp.zeros(1))
    with pytest.raises(ValueError, match="unknown noise embedding 'sinusoid'.*'positional'"):
        unet.UNet(**SMALL, embedding="sinusoid").init(
            jax.random.PRNGKey(0), jnp.zeros((1, *SHAPE)), jnp.zeros(1)
        )


def test_noise_embeddings():
    c = jnp.array([-1.0, 0.0, 0.5])
    pos = unet.positional_embedding(c, 8)
    # Frequencies 1, 10^-4/3, 10^-8/3, 10^-4 (endpoint included); sin half first.
    np.testing.assert_allclose(pos[:, 0], jnp.sin(c), rtol=1e-6)
    np.testing.assert_allclose(pos[:, 7], jnp.cos(1e-4 * c), rtol=1e-6)
    four = unet.fourier_embedding(c, 8)
    np.testing.assert_array_equal(four, unet.fourier_embedding(c, 8))  # fixed frequencies
    np.testing.assert_allclose(jnp.sum(four**2, axis=-1), 4.0, rtol=1e-5)  # sin^2 + cos^2
    net = unet.UNet(**SMALL, embedding="fourier")
    x = jnp.zeros((2, *SHAPE))
    params = jax.eval_shape(net.init, jax.random.PRNGKey(0), x, jnp.zeros(2))
    assert jax.eval_shape(net.apply, params, x, jnp.zeros(2)).shape == x.shape


@pytest.mark.parametrize("kind", convert.PREDICTIONS)
def test_guidance_in_any_prediction_space_is_guidance_of_the_denoiser(kind, x64):
    # Mixing two predictions with weights (1 - s, s) equals mixing their denoisers.
    schedule = get_schedule("vp")
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (4, 3))
    t = jnp.array([0.01, 0.5, 2.0, 8.0])
    cond_pred, uncond_pred = jax.random.normal(jax.random.fold_in(key, 1), (2, 4, 3))

    def model_fn(x_, t_, labels):
        return jnp.where((labels == unet.NULL_LABEL)[:, None], jnp.tile(uncond_pred, (2, 1)),
                         jnp.tile(cond_pred, (2, 1)))

    scale = 2.5
    guided = unet.guided_model_fn(model_fn, jnp.full((4,), 3), scale)(x, t)
    d_cond = convert.to_x0(cond_pred, kind, x, t, schedule)
    d_uncond = convert.to_x0(uncond_pred, kind, x, t, schedule)
    np.testing.assert_allclose(
        convert.to_x0(guided, kind, x, t, schedule), d_uncond + scale * (d_cond - d_uncond),
        rtol=1e-10, atol=1e-10,
    )
    # s = 1 is the conditional model, s = 0 the unconditional one.
    np.testing.assert_allclose(unet.guided_model_fn(model_fn, 3, 1.0)(x, t), cond_pred)
    np.testing.assert_allclose(unet.guided_model_fn(model_fn, 3, 0.0)(x, t), uncond_pred)
