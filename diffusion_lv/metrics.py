"""Distribution distances between sample sets, with their Monte Carlo floors.

A distance between two finite samples is never zero even when both come from the same
distribution: ``*_floor`` functions measure that floor by comparing two independent samples of
the reference, so a result can be read as "within k times the floor".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def random_directions(key: Array, dim: int, num: int, dtype=jnp.float32) -> Array:
    d = jax.random.normal(key, (num, dim), dtype)
    return d / jnp.linalg.norm(d, axis=-1, keepdims=True)


def sliced_wasserstein(
    x: Array, y: Array, key: Array, num_projections: int = 256, p: int = 2
) -> Array:
    """Sliced p-Wasserstein distance between equal-size samples ``x``, ``y`` of shape (n, d).

    Each random unit direction reduces both samples to 1-D, where the optimal coupling sorts them;
    the result is ``(mean over directions of W_p^p)^(1/p)``.
    """
    if x.shape != y.shape:
        raise ValueError(f"sliced_wasserstein needs equal shapes, got {x.shape} and {y.shape}")
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1).astype(x.dtype)
    dirs = random_directions(key, x.shape[1], num_projections, x.dtype)
    px = jnp.sort(x @ dirs.T, axis=0)
    py = jnp.sort(y @ dirs.T, axis=0)
    return jnp.mean(jnp.abs(px - py) ** p) ** (1.0 / p)


def mmd_rbf(x: Array, y: Array, bandwidths=(0.1, 0.3, 1.0, 3.0)) -> Array:
    """Unbiased squared MMD with a sum of Gaussian kernels (bandwidths in data units)."""
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1).astype(x.dtype)

    def kernel(a, b):
        d2 = (
            jnp.sum(a**2, -1)[:, None] + jnp.sum(b**2, -1)[None, :] - 2.0 * a @ b.T
        )
        d2 = jnp.maximum(d2, 0.0)
        return sum(jnp.exp(-0.5 * d2 / h**2) for h in bandwidths)

    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    sxx = (jnp.sum(kxx) - jnp.trace(kxx)) / (n * (n - 1))
    syy = (jnp.sum(kyy) - jnp.trace(kyy)) / (m * (m - 1))
    return sxx + syy - 2.0 * jnp.mean(kxy)


def sliced_wasserstein_floor(sample_fn, n: int, key: Array, num_projections: int = 256) -> Array:
    """SWD between two independent size-``n`` samples of the reference ``sample_fn(key, n)``."""
    k1, k2, k3 = jax.random.split(key, 3)
    return sliced_wasserstein(sample_fn(k1, n), sample_fn(k2, n), k3, num_projections)
