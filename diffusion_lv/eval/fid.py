"""FID: the Frechet distance of Gaussians fitted to Inception pool3 features.

Statistics files are pytorch-fid's ``.npz``: ``mu`` (2048,) and ``sigma`` (2048, 2048), the
mean and unbiased covariance of a reference set's features; files written here carry a few
extra entries that describe where they came from (pytorch-fid ignores them). A set of images is
compared with such a file (``eval.fid_reference``) or with statistics computed here from the
data set's own images and cached in the workdir (``reference_stats``).
"""

from __future__ import annotations

import os

import numpy as np

from diffusion_lv.eval import metrics
from diffusion_lv.eval.inception import FEATURE_DIM, FeatureExtractor

REFERENCE_CACHE = "fid_reference_stats.npz"
REFERENCE_CHUNK = 500  # images read and featurised at a time when computing reference stats


def save_stats(path: str, mu, sigma, **metadata) -> str:
    """Write ``mu``, ``sigma`` (and scalar/string ``metadata``) as an ``.npz``, atomically."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp.npz")
    np.savez(temporary, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64),
             **{k: np.asarray(v) for k, v in metadata.items()})
    os.replace(temporary, path)
    return path


def load_stats(path: str, dim: int | None = FEATURE_DIM) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` from a statistics ``.npz`` (pytorch-fid's layout), shapes checked."""
    try:
        with np.load(path, allow_pickle=False) as stats:
            if not {"mu", "sigma"} <= set(stats.files):
                raise ValueError(
                    f"{path} holds {sorted(stats.files)}; FID statistics need 'mu' and 'sigma'"
                )
            mu, sigma = stats["mu"].astype(np.float64), stats["sigma"].astype(np.float64)
    except (OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npz of FID statistics: {err}") from None
    d = mu.shape[0] if mu.ndim == 1 else -1
    if d < 1 or sigma.shape != (d, d) or (dim is not None and d != dim):
        raise ValueError(
            f"{path}: mu {mu.shape} and sigma {sigma.shape} must be ({dim or 'd'},) and "
            f"({dim or 'd'}, {dim or 'd'})"
        )
    return mu, sigma


def read_metadata(path: str) -> dict:
    with np.load(path, allow_pickle=False) as stats:
        return {k: stats[k].item() for k in stats.files if k not in ("mu", "sigma")}


def fid_from_features(features, mu_ref, sigma_ref) -> float:
    return metrics.frechet_distance_from_stats(*metrics.gaussian_statistics(features),
                                               mu_ref, sigma_ref)


def reference_split(image_data) -> str:
    """The data set's test split when it has one, else train."""
    return "test" if "test" in image_data.info.splits else "train"


def reference_stats(image_data, num_images: int, extractor: FeatureExtractor,
                    cache_path: str | None = None, weights: str = "") -> tuple[np.ndarray, ...]:
    """Statistics of the first ``num_images`` images of the reference split (all of it if it
    is smaller), cached at ``cache_path``; a cache made from other images or weights is redone.

    Returns ``(mu, sigma, num_used, split)``.
    """
    from diffusion_lv.data import images as images_lib

    split = reference_split(image_data)
    source = images_lib.open_source(image_data.name, split, image_data.data_dir)
    num = min(num_images, len(source))
    description = {"dataset": image_data.name, "split": split, "num_images": num,
                   "weights": os.path.basename(weights)}
    if cache_path and os.path.exists(cache_path):
        try:
            if read_metadata(cache_path) == description:
                mu, sigma = load_stats(cache_path)
                return mu, sigma, num, split
        except ValueError:
            pass  # unreadable: compute again
    chunk = min(REFERENCE_CHUNK, num)
    batches = images_lib.image_dataset(
        image_data.name, chunk, split=split, shuffle=False, num_epochs=1, drop_remainder=False,
        process_index=0, process_count=1, source=source,
    )
    features = []
    for index in range(len(batches)):
        images = batches[index]["image"][: num - index * chunk]
        if len(images):
            features.append(extractor(images))
    mu, sigma = metrics.gaussian_statistics(np.concatenate(features)[:num])
    if cache_path:
        save_stats(cache_path, mu, sigma, **description)
    return mu, sigma, num, split
