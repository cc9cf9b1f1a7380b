"""A residual MLP with a noise-level embedding, for low-dimensional (flattened) data.

``MLP()(x, c_noise) -> output`` with ``x`` of shape ``(batch, dim)`` and ``c_noise`` of shape
``(batch,)`` or a scalar: the network knows nothing about schedules or predictions. The noise level
enters as Fourier features of ``c_noise`` (the parameterisation passes EDM's
``log(sigma_ve) / 4``), mapped by a small MLP and added inside every residual block.
The last layer is zero-initialised, so an untrained network outputs 0 exactly.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class FourierEmbedding(nn.Module):
    """``[cos(2 pi f c), sin(2 pi f c)]`` for fixed log-spaced frequencies ``f`` in [1/4, max]."""

    features: int = 64
    max_frequency: float = 16.0

    @nn.compact
    def __call__(self, c_noise: Array) -> Array:
        half = self.features // 2
        freqs = jnp.exp(jnp.linspace(math.log(0.25), math.log(self.max_frequency), half))
        angles = 2.0 * math.pi * c_noise[..., None] * freqs
        return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class ResidualBlock(nn.Module):
    width: int
    expansion: int = 2

    @nn.compact
    def __call__(self, h: Array, emb: Array) -> Array:
        y = nn.LayerNorm()(h)
        y = nn.Dense(self.width * self.expansion)(y)
        y = y + nn.Dense(self.width * self.expansion)(emb)
        y = nn.silu(y)
        y = nn.Dense(self.width)(y)
        return h + y


class MLP(nn.Module):
    """Residual MLP: input projection, ``num_blocks`` pre-norm blocks, zero-initialised output."""

    width: int = 128
    num_blocks: int = 3
    expansion: int = 2
    embedding_features: int = 64
    max_frequency: float = 16.0

    @nn.compact
    def __call__(self, x: Array, c_noise: Array) -> Array:
        c_noise = jnp.broadcast_to(jnp.asarray(c_noise, x.dtype), x.shape[:1])
        emb = FourierEmbedding(self.embedding_features, self.max_frequency)(c_noise)
        emb = nn.silu(nn.Dense(self.width)(emb))
        emb = nn.Dense(self.width)(emb)
        h = nn.Dense(self.width)(x)
        for _ in range(self.num_blocks):
            h = ResidualBlock(self.width, self.expansion)(h, emb)
        h = nn.silu(nn.LayerNorm()(h))
        return nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros)(h)

