"""scikit-learn's 8x8 handwritten digits as a random-access image source (no download).

The 1797 images ship inside scikit-learn. A fixed permutation (seed 0, independent of any run)
splits them into ``train`` (the first 1500) and ``test`` (the remaining 297); every run and every
process sees the same split. Pixels are integers 0..16 (17 grey levels), stored as ``uint8`` of
shape ``(8, 8, 1)``; ``images.py`` scales them to ``[-1, 1]`` like any other data set.

A source has the interface of ``tfds.data_source(...)`` that the grain pipeline reads: ``len()``
and ``source[i] -> {'image': uint8 (8, 8, 1), 'label': int64}``.
"""

from __future__ import annotations

import functools

import numpy as np

NUM_TRAIN = 1500
NUM_LEVELS = 17  # pixel values 0..16
IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 10
SPLITS = ("train", "test")


@functools.cache
def _split_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    # Imported here: scikit-learn is only needed by the digits.
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    chosen = order[:NUM_TRAIN] if split == "train" else order[NUM_TRAIN:]
    images = digits.images[chosen].astype(np.uint8)[..., None]
    labels = digits.target[chosen].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


class DigitsSource:
    """Random-access source of one split of the digits (``train`` or ``test``)."""

    def __init__(self, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"unknown digits split {split!r}; valid choices: {list(SPLITS)}")
        self.split = split
        self.images, self.labels = _split_arrays(split)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"image": self.images[index], "label": self.labels[index]}

    def __repr__(self) -> str:
        return f"DigitsSource(split={self.split!r}, num_records={len(self)})"


def as_array(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """All images of a split as ``uint8 (n, 8, 8, 1)`` and labels ``int64 (n,)`` (read-only)."""
    source = DigitsSource(split)
    return source.images, source.labels
