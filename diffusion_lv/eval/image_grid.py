"""Pictures of image models: sample grids and a denoising strip, written as PNG (Pillow).

Images are NHWC floats in ``[-1, 1]`` (the data pipeline's convention), with 1 or 3 channels;
out-of-range values are clipped. Small images (the 8x8 digits) are enlarged by an integer
nearest-neighbour factor so that pixels stay sharp. A ``title`` (what was sampled: step, sampler,
NFE, parameters) is drawn on a band above the picture, wrapped to its width, and stored in the
PNG's ``Title`` text field.

The denoising strip shows one image at a few noise levels ``sigma_ve``: the top row is the noisy
state and the bottom row the model's denoiser ``D = E[x0 | x_t]`` at that state. The noisy state
is drawn in VP coordinates, ``x = (x0 + sigma_ve eps) / sqrt(1 + sigma_ve^2)``, which stays in
range at every noise level (every schedule's state at that level is a rescaling of it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def to_uint8(images) -> np.ndarray:
    """``[-1, 1]`` floats to ``uint8`` pixels (clipped, rounded)."""
    pixels = (np.asarray(images, np.float32) + 1.0) * 127.5
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def image_grid(
    images, num_cols: int | None = None, padding: int = 1, scale: int = 1, pad_value: int = 255
) -> np.ndarray:
    """Tile ``(n, H, W, C)`` images into one ``uint8`` picture ``(rows, cols, C)``.

    ``num_cols`` defaults to a near-square grid; ``scale`` enlarges every pixel to
    ``scale x scale``; ``padding`` pixels of ``pad_value`` separate (and surround) the tiles.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"image_grid needs (n, H, W, C) images with C in (1, 3), got "
                         f"{images.shape}")
    if scale < 1 or padding < 0:
        raise ValueError(f"need scale >= 1 and padding >= 0, got scale={scale}, "
                         f"padding={padding}")
    n, h, w, c = images.shape
    num_cols = num_cols or math.ceil(math.sqrt(n))
    num_rows = math.ceil(n / num_cols)
    tiles = to_uint8(images)
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    grid = np.full(
        (num_rows * (h + padding) + padding, num_cols * (w + padding) + padding, c),
        pad_value, np.uint8,
    )
    for i in range(n):
        r, col = divmod(i, num_cols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = tiles[i]
    return grid


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1 with FreeType)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()  # the fixed bitmap font


def _wrap(text: str, width: int, measure) -> list[str]:
    """``text`` in lines of at most ``width`` pixels, broken at spaces (and at ``\n``); a word
    wider than ``width`` gets a line of its own."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and measure(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def add_title(picture: np.ndarray, title: str, font_size: int = 11, pad_value: int = 255,
              margin: int = 3) -> np.ndarray:
    """``picture`` (``uint8`` ``(H, W, C)``) below a band of ``pad_value`` holding ``title`` in
    black, wrapped to the picture's width (one more line per ``\n``)."""
    from PIL import Image, ImageDraw

    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("L", (1, 1))).textlength
    width = picture.shape[1]
    lines = _wrap(title, width - 2 * margin, lambda text: measure(text, font=font))
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (font_size, 2)
    line_height = ascent + descent + 1
    band = Image.new("L", (width, margin * 2 + line_height * len(lines)), pad_value)
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        draw.text((margin, margin + i * line_height), line, fill=0, font=font)
    band = np.repeat(np.asarray(band, np.uint8)[..., None], picture.shape[-1], axis=-1)
    return np.concatenate([band, picture], axis=0)


def save_png(picture: np.ndarray, path: str, title: str | None = None) -> str:
    """Write a ``uint8`` ``(H, W, C)`` picture as PNG (grey for one channel), with ``title`` in
    its ``Title`` text field if given; returns the path."""
    from PIL import Image, PngImagePlugin

    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    info = None
    if title:
        info = PngImagePlugin.PngInfo()
        info.add_itxt("Title", title)
    Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(
        path, pnginfo=info
    )
    return path


def auto_scale(image_size: int, target: int = 32) -> int:
    """Enlargement so that a tile is at least ``target`` pixels wide (4 for 8x8 digits)."""
    return max(1, math.ceil(target / image_size))


def save_image_grid(images, path: str, num_cols: int | None = None, scale: int | None = None,
                    title: str | None = None):
    """``image_grid`` (+ ``add_title`` if ``title``) + ``save_png``; ``scale`` defaults to
    ``auto_scale`` of the image size."""
    images = np.asarray(images)
    scale = auto_scale(images.shape[2]) if scale is None else scale
    picture = image_grid(images, num_cols, scale=scale)
    if title:
        picture = add_title(picture, title)
    return save_png(picture, path, title)


def denoising_strip(
    ve_denoiser: Callable[[Array, Array], Array],
    image: Array,
    sigmas: Sequence[float],
    key: Array,
) -> np.ndarray:
    """Noisy states (top row) and denoised estimates (bottom row) of one image.

    ``ve_denoiser(z, sigma_ve)`` is the model's denoiser in canonical VE coordinates
    (``convert.as_ve_denoiser``); ``image`` is ``(H, W, C)`` in ``[-1, 1]``. One noise draw is
    shared by all levels, so the strip shows the same sample path at growing noise. Returns the
    images ``(2 * len(sigmas), H, W, C)``, ready for ``image_grid(..., num_cols=len(sigmas))``.
    """
    sigmas = jnp.asarray(sigmas, jnp.float32)
    x0 = jnp.asarray(image, jnp.float32)[None]
    eps = jax.random.normal(key, x0.shape, jnp.float32)
    z = x0 + sigmas[:, None, None, None] * eps  # (levels, H, W, C)
    denoised = ve_denoiser(z, sigmas)
    noisy_vp = z / jnp.sqrt(1.0 + jnp.square(sigmas))[:, None, None, None]
    return np.concatenate([np.asarray(noisy_vp), np.asarray(denoised)])


def save_denoising_strip(
    ve_denoiser: Callable[[Array, Array], Array],
    image: Array,
    path: str,
    sigmas: Sequence[float] = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0, 80.0),
    key: Array | None = None,
    scale: int | None = None,
    title: str | None = None,
) -> str:
    """Write the denoising strip of ``image`` as a PNG (two rows, one column per level), under
    ``title`` (if given) and a line naming the levels."""
    key = jax.random.PRNGKey(0) if key is None else key
    strip = denoising_strip(ve_denoiser, image, sigmas, key)
    levels = ", ".join(f"{s:g}" for s in sigmas)
    label = f"noisy (top) and denoised (bottom) at sigma_ve = {levels}"
    label = f"{title}\n{label}" if title else label
    return save_image_grid(strip, path, num_cols=len(sigmas), scale=scale, title=label)
