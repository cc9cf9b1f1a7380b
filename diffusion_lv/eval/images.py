"""Evaluation outputs of image models: sample grids, a denoising strip, and the digits metric.

main.py calls these for image data sets (``experiment.image_data`` set) where it draws scatter
plots and sliced Wasserstein distances for the 2-D sets:

* ``write_grid``: the first ``GRID_SIZE`` samples as one PNG (``image_grid.py``);
* ``write_denoising_strip``: one test image noised to a few levels and denoised by the model;
* ``sample_quality``: for ``digits`` the Frechet distance in digits-classifier features against
  the test split and its floor (train images of the same number); with ``eval.inception_weights``
  (pytorch-fid's Inception file) also FID, for any image data set (``fid.py``).
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np

from diffusion_lv import convert
from diffusion_lv.eval import image_grid
from diffusion_lv.parameterization import bind

GRID_SIZE = 100  # 10 x 10 tiles
STRIP_SIGMAS = (0.02, 0.1, 0.3, 0.6, 1.0, 2.0, 5.0, 20.0, 80.0)


def write_grid(samples, path: str) -> str:
    samples = np.asarray(samples)[:GRID_SIZE]
    return image_grid.save_image_grid(samples, path, num_cols=math.ceil(math.sqrt(len(samples))))


def periodic_grid(samples, folder: str, step: int, tensorboard) -> str:
    """During training: ``<folder>/step_<step>.png`` and the same grid in TensorBoard."""
    samples = np.asarray(samples)[:GRID_SIZE]
    picture = image_grid.image_grid(
        samples, math.ceil(math.sqrt(len(samples))), scale=image_grid.auto_scale(samples.shape[2])
    )
    if getattr(tensorboard, "writer", None) is not None:
        tensorboard.writer.add_image("samples", picture, step, dataformats="HWC")
    return image_grid.save_png(picture, os.path.join(folder, f"step_{step:07d}.png"))


def write_denoising_strip(experiment, params, path: str, key=None) -> str:
    """The strip for the first eval image, noise levels within the model's schedule range."""
    parameterization = experiment.parameterization
    schedule = parameterization.schedule
    sigmas = [s for s in STRIP_SIGMAS if schedule.sigma_ve_min <= s <= schedule.sigma_ve_max]
    model_fn = parameterization.model_fn(bind(experiment.network.apply, params))
    denoiser = jax.jit(convert.as_ve_denoiser(
        model_fn, parameterization.prediction, schedule, parameterization.sigma_data
    ))
    image = experiment.image_data.examples(1)[0]
    return image_grid.save_denoising_strip(denoiser, image, path, sigmas, key)


def sample_quality(samples, experiment, workdir: str | None = None) -> dict:
    """Metrics of image samples: digits Frechet distance and floor where available, and FID
    when ``eval.inception_weights`` is set (reference statistics cached in ``workdir``)."""
    samples = np.asarray(samples, np.float64)
    finite = bool(np.all(np.isfinite(samples)))
    result = {
        "num_samples": int(samples.shape[0]),
        "samples_finite": finite,
        "sample_mean": float(np.mean(samples)) if finite else None,
        "sample_std": float(np.std(samples)) if finite else None,
    }
    if experiment.dataset == "digits" and finite:
        from diffusion_lv.data import digits, digits_features

        n = min(samples.shape[0], digits.NUM_TRAIN)
        distance = digits_features.digits_frechet_distance(np.clip(samples[:n], -1.0, 1.0))
        floor = digits_features.digits_frechet_floor(n)
        result.update({
            "frechet_digits": distance,
            "frechet_digits_floor": floor,
            "frechet_ratio": distance / floor,
            "within_3x_floor": bool(distance <= 3.0 * floor),
        })
    if experiment.eval.inception_weights and finite:
        result.update(inception_fid(samples, experiment, workdir))
    return result


def inception_fid(samples, experiment, workdir: str | None = None) -> dict:
    """FID of ``samples`` against ``eval.fid_reference`` or the data set's own statistics."""
    from diffusion_lv.eval import fid, inception

    weights = experiment.eval.inception_weights
    extractor = inception.FeatureExtractor.from_file(weights)
    if experiment.eval.fid_reference:
        mu, sigma = fid.load_stats(experiment.eval.fid_reference)
        reference = experiment.eval.fid_reference
    else:
        cache = None if workdir is None else os.path.join(workdir, fid.REFERENCE_CACHE)
        mu, sigma, num, split = fid.reference_stats(
            experiment.image_data, experiment.eval.num_samples, extractor, cache, weights
        )
        reference = f"{experiment.dataset}/{split}: {num} images"
    return {
        "fid": fid.fid_from_features(extractor(samples), mu, sigma),
        "fid_num_samples": int(samples.shape[0]),
        "fid_reference": reference,
    }


def summary_line(metrics: dict) -> str:
    """The console verdict main.py prints after training or eval."""
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
