"""Frechet distance of 8x8 digits in the features of a small digits classifier (an FID stand-in).

FID compares Gaussians fitted to Inception features; for the 8x8 digits we use the hidden layer
(64 ReLU units) of a scikit-learn MLP classifier trained once, deterministically, on the train
split (it reaches about 97% test accuracy). The distance of a set of images is measured against
the *test* split, and its floor is the distance of the same number of *train* images: real data
of that size is never closer than the floor, so "within k x the floor" is a scale-free verdict.
Images are ``(n, 8, 8, 1)`` in ``[-1, 1]``, as the pipeline serves them.
"""

from __future__ import annotations

import functools

import numpy as np

from diffusion_lv.data import digits
from diffusion_lv.eval import metrics


def _flatten(images) -> np.ndarray:
    images = np.asarray(images, np.float64)
    if images.shape[1:] != digits.IMAGE_SHAPE:
        raise ValueError(f"digits features need (n, 8, 8, 1) images, got {images.shape}")
    return np.clip(images, -1.0, 1.0).reshape(len(images), -1)


def scaled_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images of a split in ``[-1, 1]`` (the pipeline's scaling, no dequantisation), labels."""
    images, labels = digits.as_array(split)
    scaled = images.astype(np.float64) * (2.0 / (digits.NUM_LEVELS - 1)) - 1.0
    return scaled, labels


@functools.cache
def classifier():
    """The feature network: an MLP (64 hidden units) fitted to the train split, seed 0."""
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    images, labels = scaled_split("train")
    model = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-3, max_iter=600, random_state=0)
    # One BLAS thread: the same weights on every machine, and 1.5 s instead of 25 s on a busy
    # 2-core CPU (multi-threaded BLAS thrashes on these small matrices).
    with threadpool_limits(limits=1):
        return model.fit(_flatten(images), labels)


def features(images) -> np.ndarray:
    """Hidden-layer activations ``relu(x W + b)``, shape ``(n, 64)``."""
    model = classifier()
    return np.maximum(_flatten(images) @ model.coefs_[0] + model.intercepts_[0], 0.0)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """The Frechet distance of the two feature sets' Gaussians (``metrics.frechet_distance``)."""
    return metrics.frechet_distance(feats_a, feats_b)


@functools.cache
def _test_features() -> np.ndarray:
    return features(scaled_split("test")[0])


def digits_frechet_distance(images) -> float:
    """Frechet distance of ``images`` to the test split in classifier features."""
    return frechet_distance(features(images), _test_features())


def digits_frechet_floor(num_images: int = digits.NUM_TRAIN) -> float:
    """The distance of ``num_images`` real train images to the test split: the target's floor."""
    if not 2 <= num_images <= digits.NUM_TRAIN:
        raise ValueError(f"num_images={num_images} must be in [2, {digits.NUM_TRAIN}]")
    return digits_frechet_distance(scaled_split("train")[0][:num_images])
