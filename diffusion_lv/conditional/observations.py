"""What is known about a sample: known coordinates (inpainting) or a noisy observation.

* ``Inpainting(mask, values)``: ``x[mask] = values[mask]`` exactly. ``mask`` is boolean and
  broadcasts against the batch ``(batch, *shape)`` (one pattern for all, or one per example);
  ``values`` has the batch's shape and is read only where ``mask`` is True. Values are in data
  space, which is the canonical (VE) space at ``sigma = 0`` for every schedule (``alpha(0) = 1``).
* ``Observation(operator, y, noise_std)``: ``y = operator(x) + noise_std * N(0, I)`` with a
  differentiable ``operator`` mapping a batch ``(batch, *shape)`` to ``(batch, ...)``. The linear
  operators below (mask, blur, downsample) cover inpainting, deblurring and super-resolution;
  ``operator_matrix`` writes a linear one as a matrix for the exact oracle posterior.

Images are read as ``(height, width)`` or ``(height, width, channels)`` per example; a flat
vector of ``h * w`` coordinates can be given an image layout by ``image_shape``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array


@struct.dataclass
class Inpainting:
    mask: Array  # bool, broadcastable to the batch; True: known
    values: Array  # (batch, *shape), read where mask is True

    def paste(self, z: Array, known: Array | None = None) -> Array:
        """``z`` with the known coordinates replaced by ``known`` (default: the clean values)."""
        return jnp.where(self.mask, self.values if known is None else known, z)

    def as_observation(self, noise_std: float = 0.0) -> Observation:
        """The same knowledge as ``y = mask * x`` (unobserved entries read as 0)."""
        operator = mask_operator(self.mask)
        return Observation(operator, operator(self.values), noise_std)


@struct.dataclass
class Observation:
    operator: Callable[[Array], Array] = struct.field(pytree_node=False)
    y: Array  # operator(x) + noise
    noise_std: float = struct.field(pytree_node=False, default=0.0)

    def residual(self, x: Array) -> Array:
        return self.y - self.operator(x)


def check_inpainting(condition, shape) -> None:
    """A ValueError unless ``condition`` is an Inpainting matching a batch of ``shape``."""
    if not isinstance(condition, Inpainting):
        raise ValueError(
            f"condition={type(condition).__name__} is not valid for a masked "
            "sampler; valid: an Inpainting(mask, values)"
        )
    if jnp.asarray(condition.mask).dtype != jnp.bool_:
        raise ValueError(f"mask must be boolean, got dtype {jnp.asarray(condition.mask).dtype}")
    if tuple(condition.values.shape) != tuple(shape):
        raise ValueError(
            f"values must have the batch's shape {tuple(shape)}, "
            f"got {tuple(condition.values.shape)}"
        )
    try:
        np.broadcast_shapes(tuple(condition.mask.shape), tuple(shape))
    except ValueError:
        raise ValueError(
            f"mask of shape {tuple(condition.mask.shape)} does not broadcast to "
            f"the batch {tuple(shape)}"
        ) from None


def check_observation(condition) -> Observation:
    """An Observation (an Inpainting is read as its noiseless mask observation)."""
    if isinstance(condition, Inpainting):
        return condition.as_observation()
    if not isinstance(condition, Observation):
        raise ValueError(
            f"condition={type(condition).__name__} is not valid; valid: an "
            "Observation(operator, y, noise_std) or an Inpainting(mask, values)"
        )
    if not (isinstance(condition.noise_std, int | float) and condition.noise_std >= 0):
        raise ValueError(f"noise_std={condition.noise_std!r} is not valid; valid: a number >= 0")
    return condition


# -- linear operators -----------------------------------------------------------------------


def mask_operator(mask) -> Callable[[Array], Array]:
    """``x -> mask * x``: unobserved entries are 0 in every ``y`` and carry no information."""
    return lambda x: jnp.where(mask, x, jnp.zeros_like(x))


def _as_image(x: Array, image_shape) -> Array:
    return x.reshape(x.shape[0], image_shape[0], image_shape[1], -1)


def _check_image_shape(image_shape) -> tuple[int, ...]:
    image_shape = tuple(image_shape)
    if len(image_shape) not in (2, 3) or any(not isinstance(n, int) or n < 1 for n in image_shape):
        raise ValueError(f"image_shape={image_shape!r} is not valid; valid: (h, w) or (h, w, c)")
    return image_shape


def blur_matrix(size: int, std: float) -> np.ndarray:
    """Gaussian blur along one axis, each row normalised (edges average what is inside)."""
    if not std > 0:
        raise ValueError(f"std={std!r} is not valid; valid: a number > 0")
    idx = np.arange(size)
    weights = np.exp(-0.5 * np.square((idx[:, None] - idx[None]) / std))
    return weights / weights.sum(axis=1, keepdims=True)


def pool_matrix(size: int, factor: int) -> np.ndarray:
    """Averages of ``factor`` consecutive entries along one axis."""
    if not (isinstance(factor, int) and factor >= 1 and size % factor == 0):
        raise ValueError(f"factor={factor!r} is not valid; valid: an integer >= 1 dividing {size}")
    return np.kron(np.eye(size // factor), np.full((1, factor), 1.0 / factor))


def _separable(rows: np.ndarray, cols: np.ndarray, image_shape, flat: bool):
    def apply(x):
        image = _as_image(x, image_shape)
        out = jnp.einsum("ih,bhwc,jw->bijc", rows.astype(x.dtype), image, cols.astype(x.dtype))
        return out.reshape(x.shape[0], -1) if flat else out

    return apply


def blur_operator(image_shape, std: float, flat: bool = False) -> Callable[[Array], Array]:
    """Separable Gaussian blur of width ``std`` pixels; ``flat``: return ``(batch, h * w * c)``."""
    h, w = _check_image_shape(image_shape)[:2]
    return _separable(blur_matrix(h, std), blur_matrix(w, std), image_shape, flat)


def downsample_operator(image_shape, factor: int, flat: bool = False):
    """Average pooling by ``factor`` in both directions (super-resolution's observation)."""
    h, w = _check_image_shape(image_shape)[:2]
    return _separable(pool_matrix(h, factor), pool_matrix(w, factor), image_shape, flat)


def operator_matrix(operator: Callable[[Array], Array], shape) -> np.ndarray:
    """The matrix ``A`` of a linear operator on one example of ``shape``: ``y.ravel() = A x``."""
    dim = math.prod(shape)
    basis = jnp.eye(dim, dtype=jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    columns = operator(basis.reshape(dim, *shape)).reshape(dim, -1)
    return np.asarray(columns, np.float64).T
