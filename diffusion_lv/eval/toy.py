"""Evaluation of 2-D data sets: distances to the true data, the exact NLL, scatter plots.

* ``sample_quality``: sliced Wasserstein distance (SWD) between model samples and the true data,
  with its Monte Carlo floor, the SWD between two independent true samples of the same size. Both
  are averaged over ``repeats`` independent reference draws (and projection sets), so the ratio
  ``swd / swd_floor`` is read as "k times what sampling noise alone gives"; ``within_2x_floor``
  is ``ratio <= 2``. Beside it the unbiased squared MMD (a sum of RBF kernels) on the first
  ``MMD_MAX_SAMPLES`` samples, with its floor: the same estimate between two true samples, its
  mean ``mmd2_floor`` (0 in expectation: the estimate is unbiased) and its spread
  ``mmd2_floor_sd``, so ``mmd2`` is read against ``mmd2_floor +- k mmd2_floor_sd``.
* ``exact_nll_bits_per_dim``: the true density's NLL where the data set has one.
* ``plot_samples``: model samples over the data density (exact for ring8, a histogram otherwise)
  in the frame ``[-FRAME, FRAME]^2`` that holds every data set. Samples outside it are not
  dropped: they are drawn on the frame's edge (where they left it) with their own marker, and
  the figure prints the fraction outside (``out_of_frame``), so a plot cannot look better than
  the samples are.
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
FRAME = 4.5  # half-width of the plots' square frame: every toy data set lies within [-4.5, 4.5]^2
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
        # Unbiased MMD^2 has mean 0 between true samples: the floor's mean (measured, over the
        # repeats) and its spread there.
        "mmd2": float(jnp.mean(mmd2)),
        "mmd2_floor": float(jnp.mean(mmd2_floor)),
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


@functools.cache
def _density_image(dataset: str, extent: float, resolution: int = 200) -> np.ndarray:
    """Data density on a ``resolution^2`` grid over ``[-extent, extent]^2`` (rows = y); cached
    (the periodic pictures draw the same one every time), so read-only."""
    mixture = toy.exact_density(dataset)
    if mixture is not None:
        axis = np.linspace(-extent, extent, resolution, dtype=np.float32)
        xx, yy = np.meshgrid(axis, axis)
        grid = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1))
        log_p = mixture.log_prob_ve(grid, jnp.zeros((grid.shape[0],), grid.dtype))
        image = np.exp(np.asarray(log_p)).reshape(resolution, resolution)
        image.flags.writeable = False
        return image
    x = np.asarray(toy.get_dataset(dataset)(jax.random.PRNGKey(12345), 400_000))
    # A coarser histogram than the grid: about 40 points per bin where the data are.
    bins = resolution // 2
    hist, _, _ = np.histogram2d(
        x[:, 1], x[:, 0], bins=bins, range=[[-extent, extent], [-extent, extent]]
    )
    hist.flags.writeable = False
    return hist


def out_of_frame(samples, extent: float = FRAME) -> dict:
    """What a plot of ``samples`` in the frame ``[-extent, extent]^2`` does not show inside it:
    ``outside`` (finite samples beyond the frame in either coordinate), ``non_finite`` (NaN or
    infinite), ``fraction`` (both, over ``num_samples``) and ``farthest`` (the largest finite
    coordinate magnitude, None if no sample is finite)."""
    x = np.asarray(samples, np.float64)
    x = x.reshape(x.shape[0], -1)
    finite = np.all(np.isfinite(x), axis=1)
    outside = finite & np.any(np.abs(x) > extent, axis=1)
    num, num_outside, non_finite = x.shape[0], int(outside.sum()), int((~finite).sum())
    return {
        "num_samples": int(num),
        "outside": num_outside,
        "non_finite": non_finite,
        "fraction": (num_outside + non_finite) / num if num else 0.0,
        "farthest": float(np.max(np.abs(x[finite]))) if finite.any() else None,
        "extent": float(extent),
    }


def _percent(fraction: float) -> str:
    """A fraction as a percentage that is never rounded to 0% (or 100%) when it is not."""
    percent = 100.0 * fraction
    if percent in (0.0, 100.0):
        return f"{percent:.0f}%"
    for decimals in range(1, 8):  # one decimal unless that reads as 0% or 100%
        text = f"{percent:.{decimals}f}"
        if float(text) not in (0.0, 100.0):
            return f"{text}%"
    return f"{percent}%"


def frame_note(stats: dict) -> str:
    """What a sample plot prints under its panels, from ``out_of_frame``'s ``stats``, e.g.
    ``7.6% (763) of the 10000 samples outside the frame [-4.5, 4.5]^2`` and, on a second line,
    ``drawn as x on its edge (farthest coordinate 37.2)``."""
    num, outside, non_finite = stats["num_samples"], stats["outside"], stats["non_finite"]
    frame = f"[-{stats['extent']:g}, {stats['extent']:g}]^2"
    note = (f"{_percent(stats['fraction'])} ({outside + non_finite}) of the {num} samples "
            f"outside the frame {frame}")
    details = []
    if outside:
        details.append(f"drawn as x on its edge (farthest coordinate {stats['farthest']:.3g})")
    if non_finite:
        details.append(f"{non_finite} non-finite, not drawn")
    return note + ("\n" + "; ".join(details) if details else "")


def plot_samples(
    samples: Array, dataset: str, path: str | None = None, title: str = "", max_points=4096
):
    """Two panels: the data density alone, and model samples over it (the first
    ``max_points``). Saved to ``path`` if given (the figure is then closed); returns the figure.

    The frame is ``[-FRAME, FRAME]^2``, which holds the data. A sample outside it is drawn on the
    frame's edge at its clipped position (the direction it left in) as a blue ``x``, and a line
    under the panels gives the fraction of all ``samples`` outside the frame (``frame_note``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = np.asarray(samples)
    stats = out_of_frame(samples, FRAME)
    num_total = samples.shape[0]
    samples = samples[:max_points]
    extent = FRAME
    # sqrt: the tails of narrow modes stay visible next to their peaks.
    density = np.sqrt(_density_image(dataset, extent))
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.8), dpi=110, sharex=True, sharey=True)
    for ax in axes:
        ax.imshow(
            density, origin="lower", extent=(-extent, extent, -extent, extent), cmap="Greys",
            vmin=0.0, vmax=1.5 * density.max(), interpolation="bilinear",
        )
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
    axes[0].set_title(f"{dataset} density", fontsize=9)
    finite = np.all(np.isfinite(samples), axis=1)
    inside = finite & np.all(np.abs(samples) <= extent, axis=1)
    outside = finite & ~inside
    axes[1].scatter(samples[inside, 0], samples[inside, 1], s=0.8, c="tab:red", alpha=0.5,
                    linewidths=0, label="samples")
    if outside.any():
        edge = np.clip(samples[outside], -extent, extent)
        axes[1].scatter(edge[:, 0], edge[:, 1], s=14, marker="x", c="tab:blue", linewidths=0.8,
                        clip_on=False, zorder=3, label="outside the frame (at its edge)")
    shown = (f"the first {len(samples)} of {num_total} model samples" if len(samples) < num_total
             else f"{num_total} model samples")
    axes[1].set_title(shown, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.text(0.5, 0.012, frame_note(stats), ha="center", va="bottom", fontsize=8.5,
             color="tab:blue" if stats["fraction"] else "black")
    fig.tight_layout(rect=(0.0, 0.08, 1.0, 1.0))
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

    @property
    def mixture(self):
        """The data's exact Gaussian mixture (exact denoiser, density), or None."""
        return toy.exact_density(self.dataset)

    def write_samples(self, samples, workdir: str, title: str, ve_denoiser=None,
                      sigma_range=None) -> None:
        """``samples.png``: the samples over the data density."""
        del ve_denoiser, sigma_range  # image evaluators draw a denoising strip with them
        plot_samples(samples, self.dataset, os.path.join(workdir, "samples.png"), title=title)

    def quality(self, samples, key: Array, workdir: str | None = None) -> dict:
        """``sample_quality``, and the fraction of the samples outside the plots' frame."""
        del workdir  # nothing to cache
        result = sample_quality(samples, reference_sampler(self.dataset), key,
                                self.config.num_projections, self.config.repeats)
        result["fraction_outside_plot_frame"] = out_of_frame(samples, FRAME)["fraction"]
        return result

    def periodic(self, samples, folder: str, step: int, tensorboard,
                 title: str | None = None) -> None:
        """During training: ``<folder>/step_<step>.png`` and the same figure in TensorBoard,
        under ``title`` (default ``step <step>``)."""
        import matplotlib.pyplot as plt

        figure = plot_samples(samples, self.dataset, title=title or f"step {step}")
        figure.savefig(os.path.join(folder, f"step_{step:07d}.png"))
        tensorboard.figure(step, "samples", figure)
        plt.close(figure)

    def summary(self, metrics: dict) -> str:
        verdict = "within" if metrics["within_2x_floor"] else "NOT within"
        outside = metrics.get("fraction_outside_plot_frame") or 0.0
        return (
            f"sliced Wasserstein {metrics['swd']:.4f} vs floor {metrics['swd_floor']:.4f} "
            f"(ratio {metrics['swd_ratio']:.2f}, {verdict} 2x)"
            + (f"; {_percent(outside)} of the samples outside the plot's frame" if outside
               else "")
        )
