"""Distribution distances between sample sets, with their Monte Carlo floors.

A distance between two finite samples is never zero even when both come from the same
distribution: ``*_floor`` functions measure that floor by comparing two independent samples of
the reference, so a result can be read as "within k times the floor". The Frechet distance of
feature Gaussians (FID and the digits stand-in) is computed here too, once, in float64 numpy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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


# -- Frechet distance of Gaussians fitted to features (FID and its stand-ins), in float64 numpy --


def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (``np.cov``, divisor ``n - 1``) of features ``(n, d)``."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (n >= 2, d), got shape {features.shape}")
    return features.mean(0), np.cov(features, rowvar=False).reshape(features.shape[1], -1)


def frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``: the squared 2-Wasserstein
    distance of ``N(mu_a, S_a)`` and ``N(mu_b, S_b)``.

    ``tr (S_a S_b)^(1/2) = tr (S_a^(1/2) S_b S_a^(1/2))^(1/2)``: a symmetric PSD root (eigh), no
    complex round-off as with a general matrix square root, and no failure for singular
    covariances (fewer samples than feature dimensions).
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    if mu_a.ndim != 1 or mu_a.shape[0] < 1:
        raise ValueError(f"mu_a must be a mean vector (d,), got shape {mu_a.shape}")
    d = mu_a.shape[0]
    for name, value, shape in (("mu_b", mu_b, (d,)), ("cov_a", cov_a, (d, d)),
                               ("cov_b", cov_b, (d, d))):
        if value.shape != shape:
            raise ValueError(
                f"{name} has shape {value.shape}; with mu_a of shape {mu_a.shape} it must be "
                f"{shape} (means (d,), covariances (d, d))"
            )
    eigval, eigvec = np.linalg.eigh(cov_a)
    root_a = (eigvec * np.sqrt(np.clip(eigval, 0.0, None))) @ eigvec.T
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sum(np.sqrt(np.clip(middle, 0.0, None)))
    distance = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    return float(distance)


def frechet_distance(features_a, features_b) -> float:
    """Frechet distance of the Gaussians fitted to two feature sets ``(n, d)`` and ``(m, d)``."""
    return frechet_distance_from_stats(*gaussian_statistics(features_a),
                                       *gaussian_statistics(features_b))
