"""Sampling a trained model, distances to the true data, and the samples-over-density plot.

* ``make_sampler``: one jitted ``(params, key) -> samples`` for a network, its parameterisation
  and a sampler config (the samplers see the model only through convert.py).
* ``sample_quality``: sliced Wasserstein distance (SWD) between model samples and the true data,
  with its Monte Carlo floor, the SWD between two independent true samples of the same size. Both
  are averaged over ``repeats`` independent reference draws (and projection sets), so the ratio
  ``swd / swd_floor`` is read as "k times what sampling noise alone gives"; ``within_2x_floor``
  is ``ratio <= 2``. Beside it the unbiased squared MMD (a sum of RBF kernels) on the first
  ``MMD_MAX_SAMPLES`` samples, with its floor: the spread of the same estimate between two true
  samples (whose MMD^2 has mean 0).
* ``evaluate_nll``: the probability-flow NLL of held-out data, batched, with standard errors;
  ``exact_nll_bits_per_dim`` the true density's figure where the data set has one.
* ``plot_samples``: model samples over the data density (exact for ring8, a histogram otherwise).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv import progress, samplers
from diffusion_lv.data import toy
from diffusion_lv.eval import metrics
from diffusion_lv.likelihood import LikelihoodConfig, evaluate_likelihood, make_likelihood_fn
from diffusion_lv.parameterization import Parameterization, bind

Array = jax.Array
MMD_MAX_SAMPLES = 2048  # MMD costs n^2 kernel evaluations: the first this many samples


@functools.lru_cache(maxsize=8)
def make_sampler(
    apply_fn: Callable,
    parameterization: Parameterization,
    sampler_config: samplers.SamplerConfig,
    shape: tuple[int, ...],
) -> Callable[[dict, Array], tuple[Array, int]]:
    """``run(params, key) -> (samples, nfe)``: the whole sampler as one compiled program.

    Cached on its (hashable) arguments, so periodic and final sampling share one compilation.
    """
    info: dict = {}

    @jax.jit
    def run(params, key):
        model_fn = parameterization.model_fn(bind(apply_fn, params))
        x, sample_info = samplers.sample(
            model_fn,
            parameterization.prediction,
            parameterization.schedule,
            key,
            shape,
            sampler_config,
            sigma_data=parameterization.sigma_data,
        )
        info["nfe"] = sample_info["nfe"]  # a Python int, known at trace time
        return x

    def sample(params, key):
        x = run(params, key)
        return x, int(info["nfe"])

    return sample


@functools.cache
def reference_sampler(dataset: str) -> Callable[[Array, int], Array]:
    """Exact samples of the true data: the Gaussian mixture where known, else the generator.

    Cached: one callable per data set, so ``sample_quality`` (static on it) compiles once.
    """
    mixture = toy.exact_density(dataset)
    if mixture is not None:
        return lambda key, n: mixture.sample(key, n).astype(jnp.float32)
    return toy.get_dataset(dataset)


@functools.partial(jax.jit, static_argnames=("reference", "num_projections", "repeats"))
def _quality_draws(samples, reference, key, num_projections, repeats):
    """Per repeat: SWD to a fresh reference draw, its floor, MMD^2 and its floor."""
    n = samples.shape[0]
    m = min(n, MMD_MAX_SAMPLES)

    def one_repeat(key):
        k_ref, k_a, k_b, k_proj, k_proj_floor = jax.random.split(key, 5)
        ref, ref_a, ref_b = reference(k_ref, n), reference(k_a, n), reference(k_b, n)
        swd = metrics.sliced_wasserstein(samples, ref, k_proj, num_projections)
        floor = metrics.sliced_wasserstein(ref_a, ref_b, k_proj_floor, num_projections)
        mmd2 = metrics.mmd_rbf(samples[:m], ref[:m])
        mmd2_floor = metrics.mmd_rbf(ref_a[:m], ref_b[:m])
        return swd, floor, mmd2, mmd2_floor

    return jax.lax.map(one_repeat, jax.random.split(key, repeats))


def sample_quality(
    samples: Array,
    reference: Callable[[Array, int], Array],
    key: Array,
    num_projections: int = 256,
    repeats: int = 4,
) -> dict:
    """SWD of ``samples`` to the true data, its Monte Carlo floor and their ratio.

    ``reference`` is a static (hashed) argument of one compiled program: pass the same callable
    (``reference_sampler(dataset)`` is cached) and calls with the same shapes compile once.
    """
    samples = jnp.asarray(samples, jnp.float32)
    n = samples.shape[0]
    swd, floor, mmd2, mmd2_floor = _quality_draws(
        samples, reference, key, int(num_projections), int(repeats)
    )
    swd, floor = float(jnp.mean(swd)), float(jnp.mean(floor))
    finite = bool(np.all(np.isfinite(np.asarray(samples))))
    return {
        "swd": swd,
        "swd_floor": floor,
        "swd_ratio": swd / floor,
        "within_2x_floor": bool(finite and swd <= 2.0 * floor),
        # Unbiased MMD^2 has mean 0 between true samples; its floor is its spread there.
        "mmd2": float(jnp.mean(mmd2)),
        "mmd2_floor_sd": float(jnp.std(mmd2_floor, ddof=1)) if repeats > 1 else None,
        "mmd_num_samples": int(min(n, MMD_MAX_SAMPLES)),
        "num_samples": int(n),
        "num_projections": int(num_projections),
        "repeats": int(repeats),
        "samples_finite": finite,
    }


def evaluate_nll(
    apply_fn: Callable,
    params,
    parameterization: Parameterization,
    examples: np.ndarray,
    config: LikelihoodConfig,
    batch_size: int,
    key: Array,
    show_progress: bool = True,
) -> dict:
    """Probability-flow NLL of ``examples`` (held-out data) in batches of ``batch_size``.

    One compilation serves every batch: the last one is padded with copies of its first example
    and the padding is dropped from the figures. Returns ``likelihood.evaluate_likelihood``'s
    means and standard errors (nats and bits/dim, dequantised when ``config.num_levels`` is
    set), the mean NFE per solve and the number of examples; NaN figures when no solve finished.
    ``config.sigma_data`` is replaced by the model's own (EDM outputs are read with it).
    """
    config = dataclasses.replace(config, sigma_data=parameterization.sigma_data)
    examples = np.asarray(examples, np.float32)
    n = examples.shape[0]
    batch_size = min(batch_size, n)

    fn = make_likelihood_fn(parameterization.model_apply(apply_fn), parameterization.prediction,
                            parameterization.schedule, config)
    num_batches = -(-n // batch_size)

    def batches():
        for i in range(num_batches):
            batch = examples[i * batch_size:(i + 1) * batch_size]
            pad = batch_size - batch.shape[0]
            if pad:
                batch = np.concatenate([batch, np.repeat(batch[:1], pad, axis=0)])
            yield jnp.asarray(batch), batch_size - pad

    def trimmed(params_, batch, key_):  # the padded rows leave the result here
        x, valid = batch
        result = fn(params_, x, key_)
        return result._replace(
            nll=result.nll[:valid], bits_per_dim=result.bits_per_dim[:valid]
        )

    items = progress.track(batches(), num_batches, f"NLL ({n} examples)",
                           enabled=show_progress and num_batches > 1)
    try:
        figures = evaluate_likelihood(trimmed, params, items, key)
    except ValueError:  # no batch solved within max_steps
        nan = float("nan")
        figures = {"nll": nan, "nll_standard_error": nan, "bits_per_dim": nan,
                   "bits_per_dim_standard_error": nan, "nfe": nan, "num_examples": 0,
                   "unsolved_batches": num_batches}
    return figures


def exact_nll_bits_per_dim(dataset: str, x: Array, schedule) -> float | None:
    """The true model's figure for the same quantity, ``-log p_{t_min}(x)`` in bits/dim (the
    data density convolved with the schedule's smallest noise), where the data set has one."""
    mixture = toy.exact_density(dataset)
    if mixture is None:
        return None
    t_min = jnp.full((x.shape[0],), schedule.t_min, x.dtype)
    log_p = mixture.log_prob(x, t_min, schedule)
    return float(-jnp.mean(log_p) / (math.prod(x.shape[1:]) * math.log(2.0)))


def _density_image(dataset: str, extent: float, resolution: int = 200) -> np.ndarray:
    """Data density on a ``resolution^2`` grid over ``[-extent, extent]^2`` (rows = y)."""
    mixture = toy.exact_density(dataset)
    if mixture is not None:
        axis = np.linspace(-extent, extent, resolution, dtype=np.float32)
        xx, yy = np.meshgrid(axis, axis)
        grid = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1))
        log_p = mixture.log_prob_ve(grid, jnp.zeros((grid.shape[0],), grid.dtype))
        return np.exp(np.asarray(log_p)).reshape(resolution, resolution)
    x = np.asarray(toy.get_dataset(dataset)(jax.random.PRNGKey(12345), 400_000))
    # A coarser histogram than the grid: about 40 points per bin where the data are.
    bins = resolution // 2
    hist, _, _ = np.histogram2d(
        x[:, 1], x[:, 0], bins=bins, range=[[-extent, extent], [-extent, extent]]
    )
    return hist


def plot_samples(
    samples: Array, dataset: str, path: str | None = None, title: str = "", max_points=4096
):
    """Two panels: the data density alone, and model samples over it. Saved to ``path`` if
    given (the figure is then closed); returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = np.asarray(samples)[:max_points]
    extent = 4.5
    # sqrt: the tails of narrow modes stay visible next to their peaks.
    density = np.sqrt(_density_image(dataset, extent))
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2), dpi=110, sharex=True, sharey=True)
    for ax in axes:
        ax.imshow(
            density, origin="lower", extent=(-extent, extent, -extent, extent), cmap="Greys",
            vmin=0.0, vmax=1.5 * density.max(), interpolation="bilinear",
        )
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
    axes[0].set_title(f"{dataset} density", fontsize=9)
    axes[1].scatter(samples[:, 0], samples[:, 1], s=0.8, c="tab:red", alpha=0.5, linewidths=0)
    axes[1].set_title(title or f"{len(samples)} model samples", fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
        plt.close(fig)
    return fig


def finite_or_none(value: float | None) -> float | None:
    """JSON-safe float: NaN/inf become None."""
    return value if value is not None and math.isfinite(value) else None
