"""A DDPM++-style U-Net (Flax linen), laid out as EDM's ``SongUNet``, and classifier-free guidance.

``UNet(...)(x, c_noise, labels=None, train=None) -> output`` with ``x`` of shape ``(batch, H, W,
C)`` (NHWC) and ``c_noise`` of shape ``(batch,)`` or a scalar: like ``mlp.MLP`` the network knows
nothing about schedules or predictions (parameterization.py passes EDM's ``log(sigma_ve) / 4``).

Architecture (Song et al. 2021's DDPM++ as re-implemented in EDM, Karras et al. 2022):

* noise embedding: positional (DDPM++) or Fourier features of ``c_noise``, plus an optional class
  embedding, then two dense layers to ``embedding_mult * channels`` features;
* encoder: a 3x3 conv, then per resolution level a down-sampling residual block (not at the first
  level) and ``num_blocks`` residual blocks with ``channels * channel_mult[level]`` channels;
* decoder: mirror image with skip connections (``num_blocks + 1`` blocks per level), two blocks
  (the first with attention) at the lowest resolution, an up-sampling block per level;
* residual block: GroupNorm, SiLU, 3x3 conv, + dense(embedding) (or FiLM with
  ``adaptive_scale``), GroupNorm, SiLU, dropout, 3x3 conv (initialised near zero), 1x1 conv skip,
  the sum scaled by ``skip_scale`` (``sqrt(1/2)``: DDPM++'s ``skip_rescale``); self-attention after
  the blocks at resolutions in ``attn_resolutions`` (every level of the decoder's last block);
* resampling: 2x2 average pooling and nearest-neighbour up-sampling (EDM's ``[1, 1]`` filter).

With EDM's CIFAR-10 settings (``channels=128, channel_mult=(2, 2, 2), num_blocks=4,
attn_resolutions=(16,)``) the parameter count is exactly that of EDM's reference network without
its augmentation-label mapping (55,732,739 = 55,733,891 - 9 * 128).

Class conditioning: ``labels`` are integers in ``[0, num_classes)``; ``NULL_LABEL`` (-1) or
``labels=None`` means unconditional (a zero one-hot, as in EDM). During training
(``train=True``) each label is replaced by ``NULL_LABEL`` with probability ``label_dropout``, so
one network learns both the conditional and the unconditional denoiser; ``guided_model_fn``
combines them at sampling time. Training mode (dropout, label dropout) needs a ``'dropout'`` PRNG
stream; ``train=None`` (the default) means "training iff one is given", so a caller that passes
``rngs={'dropout': key}`` trains and one that passes no rngs evaluates.

``dtype=jnp.bfloat16`` computes in bfloat16 (parameters stay float32; group-norm statistics and
attention softmax in float32); the output is always float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv.models import param_count

Array = jax.Array

NULL_LABEL = -1
EMBEDDINGS = ("positional", "fourier")

_init = nn.initializers.xavier_uniform()
# EDM's "init_zero" (xavier scaled by 1e-5) and score_sde's init_scale=0 (variance 1e-10).
_init_zero = nn.initializers.variance_scaling(1e-10, "fan_avg", "uniform")
_init_attn = nn.initializers.variance_scaling(0.2, "fan_avg", "uniform")


def group_norm(channels: int, dtype) -> nn.GroupNorm:
    """EDM/score_sde GroupNorm: up to 32 groups of at least 4 channels, eps 1e-6."""
    return nn.GroupNorm(num_groups=min(32, channels // 4), epsilon=1e-6, dtype=dtype)


def downsample(x: Array) -> Array:
    """2x2 average pooling (the ``[1, 1]`` resampling filter)."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample(x: Array) -> Array:
    """Nearest-neighbour up-sampling by 2."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def positional_embedding(c_noise: Array, features: int, max_positions: float = 10000.0) -> Array:
    """Transformer sinusoids (EDM's ``endpoint=True`` variant): frequencies 1 ... 1/max."""
    half = features // 2
    freqs = (1.0 / max_positions) ** (jnp.arange(half, dtype=jnp.float32) / (half - 1))
    angles = c_noise[:, None] * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def fourier_embedding(c_noise: Array, features: int, scale: float = 16.0) -> Array:
    """Random Fourier features (NCSN++): frequencies ``N(0, scale^2)``, fixed by seed 0.

    The frequencies are a constant of the architecture, not parameters: the same in every run.
    """
    freqs = np.random.default_rng(0).normal(size=features // 2).astype(np.float32) * scale
    angles = (2.0 * math.pi) * c_noise[:, None] * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of an NHWC map (output not yet residual)."""

    num_heads: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        head_dim = c // self.num_heads
        qkv = nn.Conv(3 * c, (1, 1), kernel_init=_init_attn, dtype=self.dtype, name="qkv")(x)
        q, k, v = jnp.split(qkv.reshape(b, h * w, 3, self.num_heads, head_dim), 3, axis=2)
        q, k, v = (a[:, :, 0] for a in (q, k, v))  # (b, hw, heads, head_dim)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits / math.sqrt(head_dim), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, h, w, c)
        return nn.Conv(c, (1, 1), kernel_init=_init_zero, dtype=self.dtype, name="proj")(out)


class UNetBlock(nn.Module):
    """Residual block with optional down/up-sampling and self-attention (EDM's ``UNetBlock``)."""

    out_channels: int
    down: bool = False
    up: bool = False
    attention: bool = False
    num_heads: int = 1
    dropout: float = 0.0
    skip_scale: float = 1.0
    adaptive_scale: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, emb: Array, train: bool = False) -> Array:
        resample = downsample if self.down else upsample if self.up else (lambda a: a)
        conv = lambda features, name, init=_init, k=3: nn.Conv(
            features, (k, k), kernel_init=init, dtype=self.dtype, name=name
        )
        c_in, c_out = x.shape[-1], self.out_channels
        orig = x
        h = nn.silu(group_norm(c_in, self.dtype)(x))
        h = conv(c_out, "conv0")(resample(h))
        params = nn.Dense(
            c_out * (2 if self.adaptive_scale else 1), kernel_init=_init, dtype=self.dtype,
            name="affine",
        )(emb)[:, None, None, :]
        norm1 = group_norm(c_out, self.dtype)
        if self.adaptive_scale:
            scale, shift = jnp.split(params, 2, axis=-1)
            h = nn.silu(shift + norm1(h) * (scale + 1.0))
        else:
            h = nn.silu(norm1(h + params))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv(c_out, "conv1", _init_zero)(h)
        skip = resample(orig)
        if c_in != c_out or self.down or self.up:
            skip = conv(c_out, "skip", k=1)(skip)
        x = (h + skip) * self.skip_scale
        if self.attention:
            a = Attention(self.num_heads, self.dtype)(group_norm(c_out, self.dtype)(x))
            x = (x + a) * self.skip_scale
        return x


class UNet(nn.Module):
    """DDPM++ U-Net; see the module docstring. Defaults: score_sde's CIFAR-10 DDPM++."""

    channels: int = 128
    channel_mult: Sequence[int] = (1, 2, 2, 2)
    num_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    embedding: str = "positional"
    embedding_mult: int = 4
    noise_mult: int = 1
    fourier_scale: float = 16.0
    num_classes: int = 0
    label_dropout: float = 0.0
    num_heads: int = 1
    skip_scale: float = math.sqrt(0.5)
    adaptive_scale: bool = False
    out_channels: int | None = None
    dtype: Any = jnp.float32

    def _check(self, x: Array) -> None:
        if self.embedding not in EMBEDDINGS:
            raise ValueError(
                f"unknown noise embedding {self.embedding!r}; valid choices: {list(EMBEDDINGS)}"
            )
        if x.ndim != 4:
            raise ValueError(f"UNet expects NHWC images of rank 4, got shape {x.shape}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"image size {x.shape[1:3]} is not divisible by {factor}, the down-sampling of "
                f"channel_mult={tuple(self.channel_mult)}; use fewer levels or another size"
            )
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout={self.label_dropout!r} must be in [0, 1)")

    def embed(self, c_noise: Array, labels: Array | None, train: bool) -> Array:
        features = self.channels * self.noise_mult
        if self.embedding == "positional":
            emb = positional_embedding(c_noise, features)
        else:
            emb = fourier_embedding(c_noise, features, self.fourier_scale)
        if self.num_classes:
            if labels is None:
                labels = jnp.full(c_noise.shape, NULL_LABEL, jnp.int32)
            labels = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), c_noise.shape)
            if train and self.label_dropout > 0:
                keep = jax.random.uniform(self.make_rng("dropout"), labels.shape)
                labels = jnp.where(keep < self.label_dropout, NULL_LABEL, labels)
            # one_hot of NULL_LABEL (out of range) is the zero vector: "no class".
            onehot = jax.nn.one_hot(labels, self.num_classes) * math.sqrt(self.num_classes)
            emb = emb + nn.Dense(features, kernel_init=_init, name="map_label")(onehot)
        emb_features = self.channels * self.embedding_mult
        emb = nn.silu(nn.Dense(emb_features, kernel_init=_init, name="map_layer0")(emb))
        return nn.silu(nn.Dense(emb_features, kernel_init=_init, name="map_layer1")(emb))

    @nn.compact
    def __call__(
        self, x: Array, c_noise: Array, labels: Array | None = None, train: bool | None = None
    ) -> Array:
        self._check(x)
        train = self.has_rng("dropout") if train is None else train
        c_noise = jnp.broadcast_to(jnp.asarray(c_noise, jnp.float32), x.shape[:1])
        emb = self.embed(c_noise, labels, train).astype(self.dtype)
        block = lambda out, name, **kw: UNetBlock(
            out, num_heads=self.num_heads, dropout=self.dropout, skip_scale=self.skip_scale,
            adaptive_scale=self.adaptive_scale, dtype=self.dtype, name=name, **kw,
        )

        h = x.astype(self.dtype)
        skips = []
        last = len(self.channel_mult) - 1
        for level, mult in enumerate(self.channel_mult):
            res = x.shape[1] >> level
            if level == 0:
                h = nn.Conv(self.channels, (3, 3), kernel_init=_init, dtype=self.dtype,
                            name=f"enc_{res}_conv")(h)
            else:
                h = block(h.shape[-1], f"enc_{res}_down", down=True)(h, emb, train)
            skips.append(h)
            for idx in range(self.num_blocks):
                attention = res in self.attn_resolutions
                h = block(self.channels * mult, f"enc_{res}_block{idx}", attention=attention)(
                    h, emb, train
                )
                skips.append(h)

        for level in reversed(range(len(self.channel_mult))):
            res = x.shape[1] >> level
            mult = self.channel_mult[level]
            if level == last:
                h = block(h.shape[-1], f"dec_{res}_in0", attention=True)(h, emb, train)
                h = block(h.shape[-1], f"dec_{res}_in1")(h, emb, train)
            else:
                h = block(h.shape[-1], f"dec_{res}_up", up=True)(h, emb, train)
            for idx in range(self.num_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                attention = idx == self.num_blocks and res in self.attn_resolutions
                h = block(self.channels * mult, f"dec_{res}_block{idx}", attention=attention)(
                    h, emb, train
                )

        h = nn.silu(group_norm(h.shape[-1], self.dtype)(h))
        out = nn.Conv(self.out_channels or x.shape[-1], (3, 3), kernel_init=_init_zero,
                      dtype=self.dtype, name="out_conv")(h)
        return out.astype(jnp.float32)


# -- construction from plain options (configs are read at the edge) ------------------------

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def make_unet(**options) -> UNet:
    """A ``UNet`` from plain options (a config's ``model`` section without ``name``).

    Names are checked (a ValueError lists the valid ones); ``dtype`` is ``'float32'`` or
    ``'bfloat16'``; sequences may be lists. Nothing is compiled.
    """
    fields = [f for f in UNet.__dataclass_fields__ if f not in ("parent", "name")]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"unknown UNet option(s) {unknown}; valid: {sorted(fields)}")
    options = dict(options)
    dtype = options.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not valid; valid choices: {sorted(DTYPES)}")
    options["dtype"] = DTYPES[dtype]
    for key in ("channel_mult", "attn_resolutions"):
        if key in options:
            options[key] = tuple(int(v) for v in options[key])
    if options.get("embedding", "positional") not in EMBEDDINGS:
        raise ValueError(
            f"embedding={options['embedding']!r} is not valid; valid choices: {list(EMBEDDINGS)}"
        )
    for key in ("channels", "num_blocks", "embedding_mult", "noise_mult", "num_heads"):
        if key in options and not (isinstance(options[key], int) and options[key] >= 1):
            raise ValueError(f"{key}={options[key]!r} is not valid; valid: an integer >= 1")
    if not all(m >= 1 for m in options.get("channel_mult", (1,))):
        raise ValueError(f"channel_mult={options['channel_mult']!r}: multipliers must be >= 1")
    for key in ("dropout", "label_dropout"):
        if key in options and not 0.0 <= options[key] < 1.0:
            raise ValueError(f"{key}={options[key]!r} is not valid; valid: a number in [0, 1)")
    return UNet(**options)


# -- parameter counts ------------------------------------------------------------------------


def abstract_params(network: nn.Module, image_shape: tuple[int, int, int]):
    """The params tree as shapes only (``jax.eval_shape``: no memory, no FLOPs)."""
    x = jnp.zeros((1, *image_shape), jnp.float32)
    return jax.eval_shape(lambda: network.init(jax.random.PRNGKey(0), x, jnp.zeros((1,))))


def param_counts(network: nn.Module, image_shape: tuple[int, int, int]) -> dict[str, int]:
    """Parameters per top-level submodule, and ``'total'``, without initialising anything."""
    params = abstract_params(network, image_shape)["params"]
    counts = {name: param_count(sub) for name, sub in params.items()}
    counts["total"] = sum(counts.values())
    return counts


def describe(network: nn.Module, image_shape: tuple[int, int, int]) -> str:
    """One line for logs: ``UNet(...): 55,732,739 parameters (35.6 M in the encoder ...)``."""
    counts = param_counts(network, image_shape)
    enc = sum(v for k, v in counts.items() if k.startswith("enc_"))
    dec = sum(v for k, v in counts.items() if k.startswith("dec_"))
    return (
        f"{type(network).__name__} on {image_shape}: {counts['total']:,} parameters "
        f"(encoder {enc / 1e6:.2f} M, decoder {dec / 1e6:.2f} M)"
    )


# -- classifier-free guidance ------------------------------------------------------------------

LabelledModelFn = Callable[[Array, Array, Array], Array]


def guided_model_fn(
    model_fn: LabelledModelFn, labels: Array, guidance_scale: float
) -> Callable[[Array, Array], Array]:
    """Classifier-free guidance: ``(x, t) -> uncond + s * (cond - uncond)`` for fixed labels.

    ``model_fn(x, t, labels)`` is a label-conditioned model (any native output kind) whose
    ``NULL_LABEL`` output is the unconditional prediction. Every prediction kind is affine in
    the denoiser at fixed ``(x, t)`` with the same coefficients for both terms, so mixing
    predictions with weights ``(1 - s, s)`` is mixing denoisers: the result is the guided model
    in any parameterisation. ``s = 1``: conditional, ``s = 0``: unconditional, ``s > 1``: guided.
    Both halves run as one batch of twice the size.
    """

    def guided(x, t):
        batch = x.shape[0]
        t2 = jnp.broadcast_to(jnp.asarray(t), (batch,))
        labels2 = jnp.concatenate(
            [jnp.broadcast_to(labels, (batch,)), jnp.full((batch,), NULL_LABEL, jnp.int32)]
        )
        both = model_fn(
            jnp.concatenate([x, x]), jnp.concatenate([t2, t2]), labels2.astype(jnp.int32)
        )
        cond, uncond = both[:batch], both[batch:]
        return uncond + guidance_scale * (cond - uncond)

    return guided
