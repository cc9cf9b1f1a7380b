"""Evaluation of image data sets: sample grids, a denoising strip, the digits metric and FID.

``ImageEvaluator`` has the interface of ``toy.ToyEvaluator``; a run picks one of the two once
(experiment.py) and the post-training code (evaluate.py) never asks which it has.

* ``write_grid``: the first ``GRID_SIZE`` samples as one PNG (``image_grid.py``) under a title
  saying what they are (step, sampler, NFE, parameters);
* ``write_denoising_strip``: one test image noised to a few levels and denoised by the model;
* ``sample_quality``: for ``digits`` the Frechet distance in digits-classifier features against
  the test split and its floor (train images of the same number); with ``eval.inception_weights``
  (pytorch-fid's Inception file) also FID, for any image data set (``fid.py``).
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np

from diffusion_lv.data.images import ImageData
from diffusion_lv.eval import image_grid
from diffusion_lv.eval.config import EvalConfig

GRID_SIZE = 100  # 10 x 10 tiles
STRIP_SIGMAS = (0.02, 0.1, 0.3, 0.6, 1.0, 2.0, 5.0, 20.0, 80.0)


def grid_title(title: str | None, num_shown: int, num_samples: int) -> str | None:
    """``title`` and how many of the samples the grid shows (None without a title)."""
    if not title:
        return None
    shown = (f"the first {num_shown} of {num_samples} samples" if num_shown < num_samples
             else f"{num_samples} samples")
    return f"{title}; {shown}"


def write_grid(samples, path: str, title: str | None = None) -> str:
    """The first ``GRID_SIZE`` samples as one PNG, under ``title`` (e.g. ``"digits: step 400,
    euler 20 NFE, ema_0.999 params"``) and how many of the samples it shows."""
    samples = np.asarray(samples)
    shown = samples[:GRID_SIZE]
    return image_grid.save_image_grid(shown, path, num_cols=math.ceil(math.sqrt(len(shown))),
                                      title=grid_title(title, len(shown), len(samples)))


def periodic_grid(samples, folder: str, step: int, tensorboard, title: str | None = None) -> str:
    """During training: ``<folder>/step_<step>.png`` and the same grid in TensorBoard, under
    ``title`` (default ``step <step>``)."""
    samples = np.asarray(samples)
    shown = samples[:GRID_SIZE]
    picture = image_grid.image_grid(
        shown, math.ceil(math.sqrt(len(shown))), scale=image_grid.auto_scale(shown.shape[2])
    )
    title = grid_title(title or f"step {step}", len(shown), len(samples))
    picture = image_grid.add_title(picture, title)
    if getattr(tensorboard, "writer", None) is not None:
        tensorboard.writer.add_image("samples", picture, step, dataformats="HWC")
    return image_grid.save_png(picture, os.path.join(folder, f"step_{step:07d}.png"), title)


def write_denoising_strip(ve_denoiser, image, sigma_range, path: str, key=None,
                          title: str | None = None) -> str:
    """The strip for one image at the strip's noise levels inside ``sigma_range``
    (the model schedule's ``(sigma_ve_min, sigma_ve_max)``), under ``title`` and its levels."""
    lo, hi = sigma_range
    sigmas = [s for s in STRIP_SIGMAS if lo <= s <= hi]
    return image_grid.save_denoising_strip(jax.jit(ve_denoiser), image, path, sigmas, key,
                                           title=title)


def sample_quality(samples, dataset: str, config: EvalConfig, image_data: ImageData | None,
                   workdir: str | None = None) -> dict:
    """Metrics of image samples: digits Frechet distance and floor where available, and FID
    when ``config.inception_weights`` is set (reference statistics cached in ``workdir``)."""
    samples = np.asarray(samples, np.float64)
    finite = bool(np.all(np.isfinite(samples)))
    result = {
        "num_samples": int(samples.shape[0]),
        "samples_finite": finite,
        "sample_mean": float(np.mean(samples)) if finite else None,
        "sample_std": float(np.std(samples)) if finite else None,
    }
    if dataset == "digits" and finite:
        from diffusion_lv.data import digits
        from diffusion_lv.eval import digits_features

        n = min(samples.shape[0], digits.NUM_TRAIN)
        distance = digits_features.digits_frechet_distance(np.clip(samples[:n], -1.0, 1.0))
        floor = digits_features.digits_frechet_floor(n)
        result.update({
            "frechet_digits": distance,
            "frechet_digits_floor": floor,
            "frechet_ratio": distance / floor,
            "within_3x_floor": bool(distance <= 3.0 * floor),
        })
    if config.inception_weights and finite:
        result.update(inception_fid(samples, config, image_data, workdir))
    return result


def inception_fid(samples, config: EvalConfig, image_data: ImageData,
                  workdir: str | None = None) -> dict:
    """FID of ``samples`` against ``config.fid_reference`` or the data set's own statistics."""
    from diffusion_lv.eval import fid, inception

    weights = config.inception_weights
    extractor = inception.FeatureExtractor.from_file(weights)
    if config.fid_reference:
        mu, sigma = fid.load_stats(config.fid_reference)
        reference = config.fid_reference
    else:
        cache = None if workdir is None else os.path.join(workdir, fid.REFERENCE_CACHE)
        mu, sigma, num, split = fid.reference_stats(
            image_data, config.num_samples, extractor, cache, weights
        )
        reference = f"{image_data.name}/{split}: {num} images"
    return {
        "fid": fid.fid_from_features(extractor(samples), mu, sigma),
        "fid_num_samples": int(samples.shape[0]),
        "fid_reference": reference,
    }


def summary_line(metrics: dict) -> str:
    """The console verdict after training or eval."""
    fid = (f"; FID {metrics['fid']:.2f} ({metrics['fid_num_samples']} samples vs "
           f"{metrics['fid_reference']})" if "fid" in metrics else "")
    if "frechet_digits" in metrics:
        verdict = "within" if metrics["within_3x_floor"] else "NOT within"
        return (
            f"digits Frechet distance {metrics['frechet_digits']:.3f} vs floor "
            f"{metrics['frechet_digits_floor']:.3f} (ratio {metrics['frechet_ratio']:.2f}, "
            f"{verdict} 3x){fid}"
        )
    return f"{metrics['num_samples']} samples (finite: {metrics['samples_finite']}){fid}"


@dataclasses.dataclass(frozen=True)
class ImageEvaluator:
    """Evaluates models of an image data set (the pipeline's eval split is the reference)."""

    data: ImageData
    config: EvalConfig

    @property
    def data_shape(self) -> tuple[int, int, int]:
        return self.data.data_shape

    @property
    def num_levels(self) -> int:
        """Pixel levels the NLL dequantises to (256, or 17 for digits)."""
        return self.data.info.num_levels

    def held_out(self, num: int, key) -> tuple[np.ndarray, str]:
        """The eval split's first ``num`` images (all of them if it has fewer)."""
        del key  # reference images are the split's first ones, not a random draw
        available = self.data.num_examples(self.data.eval_split)
        return self.data.examples(min(num, available)), f"{self.data.name}/{self.data.eval_split}"

    def true_nll(self, data, schedule) -> None:
        return None  # no image set has a known density

    mixture = None  # nor an exact denoiser

    def write_samples(self, samples, workdir: str, title: str, ve_denoiser=None,
                      sigma_range=None) -> None:
        """``samples.png`` (a grid under ``title``: step, sampler, NFE, parameters) and, given
        the model's denoiser ``D(z, sigma_ve)`` and its schedule's noise range,
        ``denoising.png`` for the first eval image."""
        write_grid(samples, os.path.join(workdir, "samples.png"), title=title)
        if ve_denoiser is not None:
            write_denoising_strip(ve_denoiser, self.data.examples(1)[0], sigma_range,
                                  os.path.join(workdir, "denoising.png"), title=title)

    def quality(self, samples, key, workdir: str | None = None) -> dict:
        del key  # the references are fixed splits
        return sample_quality(samples, self.data.name, self.config, self.data, workdir)

    def periodic(self, samples, folder: str, step: int, tensorboard,
                 title: str | None = None) -> None:
        periodic_grid(samples, folder, step, tensorboard, title)

    def summary(self, metrics: dict) -> str:
        return summary_line(metrics)
