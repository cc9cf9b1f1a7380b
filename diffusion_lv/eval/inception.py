"""The FID Inception-v3 (TensorFlow's 2015-12-05 graph, as ported by pytorch-fid) in Flax.

FID numbers in the literature (TTUR, pytorch-fid, clean-fid, EDM) come from one network: the
Inception-v3 graph released by TensorFlow in December 2015, whose pool3 layer gives 2048
features. pytorch-fid ports it to PyTorch as torchvision's ``Inception3`` (1008 classes, no
auxiliary head) with four patched blocks that reproduce the TensorFlow graph: the pool branch of
the A, C and first E blocks averages over the valid pixels only (``count_include_pad=False``),
and the last E block max-pools in its pool branch. Every convolution has no bias and is followed
by batch norm (``eps = 1e-3``, running statistics) and a ReLU.

Conventions (the pipeline's): images are ``(n, H, W, C)`` in ``[-1, 1]``, ``C`` in {1, 3}
(grayscale is repeated to RGB), clipped to ``[-1, 1]``, then resized to 299x299 the way
pytorch-fid does (``F.interpolate(..., mode='bilinear', align_corners=False)``, no
antialiasing, also when shrinking: :func:`bilinear_resize_matrix`). pytorch-fid maps ``[0, 1]``
images to ``[-1, 1]`` after the resize; both maps are affine, so the network sees the same input.

Module and parameter names follow the PyTorch ``state_dict`` (``Mixed_6b.branch7x7_2.conv.weight``
is ``params['Mixed_6b']['branch7x7_2']['conv']['kernel']``), so weights map one to one:
:func:`variables_from_state_dict`, :func:`load_variables` (a torch file, read without torch,
or an ``.npz`` of the same keys). :class:`FeatureExtractor` runs the network in fixed-size
batches (the last one padded): one compilation per image shape serves any number of images.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from diffusion_lv.eval import torch_checkpoint

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILE
)
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008  # the 2015 graph's classifier: 1000 ImageNet classes and 8 unused
BATCH_NORM_EPS = 1e-3
DEFAULT_BATCH_SIZE = 50  # pytorch-fid's default


def _pad(height: int, width: int):
    return ((height, height), (width, width))


class BasicConv(nn.Module):
    """Convolution (no bias), batch norm with running statistics, ReLU."""

    features: int
    kernel: tuple[int, int] = (1, 1)
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, self.kernel, self.strides, _pad(*self.padding),
                    use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BATCH_NORM_EPS, name="bn")(x)
        return nn.relu(x)


def _avg_pool_valid(x):
    """3x3, stride 1, padding 1, averaging only over pixels inside the image (TF's SAME pool)."""
    return nn.avg_pool(x, (3, 3), (1, 1), _pad(1, 1), count_include_pad=False)


def _max_pool(x, strides: int, padding: int = 0):
    return nn.max_pool(x, (3, 3), (strides, strides), _pad(padding, padding))


class InceptionA(nn.Module):  # Mixed_5b-d, 35x35
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, name="branch1x1")(x)
        b5 = BasicConv(48, name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, name="branch_pool")(_avg_pool_valid(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):  # Mixed_6a: 35x35 -> 17x17
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = BasicConv(64, name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool(x, 2)], axis=-1)


class InceptionC(nn.Module):  # Mixed_6b-e, 17x17, factorised 7x7 convolutions
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv(192, name="branch1x1")(x)
        b7 = BasicConv(c7, name="branch7x7_1")(x)
        b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv(c7, name="branch7x7dbl_1")(x)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, name="branch_pool")(_avg_pool_valid(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):  # Mixed_7a: 17x17 -> 8x8
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(192, name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool(x, 2)], axis=-1)


class InceptionE(nn.Module):  # Mixed_7b (average pool branch), Mixed_7c (max pool branch)
    max_pool_branch: bool

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(320, name="branch1x1")(x)
        b3 = BasicConv(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([
            BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
        ], axis=-1)
        bd = BasicConv(448, name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([
            BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
        ], axis=-1)
        # The 2015 graph max-pools here (the Inception paper and torchvision average).
        pooled = _max_pool(x, 1, padding=1) if self.max_pool_branch else _avg_pool_valid(x)
        bp = BasicConv(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """``(n, H, W, 3)`` network input (already resized, in ``[-1, 1]``) -> ``(pool3, logits)``:
    pool3 ``(n, 2048)`` (the FID features) and the unused classifier's logits ``(n, 1008)``."""

    @nn.compact
    def __call__(self, x):
        x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool(x, 2)
        x = BasicConv(80, name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool(x, 2)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, channels in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                               ("Mixed_6e", 192)):
            x = InceptionC(channels, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(max_pool_branch=False, name="Mixed_7b")(x)
        x = InceptionE(max_pool_branch=True, name="Mixed_7c")(x)
        pool3 = jnp.mean(x, axis=(1, 2))
        return pool3, nn.Dense(NUM_CLASSES, name="fc")(pool3)


# -- input: grayscale to RGB, pytorch-fid's resize ------------------------------------------


@functools.cache
def bilinear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``(out_size, in_size)`` weights of ``F.interpolate(mode='bilinear', align_corners=False)``
    along one axis: output pixel ``o`` samples the input at ``(o + 1/2) in/out - 1/2`` (clamped
    at 0) between its two neighbours (the last pixel repeats), with no antialiasing filter."""
    source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    lower = np.minimum(np.floor(source).astype(int), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    frac = source - lower
    weights = np.zeros((out_size, in_size))
    np.add.at(weights, (np.arange(out_size), lower), 1.0 - frac)
    np.add.at(weights, (np.arange(out_size), upper), frac)
    return weights.astype(np.float32)


def check_images(images) -> tuple[int, ...]:
    shape = tuple(np.shape(images))
    if len(shape) != 4 or shape[0] < 1 or shape[-1] not in (1, 3) or min(shape[1:3]) < 1:
        raise ValueError(
            f"images must be (n >= 1, H, W, C) with C in (1, 3), in [-1, 1]; got shape {shape}"
        )
    return shape


def preprocess(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """``(n, H, W, C)`` in ``[-1, 1]`` -> ``(n, size, size, 3)`` float32, as pytorch-fid does."""
    check_images(images)
    x = jnp.clip(jnp.asarray(images, jnp.float32), -1.0, 1.0)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    rows = jnp.asarray(bilinear_resize_matrix(x.shape[1], size))
    cols = jnp.asarray(bilinear_resize_matrix(x.shape[2], size))
    precision = jax.lax.Precision.HIGHEST  # an exact linear map: no reduced-precision matmul
    x = jnp.einsum("oh,nhwc->nowc", rows, x, precision=precision)
    return jnp.einsum("pw,nowc->nopc", cols, x, precision=precision)


# -- weights: torch state dict <-> Flax variables -------------------------------------------


def _torch_key(collection: str, path: tuple[str, ...], leaf_shape: tuple[int, ...]) -> str:
    *modules, leaf = path
    name = {
        ("params", "kernel"): "weight",
        ("params", "scale"): "weight",
        ("params", "bias"): "bias",
        ("batch_stats", "mean"): "running_mean",
        ("batch_stats", "var"): "running_var",
    }[(collection, leaf)]
    return ".".join([*modules, name])


def _to_torch_layout(array: np.ndarray) -> np.ndarray:
    """Flax conv kernel (kh, kw, in, out) -> torch (out, in, kh, kw); dense (in, out) -> (out,
    in); vectors unchanged."""
    if array.ndim == 4:
        return array.transpose(3, 2, 0, 1)
    return array.T if array.ndim == 2 else array


def _from_torch_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    return array.T if array.ndim == 2 else array


@functools.cache
def _variable_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
    """``(collection, *module path, leaf) -> shape`` of the network's variables (no compile)."""
    shapes = jax.eval_shape(
        FIDInceptionV3().init, jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3), jnp.float32)
    )
    return {path: tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(shapes).items()}


@functools.cache
def state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """The pytorch-fid state dict's keys and shapes (``num_batches_tracked`` left out)."""
    return {
        _torch_key(path[0], path[1:], shape): _to_torch_layout(np.empty(shape, np.int8)).shape
        for path, shape in _variable_shapes().items()
    }


def variables_from_state_dict(state_dict: dict) -> dict:
    """Flax ``{'params', 'batch_stats'}`` from a pytorch-fid state dict (float32 arrays).

    Every key and shape is checked: a missing, extra or mis-shaped key raises a ValueError
    naming it. ``*.num_batches_tracked`` (a training counter of batch norm) may be present.
    """
    expected = state_dict_shapes()
    counters = {k for k in state_dict if k.endswith(".num_batches_tracked")}
    bn_modules = {k.rsplit(".", 1)[0] for k in expected if k.endswith(".running_mean")}
    extra = sorted(set(state_dict) - set(expected) - counters)
    extra += sorted(k for k in counters if k.rsplit(".", 1)[0] not in bn_modules)
    missing = sorted(set(expected) - set(state_dict))
    if missing or extra:
        raise ValueError(
            f"the state dict does not match the FID Inception network: missing keys "
            f"{missing[:10]}{' ...' if len(missing) > 10 else ''}, unexpected keys "
            f"{extra[:10]}{' ...' if len(extra) > 10 else ''} (expected the "
            f"{len(expected)} keys of pytorch-fid's {WEIGHTS_FILE})"
        )
    flat = {}
    for path, shape in _variable_shapes().items():
        key = _torch_key(path[0], path[1:], shape)
        value = np.asarray(state_dict[key])
        if value.shape != expected[key]:
            raise ValueError(
                f"state dict key {key!r} has shape {value.shape}, the network needs {expected[key]}"
            )
        flat[path] = _from_torch_layout(value.astype(np.float32))
    return traverse_util.unflatten_dict(flat)


def state_dict_from_variables(variables) -> dict[str, np.ndarray]:
    """The inverse map: a pytorch-fid-layout state dict (e.g. to save as ``.npz``)."""
    return {
        _torch_key(path[0], path[1:], np.shape(value)): _to_torch_layout(np.asarray(value))
        for path, value in traverse_util.flatten_dict(variables).items()
    }


def load_variables(path: str) -> dict:
    """Flax variables from the weights file: pytorch-fid's ``.pth`` (zip or legacy torch
    serialisation, read without torch) or an ``.npz`` with the same keys."""
    return variables_from_state_dict(torch_checkpoint.load_state_dict(path))


def num_parameters(variables) -> int:
    """Trainable parameters (``params``; batch-norm statistics excluded)."""
    return sum(int(np.size(v)) for v in jax.tree.leaves(variables["params"]))


# -- features ---------------------------------------------------------------------------------


@jax.jit
def _batch_features(variables, images):
    pool3, _ = FIDInceptionV3().apply(variables, preprocess(images))
    return pool3


class FeatureExtractor:
    """``extractor(images) -> (n, 2048)`` float32 pool3 features, ``batch_size`` images a call.

    The last batch is padded with zeros (and its padding dropped), so every call of the compiled
    network has one shape: one compilation per image shape, for any number of images (fewer
    images than ``batch_size`` run as one batch of their own size: no padding work).
    """

    def __init__(self, variables, batch_size: int = DEFAULT_BATCH_SIZE):
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
        self.variables = jax.device_put(variables)
        self.batch_size = batch_size

    @classmethod
    def from_file(cls, path: str, batch_size: int = DEFAULT_BATCH_SIZE) -> FeatureExtractor:
        return cls(load_variables(path), batch_size)

    def __call__(self, images) -> np.ndarray:
        n = check_images(images)[0]
        images = np.asarray(images, np.float32)
        batch = min(self.batch_size, n)
        num_batches = math.ceil(n / batch)
        padded = np.zeros((num_batches * batch, *images.shape[1:]), np.float32)
        padded[:n] = images
        # Dispatch every batch before reading any back: the device never waits for the host.
        outputs = [
            _batch_features(self.variables, padded[i * batch:(i + 1) * batch])
            for i in range(num_batches)
        ]
        return np.concatenate([np.asarray(out) for out in outputs])[:n]
