"""Toy 2-D data sets, generated deterministically from a PRNG key (no files, no download).

Each set is a pure, jit-able sampler ``sample(key, n) -> (n, 2)`` float32 array, so a batch is a
function of ``(key, step)`` alone and a resumed run sees exactly the batches it would have seen.
Scales are chosen so every set lies within about ``[-4, 4]^2`` (standard deviations 1.4 to 2.3).

* ``ring8``: the oracle's ring of 8 Gaussians (radius 2, std 0.1); it also has an exact
  :class:`~diffusion_lv.oracle.GaussianMixture` (``exact_density``) for metrics and plots.
* ``checkerboard``: uniform on the 8 dark squares of a 4x4 board of side 8 (FFJORD's set).
* ``two_moons``: two interleaved half circles with Gaussian noise, centred.
* ``swiss_roll``: the 2-D Swiss roll (sklearn's ``make_swiss_roll`` in its x-z plane), scaled.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion_lv import oracle

Array = jax.Array


def ring8(key: Array, n: int) -> Array:
    return oracle.ring().sample(key, n).astype(jnp.float32)


def checkerboard(key: Array, n: int) -> Array:
    k_x, k_y, k_row = jax.random.split(key, 3)
    x = jax.random.uniform(k_x, (n,), minval=-2.0, maxval=2.0)
    # A row offset chosen so that (floor(x) + floor(y)) is even: only the dark squares.
    y = jax.random.uniform(k_y, (n,)) - 2.0 * jax.random.randint(k_row, (n,), 0, 2)
    y = y + jnp.mod(jnp.floor(x), 2.0)
    return 2.0 * jnp.stack([x, y], axis=-1)


def two_moons(key: Array, n: int, noise: float = 0.08) -> Array:
    k_angle, k_moon, k_noise = jax.random.split(key, 3)
    angle = math.pi * jax.random.uniform(k_angle, (n,))
    upper = jax.random.bernoulli(k_moon, 0.5, (n,))
    x = jnp.where(upper, jnp.cos(angle), 1.0 - jnp.cos(angle))
    y = jnp.where(upper, jnp.sin(angle), 0.5 - jnp.sin(angle))
    points = jnp.stack([x - 0.5, y - 0.25], axis=-1)
    return 2.0 * (points + noise * jax.random.normal(k_noise, (n, 2)))


def swiss_roll(key: Array, n: int, noise: float = 0.5) -> Array:
    k_t, k_noise = jax.random.split(key)
    t = 1.5 * math.pi * (1.0 + 2.0 * jax.random.uniform(k_t, (n,)))
    points = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], axis=-1)
    points = points + noise * jax.random.normal(k_noise, (n, 2))
    return points / 3.5


DATASETS: dict[str, Callable[[Array, int], Array]] = {
    "ring8": ring8,
    "checkerboard": checkerboard,
    "two_moons": two_moons,
    "swiss_roll": swiss_roll,
}


def get_dataset(name: str) -> Callable[[Array, int], Array]:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {sorted(DATASETS)}")
    return DATASETS[name]


def exact_density(name: str) -> oracle.GaussianMixture | None:
    """The data set's exact Gaussian mixture where it has one (``ring8``), else ``None``."""
    return oracle.ring() if name == "ring8" else None


@functools.cache
def data_std(name: str, n: int = 65536, seed: int = 0) -> float:
    """Scalar data standard deviation (EDM's ``sigma_data``): exact for ring8, else estimated
    from ``n`` samples (relative standard error about ``1/sqrt(2n)``)."""
    mixture = exact_density(name)
    if mixture is not None:
        return mixture.std()
    x = jax.jit(get_dataset(name), static_argnums=1)(jax.random.PRNGKey(seed), n)
    return float(jnp.sqrt(jnp.mean(jnp.var(x, axis=0))))
