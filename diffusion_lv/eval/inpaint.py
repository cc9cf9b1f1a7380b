"""Inpainting held-out examples with a trained model (``--mode=inpaint``).

A mask names the unknown part of each example; the known part is the held-out example's own
values, and a conditional sampler over the model's denoiser (``diffusion_lv.conditional``,
docs/conditional.md) completes the rest. What is measured:

* every data set: the RMS error of the completion on the unknown part against the original
  (a completion is a draw from ``p(x_unknown | x_known)``, not its mean: even the exact
  conditional has an error here, so this figure compares methods and models, not with zero);
* 2-D mixtures: the toy evaluator's sliced Wasserstein distance of the completed points to fresh
  exact draws, with its floor. The known coordinates come from the data and the completion from
  the conditional, so for an exact conditional the completed points are distributed as the data;
* digits: the digits classifier's accuracy on the completions against the true labels (and on
  the masked inputs and the originals, for scale), and the Frechet distance in its features.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from diffusion_lv import checks
from diffusion_lv.conditional import ConditionalConfig

# The unknown part of an example: image masks, and the ones that also apply to flat vectors.
IMAGE_MASKS = ("left_half", "right_half", "top_half", "bottom_half", "centre", "random_half")
VECTOR_MASKS = ("left_half", "right_half", "random_half")


@dataclasses.dataclass(frozen=True)
class InpaintConfig:
    """``mask``: the unknown part; ``num_examples``: held-out examples completed (one completion
    each, ``particles`` for the particle filter ``smc``: a group per example); ``conditional``:
    the method and its settings."""

    mask: str = "left_half"
    num_examples: int = 64
    conditional: ConditionalConfig = ConditionalConfig()

    def __post_init__(self):
        checks.choice("mask", self.mask, IMAGE_MASKS)
        checks.number("num_examples", self.num_examples, lo=1, integer=True)
        if self.conditional.method == "smc" and self.copies is None:
            raise ValueError(
                "particles=None is not valid for inpainting with method 'smc': each example is "
                "completed by its own group of particles; valid: an integer >= 1 (the "
                "completions per example, e.g. 8)"
            )

    @property
    def copies(self) -> int | None:
        """Completions per example: the particle filter's group size, else 1."""
        if self.conditional.method != "smc":
            return 1
        return self.conditional.resolved_options["particles"]

    def check_data(self, data_shape: tuple[int, ...]) -> None:
        """A mask the data's shape has (images: every mask; flat vectors: ``VECTOR_MASKS``)."""
        if len(data_shape) == 1:
            checks.choice("mask", self.mask, VECTOR_MASKS)

    @property
    def tag(self) -> str:
        return f"{self.mask}-{self.conditional.method}-nfe{self.conditional.nfe}"


def unknown_mask(name: str, shape: tuple[int, ...], num: int, seed: int = 0) -> np.ndarray:
    """``(num, *shape)`` booleans, True where the value is unknown. Images ``(H, W, C)``: the
    named half, the centre (the middle half of each side), or a random half of the pixels (one
    draw per example, all channels of a pixel together); flat vectors: the first or the last
    half of the coordinates (the larger half is unknown for an odd length), or a random half."""
    if name == "random_half":
        spatial = shape[:-1] if len(shape) == 3 else shape
        draw = np.random.default_rng(seed).random((num, *spatial)) < 0.5
        if len(shape) == 3:
            draw = np.broadcast_to(draw[..., None], (num, *shape))
        return np.array(draw)
    if len(shape) == 1:
        (d,) = shape
        one = np.zeros(d, bool)
        if name == "left_half":
            one[: -(-d // 2)] = True
        elif name == "right_half":
            one[d // 2:] = True
        else:
            checks.choice("mask", name, VECTOR_MASKS)
        return np.broadcast_to(one, (num, d)).copy()
    height, width = shape[:2]
    one = np.zeros(shape, bool)
    if name == "left_half":
        one[:, : width // 2] = True
    elif name == "right_half":
        one[:, width // 2:] = True
    elif name == "top_half":
        one[: height // 2] = True
    elif name == "bottom_half":
        one[height // 2:] = True
    elif name == "centre":
        one[height // 4: height - height // 4, width // 4: width - width // 4] = True
    else:
        checks.choice("mask", name, IMAGE_MASKS)
    return np.broadcast_to(one, (num, *shape)).copy()


def unknown_rmse(completions: np.ndarray, originals: np.ndarray, unknown: np.ndarray) -> float:
    """The RMS difference on the unknown values, over every example."""
    diff = (np.asarray(completions, np.float64) - np.asarray(originals, np.float64))[unknown]
    return float(np.sqrt(np.mean(np.square(diff))))


def digits_scores(completions: np.ndarray, labels: np.ndarray) -> dict:
    """The digits classifier's accuracy against the true labels and the Frechet distance in its
    features (images in [-1, 1], clipped there first as the classifier's inputs are)."""
    from diffusion_lv.eval import digits_features

    x = np.clip(np.asarray(completions, np.float64), -1.0, 1.0)
    predicted = digits_features.classifier().predict(x.reshape(len(x), -1))
    return {"accuracy": float(np.mean(predicted == labels)),
            "frechet_distance": float(abs(digits_features.digits_frechet_distance(x)))}
