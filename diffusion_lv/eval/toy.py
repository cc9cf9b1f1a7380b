"""Evaluation of 2-D data sets: distances to the true data, the exact NLL, scatter plots.

* ``sample_quality``: sliced Wasserstein distance (SWD) between model samples and the true data,
  with its Monte Carlo floor, the SWD between two independent true samples of the same size. Both
  are averaged over ``repeats`` independent reference draws (and projection sets), so the ratio
  ``swd / swd_floor`` is read as "k times what sampling noise alone gives"; ``within_2x_floor``
  is ``ratio <= 2``. Beside it the unbiased squared MMD (a sum of RBF kernels) on the first
  ``MMD_MAX_SAMPLES`` samples, with its floor: the spread of the same estimate between two true
  samples (whose MMD^2 has mean 0).
* ``exact_nll_bits_per_dim``: the true density's NLL where the data set has one.
* ``plot_samples``: model samples over the data density (exact for ring8, a histogram otherwise).
* ``ToyEvaluator``: the evaluator interface (see images.py for the image one) over these.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_lv.data import toy
from diffusion_lv.eval import metrics
from diffusion_lv.eval.config import EvalConfig

Array = jax.Array
MMD_MAX_SAMPLES = 2048  # MMD costs n^2 kernel evaluations: the first this many samples


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


@dataclasses.dataclass(frozen=True)
class ToyEvaluator:
    """Evaluates models of a 2-D set against its true data (the oracle where there is one)."""

    dataset: str
    config: EvalConfig

    data_shape = (2,)
    num_levels = None  # continuous data: no dequantisation

    def held_out(self, num: int, key: Array) -> tuple[np.ndarray, str]:
        """Fresh draws from their own stream, and where they come from."""
        return toy.get_dataset(self.dataset)(key, num), f"{self.dataset} (fresh draws)"

    def true_nll(self, data, schedule) -> float | None:
        return exact_nll_bits_per_dim(self.dataset, data, schedule)

    def write_samples(self, samples, workdir: str, title: str, ve_denoiser=None,
                      sigma_range=None) -> None:
        """``samples.png``: the samples over the data density."""
        del ve_denoiser, sigma_range  # image evaluators draw a denoising strip with them
        plot_samples(samples, self.dataset, os.path.join(workdir, "samples.png"), title=title)

    def quality(self, samples, key: Array, workdir: str | None = None) -> dict:
        del workdir  # nothing to cache
        return sample_quality(samples, reference_sampler(self.dataset), key,
                              self.config.num_projections, self.config.repeats)

    def periodic(self, samples, folder: str, step: int, tensorboard) -> None:
        """During training: ``<folder>/step_<step>.png`` and the same figure in TensorBoard."""
        import matplotlib.pyplot as plt

        figure = plot_samples(samples, self.dataset, title=f"step {step}")
        figure.savefig(os.path.join(folder, f"step_{step:07d}.png"))
        tensorboard.figure(step, "samples", figure)
        plt.close(figure)

    def summary(self, metrics: dict) -> str:
        verdict = "within" if metrics["within_2x_floor"] else "NOT within"
        return (
            f"sliced Wasserstein {metrics['swd']:.4f} vs floor {metrics['swd_floor']:.4f} "
            f"(ratio {metrics['swd_ratio']:.2f}, {verdict} 2x)"
        )
