"""FID with Inception features: the torch-free reader of torch's two serialisations, the FID
Inception network's key list and layer semantics (checked in numpy from the same arrays), the
resize, the Frechet distance, statistics files, config checks, and FID through main.

No torch here: stand-in files are written by a small writer of torch's formats (below), with
random weights of the true shapes. The expected state-dict layout is typed in from torchvision's
Inception3 (1008 classes, no auxiliary head) and the four FID blocks of pytorch-fid.
"""

import collections
import io
import json
import os
import pickle
import zipfile

import jax
import numpy as np
import pytest
import scipy.linalg

from diffusion_lv import experiment as experiment_lib
from diffusion_lv import main
from diffusion_lv.config_files import load_config
from diffusion_lv.eval import fid, inception, metrics, torch_checkpoint
from diffusion_lv.eval import images as image_eval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# -- a writer of torch's formats (the spec in torch_checkpoint's docstring) --------------------

DTYPE_STORAGE = {
    np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage", np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}


class Global:
    """A reference to ``module.name`` that pickles as a GLOBAL opcode (no import of torch)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self):  # pickle's save_reduce insists on a callable
        raise NotImplementedError

    def __reduce__(self):
        return self.name


class Storage:
    def __init__(self, key, flat):
        self.key, self.flat = key, np.ascontiguousarray(flat).reshape(-1)


class Tensor:
    """``_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        args = (self.storage, self.offset, tuple(self.size), tuple(self.stride), False,
                collections.OrderedDict())
        return Global("torch._utils", "_rebuild_tensor_v2"), args


class StorageView:
    """An old torch's storage view: ``numel`` elements of ``root`` from ``offset`` (legacy only)."""

    def __init__(self, key, root, offset, numel):
        self.key, self.root, self.offset, self.numel = key, root, offset, numel


class TorchPickler(pickle._Pickler):
    def __init__(self, file, legacy):
        super().__init__(file, protocol=2)
        self.legacy, self.storages = legacy, {}

    def persistent_id(self, obj):
        if isinstance(obj, StorageView):
            root = self.persistent_id(obj.root)
            return (*root[:5], (obj.key, obj.offset, obj.numel))
        if not isinstance(obj, Storage):
            return None
        self.storages[obj.key] = obj
        pid = ("storage", Global("torch", DTYPE_STORAGE[obj.flat.dtype]), obj.key, "cpu",
               obj.flat.size)
        return (*pid, None) if self.legacy else pid

    def save_global(self, obj, name=None):
        if isinstance(obj, Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def contiguous(array, key):
    array = np.array(array, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
    strides = [s // array.itemsize for s in array.strides]
    return Tensor(Storage(key, array), 0, array.shape, strides)


def as_state_dict(arrays):
    state = collections.OrderedDict(
        (name, contiguous(value, str(i))) for i, (name, value) in enumerate(arrays.items())
    )
    state._metadata = collections.OrderedDict({"": {"version": 1}})  # as torch's state_dict()
    return state


def torch_save(obj, path, legacy):
    """``torch.save(obj, path)`` with ``_use_new_zipfile_serialization=not legacy``."""
    buffer = io.BytesIO()
    pickler = TorchPickler(buffer, legacy)
    pickler.dump(obj)
    storages = pickler.storages
    if legacy:
        with open(path, "wb") as f:
            for header in (torch_checkpoint.LEGACY_MAGIC_NUMBER,
                           torch_checkpoint.LEGACY_PROTOCOL_VERSION,
                           {"protocol_version": 1001, "little_endian": True,
                            "type_sizes": {"short": 2, "int": 4, "long": 4}}):
                pickle.dump(header, f, protocol=2)
            f.write(buffer.getvalue())
            pickle.dump(sorted(storages), f, protocol=2)
            for key in sorted(storages):
                flat = storages[key].flat
                f.write(np.int64(flat.size).tobytes() + flat.tobytes())
        return path
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("weights/data.pkl", buffer.getvalue())
        archive.writestr("weights/byteorder", "little")
        for key, storage in storages.items():
            archive.writestr(f"weights/data/{key}", storage.flat.tobytes())
        archive.writestr("weights/version", "3\n")
    return path


# -- the reader ---------------------------------------------------------------------------------


def tricky_state():
    """Tensors that share storages, with offsets and non-contiguous strides, in several dtypes."""
    rng = np.random.default_rng(0)
    shared = rng.normal(size=60).astype(np.float32)
    base = Storage("shared", shared)
    doubles = rng.normal(size=(3, 4))
    state = collections.OrderedDict({
        "conv.weight": Tensor(base, 0, (2, 3, 2, 2), (12, 4, 2, 1)),  # elements 0..23
        "transposed": Tensor(base, 24, (4, 3), (1, 4)),  # a (3, 4) block at 24, transposed
        "every_other": Tensor(base, 37, (5,), (2,)),  # 37, 39, ..., 45
        "broadcast": Tensor(base, 50, (3, 2), (0, 1)),  # one row repeated (stride 0)
        "bn.num_batches_tracked": Tensor(Storage("count", np.array([7], np.int64)), 0, (), ()),
        "doubles": contiguous(doubles, "doubles"),
        "ints": contiguous(np.arange(-3, 3, dtype=np.int32), "ints"),
        "bytes": contiguous(np.arange(250, 256, dtype=np.uint8), "bytes"),
        "mask": contiguous(np.array([True, False, True]), "mask"),
        "half": contiguous(np.array([0.5, -2.0, 65504.0], np.float16), "half"),
        "empty": Tensor(Storage("none", np.zeros(0, np.float32)), 0, (0, 3), (3, 1)),
    })
    expected = {
        "conv.weight": shared[:24].reshape(2, 3, 2, 2),
        "transposed": shared[24:36].reshape(3, 4).T,
        "every_other": shared[37:46:2],
        "broadcast": np.stack([shared[50:52]] * 3),
        "bn.num_batches_tracked": np.array(7, np.int64),
        "doubles": doubles,
        "ints": np.arange(-3, 3, dtype=np.int32),
        "bytes": np.arange(250, 256, dtype=np.uint8),
        "mask": np.array([True, False, True]),
        "half": np.array([0.5, -2.0, 65504.0], np.float16),
        "empty": np.zeros((0, 3), np.float32),
    }
    return state, expected


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_reader_recovers_every_array_exactly(tmp_path, legacy):
    state, expected = tricky_state()
    path = torch_save(state, str(tmp_path / "state.pth"), legacy)
    assert zipfile.is_zipfile(path) != legacy
    loaded = torch_checkpoint.load_state_dict(path)
    assert list(loaded) == list(expected)
    for name, value in expected.items():
        assert loaded[name].dtype == value.dtype, name
        assert loaded[name].shape == value.shape, name
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)
        assert loaded[name].flags.c_contiguous and loaded[name].flags.owndata, name
    # A checkpoint that wraps the state dict is unwrapped.
    wrapped = torch_save({"state_dict": state}, str(tmp_path / "wrapped.pth"), legacy)
    np.testing.assert_array_equal(
        torch_checkpoint.load_state_dict(wrapped)["transposed"], expected["transposed"]
    )


def test_reader_resolves_legacy_storage_views(tmp_path):
    root = Storage("root", np.arange(10, dtype=np.float64))
    view = StorageView("view", root, 4, 5)  # elements 4..8
    state = {"whole": Tensor(root, 0, (10,), (1,)), "part": Tensor(view, 1, (2, 2), (1, 2))}
    loaded = torch_checkpoint.load_state_dict(torch_save(state, str(tmp_path / "v.pth"), True))
    np.testing.assert_array_equal(loaded["whole"], np.arange(10.0))
    np.testing.assert_array_equal(loaded["part"], [[5.0, 7.0], [6.0, 8.0]])


def test_reader_reads_npz_with_the_same_keys(tmp_path):
    _, expected = tricky_state()
    path = str(tmp_path / "state.npz")
    np.savez(path, **expected)
    loaded = torch_checkpoint.load_state_dict(path)
    for name, value in expected.items():
        np.testing.assert_array_equal(loaded[name], value)


class Evil:
    def __reduce__(self):
        return Global("os", "system"), ("echo owned",)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_restricted_unpickler_refuses_unexpected_globals(tmp_path, legacy):
    path = torch_save({"weight": Evil()}, str(tmp_path / "evil.pth"), legacy)
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match=r"refusing .* os\.system"):
        torch_checkpoint.load_state_dict(path)


def test_reader_rejects_broken_files(tmp_path):
    state, _ = tricky_state()
    path = torch_save(state, str(tmp_path / "state.pth"), legacy=True)
    data = open(path, "rb").read()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[:-3])
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match="bytes, needs"):
        torch_checkpoint.load_state_dict(str(truncated))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match="neither"):
        torch_checkpoint.load_state_dict(str(garbage))
    # A view reaching past its storage.
    bad = {"w": Tensor(Storage("s", np.zeros(4, np.float32)), 2, (3,), (1,))}
    path = torch_save(bad, str(tmp_path / "bad.pth"), legacy=False)
    with pytest.raises(torch_checkpoint.TorchCheckpointError, match="reaches element 4"):
        torch_checkpoint.load_state_dict(path)
    with pytest.raises(FileNotFoundError):
        torch_checkpoint.load_state_dict(str(tmp_path / "missing.pth"))


# -- the network's layout, typed in from torchvision's Inception3 and pytorch-fid ---------------


def basic(name, cin, cout, kh, kw=None):
    return [(name, cin, cout, kh, kh if kw is None else kw)]


def block_a(p, cin, pool):
    return (basic(f"{p}.branch1x1", cin, 64, 1) + basic(f"{p}.branch5x5_1", cin, 48, 1)
            + basic(f"{p}.branch5x5_2", 48, 64, 5) + basic(f"{p}.branch3x3dbl_1", cin, 64, 1)
            + basic(f"{p}.branch3x3dbl_2", 64, 96, 3) + basic(f"{p}.branch3x3dbl_3", 96, 96, 3)
            + basic(f"{p}.branch_pool", cin, pool, 1))


def block_c(p, c7):
    return (basic(f"{p}.branch1x1", 768, 192, 1) + basic(f"{p}.branch7x7_1", 768, c7, 1)
            + basic(f"{p}.branch7x7_2", c7, c7, 1, 7) + basic(f"{p}.branch7x7_3", c7, 192, 7, 1)
            + basic(f"{p}.branch7x7dbl_1", 768, c7, 1)
            + basic(f"{p}.branch7x7dbl_2", c7, c7, 7, 1)
            + basic(f"{p}.branch7x7dbl_3", c7, c7, 1, 7)
            + basic(f"{p}.branch7x7dbl_4", c7, c7, 7, 1)
            + basic(f"{p}.branch7x7dbl_5", c7, 192, 1, 7) + basic(f"{p}.branch_pool", 768, 192, 1))


def block_e(p, cin):
    return (basic(f"{p}.branch1x1", cin, 320, 1) + basic(f"{p}.branch3x3_1", cin, 384, 1)
            + basic(f"{p}.branch3x3_2a", 384, 384, 1, 3)
            + basic(f"{p}.branch3x3_2b", 384, 384, 3, 1)
            + basic(f"{p}.branch3x3dbl_1", cin, 448, 1)
            + basic(f"{p}.branch3x3dbl_2", 448, 384, 3)
            + basic(f"{p}.branch3x3dbl_3a", 384, 384, 1, 3)
            + basic(f"{p}.branch3x3dbl_3b", 384, 384, 3, 1)
            + basic(f"{p}.branch_pool", cin, 192, 1))


CONVS = (
    basic("Conv2d_1a_3x3", 3, 32, 3) + basic("Conv2d_2a_3x3", 32, 32, 3)
    + basic("Conv2d_2b_3x3", 32, 64, 3) + basic("Conv2d_3b_1x1", 64, 80, 1)
    + basic("Conv2d_4a_3x3", 80, 192, 3)
    + block_a("Mixed_5b", 192, 32) + block_a("Mixed_5c", 256, 64) + block_a("Mixed_5d", 288, 64)
    + basic("Mixed_6a.branch3x3", 288, 384, 3) + basic("Mixed_6a.branch3x3dbl_1", 288, 64, 1)
    + basic("Mixed_6a.branch3x3dbl_2", 64, 96, 3) + basic("Mixed_6a.branch3x3dbl_3", 96, 96, 3)
    + block_c("Mixed_6b", 128) + block_c("Mixed_6c", 160) + block_c("Mixed_6d", 160)
    + block_c("Mixed_6e", 192)
    + basic("Mixed_7a.branch3x3_1", 768, 192, 1) + basic("Mixed_7a.branch3x3_2", 192, 320, 3)
    + basic("Mixed_7a.branch7x7x3_1", 768, 192, 1)
    + basic("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7)
    + basic("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1)
    + basic("Mixed_7a.branch7x7x3_4", 192, 192, 3)
    + block_e("Mixed_7b", 1280) + block_e("Mixed_7c", 2048)
)


def expected_state_dict_shapes():
    shapes = {}
    for name, cin, cout, kh, kw in CONVS:
        shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{leaf}"] = (cout,)
    shapes["fc.weight"], shapes["fc.bias"] = (1008, 2048), (1008,)
    return shapes


# torchvision's inception_v3 has 27,161,264 parameters; without the auxiliary head (conv0
# 98,560 + conv1 2,459,136 + fc 769,000 = 3,326,696) and with 1008 instead of 1000 classes
# (+8 x 2049) that is 23,850,960.
FID_INCEPTION_PARAMETERS = 23_850_960


def test_state_dict_layout_is_pytorch_fids():
    expected = expected_state_dict_shapes()
    assert len(CONVS) == 94 and len(expected) == 94 * 5 + 2
    assert inception.state_dict_shapes() == expected
    count = sum(int(np.prod(s)) for k, s in expected.items() if "running" not in k)
    assert count == FID_INCEPTION_PARAMETERS


# -- random weights, written as pytorch-fid's file would be -------------------------------------


def random_state_dict(seed=0):
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in expected_state_dict_shapes().items():
        if name.endswith("conv.weight") or name == "fc.weight":
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(size=shape) * np.sqrt(2.0 / fan_in)  # keeps ReLU activations O(1)
        elif name.endswith(("bn.weight", "running_var")):
            value = rng.uniform(0.5, 1.5, size=shape)
        else:
            value = rng.normal(size=shape) * 0.1
        state[name] = value.astype(np.float32)
        if name.endswith("running_var"):
            state[name.replace("running_var", "num_batches_tracked")] = np.array(0, np.int64)
    return state


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random pytorch-fid state dict in torch's legacy layout, and its arrays."""
    state = random_state_dict()
    path = str(tmp_path_factory.mktemp("inception") / inception.WEIGHTS_FILE)
    torch_save(as_state_dict(state), path, legacy=True)
    return path, state


@pytest.fixture(scope="module")
def variables(weights):
    return inception.load_variables(weights[0])


def test_loading_maps_every_array(weights, variables):
    _, state = weights
    assert inception.num_parameters(variables) == FID_INCEPTION_PARAMETERS
    back = inception.state_dict_from_variables(variables)
    assert set(back) == set(inception.state_dict_shapes())
    for name, value in back.items():
        np.testing.assert_array_equal(value, state[name], err_msg=name)
    # Conv kernels move from torch's (out, in, kh, kw) to Flax's (kh, kw, in, out).
    kernel = variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]
    assert kernel.shape == (1, 7, 128, 128)
    torch_weight = state["Mixed_6b.branch7x7_2.conv.weight"]
    np.testing.assert_array_equal(kernel[0, 5, 3, 2], torch_weight[2, 3, 0, 5])


def test_loading_names_missing_extra_and_misshaped_keys():
    state = random_state_dict()
    missing = dict(state)
    del missing["Mixed_6c.branch7x7dbl_3.bn.running_var"]
    with pytest.raises(ValueError,
                       match=r"missing keys \['Mixed_6c.branch7x7dbl_3.bn.running_var'"):
        inception.variables_from_state_dict(missing)
    with pytest.raises(ValueError, match=r"unexpected keys \['AuxLogits.fc.weight'\]"):
        inception.variables_from_state_dict({**state, "AuxLogits.fc.weight": np.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected keys \['fc.num_batches_tracked'\]"):
        inception.variables_from_state_dict({**state, "fc.num_batches_tracked": np.array(0)})
    wrong = {**state, "Mixed_7b.branch3x3_2a.conv.weight": np.zeros((384, 384, 3, 1))}
    with pytest.raises(ValueError, match=r"'Mixed_7b.branch3x3_2a.conv.weight' has shape \(384, "
                                         r"384, 3, 1\), the network needs \(384, 384, 1, 3\)"):
        inception.variables_from_state_dict(wrong)


# -- resize -------------------------------------------------------------------------------------


def torch_bilinear_reference(image, out_h, out_w):
    """``F.interpolate(mode='bilinear', align_corners=False)`` pixel by pixel, (H, W, C)."""
    in_h, in_w = image.shape[:2]
    out = np.zeros((out_h, out_w, image.shape[2]))

    def source(o, in_size, out_size):
        real = max((o + 0.5) * in_size / out_size - 0.5, 0.0)
        i0 = int(real)
        i1 = i0 + 1 if i0 < in_size - 1 else i0
        return i0, i1, real - i0

    for y in range(out_h):
        y0, y1, fy = source(y, in_h, out_h)
        for x in range(out_w):
            x0, x1, fx = source(x, in_w, out_w)
            out[y, x] = ((1 - fy) * ((1 - fx) * image[y0, x0] + fx * image[y0, x1])
                         + fy * ((1 - fx) * image[y1, x0] + fx * image[y1, x1]))
    return out


@pytest.mark.parametrize("in_shape, out_size", [((8, 8), 299), ((37, 23), 11), ((5, 40), 16)],
                         ids=["up", "down", "mixed"])
def test_resize_is_pytorchs_bilinear(in_shape, out_size):
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, size=(2, *in_shape, 3)).astype(np.float32)
    resized = np.asarray(inception.preprocess(images, out_size))
    for image, got in zip(images, resized, strict=True):
        np.testing.assert_allclose(got, torch_bilinear_reference(image, out_size, out_size),
                                   rtol=0, atol=2e-6)
    # jax.image.resize without antialiasing is the same map up to float32 round-off of its
    # weights; its default (antialias=True) is another map when shrinking.
    shape = (2, out_size, out_size, 3)
    same = jax.image.resize(images, shape, "bilinear", antialias=False)
    np.testing.assert_allclose(np.asarray(same), resized, rtol=0, atol=1e-5)
    if out_size < max(in_shape):
        smoothed = jax.image.resize(images, shape, "bilinear")
        assert np.max(np.abs(np.asarray(smoothed) - resized)) > 0.1


def test_preprocess_repeats_gray_and_clips():
    gray = np.linspace(-1.5, 1.5, 16, dtype=np.float32).reshape(1, 4, 4, 1)
    out = np.asarray(inception.preprocess(gray, 8))
    assert out.shape == (1, 8, 8, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert out.min() == -1.0 and out.max() == 1.0
    with pytest.raises(ValueError, match=r"C in \(1, 3\).*\(1, 4, 4, 2\)"):
        inception.preprocess(np.zeros((1, 4, 4, 2)))


# -- the network's layers, recomputed in numpy --------------------------------------------------


def conv_bn_relu(x, state, name, stride=1, pad=(0, 0)):
    """BasicConv2d in numpy from the torch-layout arrays; x is (n, H, W, C)."""
    w = state[f"{name}.conv.weight"].astype(np.float64)
    x = np.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(1, 2))
    y = np.einsum("nhwcij,ocij->nhwo", windows[:, ::stride, ::stride], w)
    bn = {k: state[f"{name}.bn.{k}"] for k in ("weight", "bias", "running_mean", "running_var")}
    y = (y - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-3) * bn["weight"] + bn["bias"]
    return np.maximum(y, 0.0)


def pool3x3(x, stride, pad, kind):
    """Max pool (padding never wins) or average over the in-image pixels only."""
    fill = -np.inf if kind == "max" else 0.0
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
    windows = windows[:, ::stride, ::stride]
    if kind == "max":
        return windows.max(axis=(-2, -1))
    ones = np.pad(np.ones(x.shape[1:3]), pad)
    count = np.lib.stride_tricks.sliding_window_view(ones, (3, 3))[::stride, ::stride]
    return windows.sum(axis=(-2, -1)) / count.sum(axis=(-2, -1))[None, :, :, None]


CAPTURED = ("Conv2d_1a_3x3", "Conv2d_4a_3x3", "Mixed_5b", "Mixed_7b", "Mixed_7c")


@jax.jit
def run_captured(variables, images):
    (pool3, logits), state = inception.FIDInceptionV3().apply(
        variables, inception.preprocess(images), mutable=["intermediates"],
        capture_intermediates=lambda module, method: module.name in CAPTURED,
    )
    return pool3, logits, {k: v["__call__"][0] for k, v in state["intermediates"].items()}


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(2)
    return rng.uniform(-1, 1, size=(2, 8, 8, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def captured(variables, images):
    return jax.tree.map(np.asarray, run_captured(variables, images))


def relative_error(got, want):
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def test_first_layer_matches_numpy(weights, images, captured):
    _, state = weights
    gray = np.stack([torch_bilinear_reference(im, 299, 299) for im in images])
    rgb = np.repeat(gray, 3, axis=-1)
    want = conv_bn_relu(rgb, state, "Conv2d_1a_3x3", stride=2)
    got = captured[2]["Conv2d_1a_3x3"]
    assert got.shape == want.shape == (2, 149, 149, 32)
    assert relative_error(got, want) < 1e-4


def test_pool_branches_are_the_2015_graphs(weights, captured):
    """Mixed_5b averages over in-image pixels only; Mixed_7c max-pools (pytorch-fid's patches)."""
    _, state = weights
    layers = captured[2]
    stem = pool3x3(layers["Conv2d_4a_3x3"].astype(np.float64), 2, 0, "max")
    assert stem.shape == (2, 35, 35, 192)
    want = conv_bn_relu(pool3x3(stem, 1, 1, "avg"), state, "Mixed_5b.branch_pool")
    assert relative_error(layers["Mixed_5b"][..., -32:], want) < 1e-4
    counted_pad = conv_bn_relu(pool3x3(np.pad(stem, ((0, 0), (1, 1), (1, 1), (0, 0))), 1, 0,
                                       "avg"), state, "Mixed_5b.branch_pool")
    assert relative_error(counted_pad, want) > 1e-2  # the border pixels tell the two apart
    mixed_7b = layers["Mixed_7b"].astype(np.float64)
    want = conv_bn_relu(pool3x3(mixed_7b, 1, 1, "max"), state, "Mixed_7c.branch_pool")
    assert relative_error(layers["Mixed_7c"][..., -192:], want) < 1e-4
    avg = conv_bn_relu(pool3x3(mixed_7b, 1, 1, "avg"), state, "Mixed_7c.branch_pool")
    assert relative_error(avg, want) > 1e-2


def test_pool3_and_logits_come_from_the_last_block(weights, captured):
    _, state = weights
    pool3, logits, layers = captured
    np.testing.assert_allclose(pool3, layers["Mixed_7c"].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    want = pool3.astype(np.float64) @ state["fc.weight"].T.astype(np.float64) + state["fc.bias"]
    assert relative_error(logits, want) < 1e-5


def test_features_batching_and_weight_dependence(variables, images, captured):
    extractor = inception.FeatureExtractor(variables, batch_size=2)
    three = np.concatenate([images, images[:1] * -1.0])
    features = extractor(three)
    assert features.shape == (3, 2048) and features.dtype == np.float32
    # The first two match the captured run; the padded last batch does not leak into the third.
    np.testing.assert_allclose(features[:2], captured[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(features[2:], extractor(three[2:]), rtol=1e-5, atol=1e-6)
    # Raising the bias of Mixed_7c's pool branch BN by 50 makes those 192 ReLU units active
    # everywhere: exactly those features (the last 192 of the concatenation) shift by 50.
    shifted = jax.tree.map(lambda x: x, variables)
    bias = shifted["params"]["Mixed_7c"]["branch_pool"]["bn"]["bias"]
    shifted["params"]["Mixed_7c"]["branch_pool"]["bn"]["bias"] = bias + 50.0
    moved = inception.FeatureExtractor(shifted, batch_size=2)(three)
    np.testing.assert_allclose(moved[:, :-192], features[:, :-192], rtol=1e-6, atol=1e-6)
    # relu(y + 50) = y + 50 at every pixel: moved - 50 is the mean pre-activation, which is at
    # most the mean of relu(y), with equality for units active at every pixel.
    assert np.all(moved[:, -192:] - 50.0 <= features[:, -192:] + 1e-3)
    active = captured[2]["Mixed_7c"][..., -192:].min(axis=(1, 2)) > 0
    assert active.any()
    np.testing.assert_allclose(moved[:2, -192:][active] - 50.0, features[:2, -192:][active],
                               rtol=0, atol=1e-3)


# -- the Frechet distance and statistics files ---------------------------------------------------


def test_frechet_distance_identities():
    rng = np.random.default_rng(3)
    mixing = rng.normal(size=(6, 6))
    a = rng.normal(size=(400, 6)) @ mixing
    b = rng.normal(size=(300, 6)) @ mixing.T + 0.5
    scale = float(np.trace(np.cov(a, rowvar=False)))
    assert abs(metrics.frechet_distance(a, a)) < 1e-10 * scale
    assert metrics.frechet_distance(a, b) == pytest.approx(metrics.frechet_distance(b, a),
                                                           rel=1e-10)
    # A shifted copy has the same covariance: the distance is the squared shift, exactly.
    shift = rng.normal(size=6)
    assert metrics.frechet_distance(a, a + shift) == pytest.approx(np.sum(shift**2), rel=1e-9)
    # Two Gaussians in closed form: |dmu|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), with the general
    # (non-symmetric) matrix root computed by scipy, as pytorch-fid does.
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    closed = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert metrics.frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(closed,
                                                                                  rel=1e-9)
    # Diagonal covariances: sum of (sqrt(s1) - sqrt(s2))^2.
    d1, d2 = rng.uniform(0.1, 2, 6), rng.uniform(0.1, 2, 6)
    assert metrics.frechet_distance_from_stats(mu1, np.diag(d1), mu1, np.diag(d2)) == (
        pytest.approx(np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2), rel=1e-10))
    with pytest.raises(ValueError, match=r"cov_b has shape \(5, 5\)"):
        metrics.frechet_distance_from_stats(mu1, s1, mu2, s2[:5, :5])


def test_stats_files_round_trip_in_pytorch_fids_layout(tmp_path):
    rng = np.random.default_rng(4)
    features = rng.normal(size=(50, 8))
    mu, sigma = metrics.gaussian_statistics(features)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False))
    path = fid.save_stats(str(tmp_path / "stats.npz"), mu, sigma, dataset="digits")
    with np.load(path) as raw:  # what pytorch-fid reads
        np.testing.assert_array_equal(raw["mu"], mu)
        np.testing.assert_array_equal(raw["sigma"], sigma)
    loaded = fid.load_stats(path, dim=8)
    np.testing.assert_array_equal(loaded[0], mu)
    assert fid.read_metadata(path) == {"dataset": "digits"}
    assert fid.fid_from_features(features, mu, sigma) == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match=r"must be \(2048,\)"):
        fid.load_stats(path)
    np.savez(tmp_path / "other.npz", mean=mu)
    with pytest.raises(ValueError, match="need 'mu' and 'sigma'"):
        fid.load_stats(str(tmp_path / "other.npz"))


# -- configs and FID through main ----------------------------------------------------------------


def digits_config(**eval_overrides):
    config = load_config(os.path.join(ROOT, "configs/digits/ve_karras.py"))
    config.model.update({"channels": 8, "channel_mult": (1,), "num_blocks": 1,
                         "attn_resolutions": ()})
    config.training.update({"batch_size": 4, "num_steps": 1, "steps_per_call": 1,
                            "unroll_steps": True, "sample_every": 0, "checkpoint_every": 0})
    config.optimizer.warmup_steps = 0
    config.optimizer.decay = "constant"
    config.sampler.nfe = 3
    config.eval.num_samples = 20
    config.eval.update(eval_overrides)
    return config


def test_config_checks_the_fid_files(tmp_path, weights):
    config = digits_config(inception_weights=str(tmp_path / "nowhere.pth"))
    with pytest.raises(experiment_lib.ConfigError,
                       match=r"config.eval.inception_weights=.*does not exist: download "
                             r"pt_inception-2015-12-05-6726825d.pth"):
        experiment_lib.parse(config, num_devices=1)
    config = digits_config(inception_weights=weights[0], fid_reference=str(tmp_path / "x.npz"))
    with pytest.raises(experiment_lib.ConfigError, match=r"config.eval.fid_reference=.*mu, "
                                                            r"sigma"):
        experiment_lib.parse(config, num_devices=1)
    np.savez(tmp_path / "small.npz", mu=np.zeros(3), sigma=np.eye(3))
    config = digits_config(inception_weights=weights[0], fid_reference=str(tmp_path / "small.npz"))
    with pytest.raises(experiment_lib.ConfigError, match=r"config.eval.fid_reference: .*2048"):
        experiment_lib.parse(config, num_devices=1)
    config = digits_config(fid_reference=str(tmp_path / "small.npz"))
    with pytest.raises(experiment_lib.ConfigError, match="inception_weights is ''"):
        experiment_lib.parse(config, num_devices=1)
    toy = load_config(os.path.join(ROOT, "configs/default.py"))
    toy.eval.inception_weights = weights[0]
    with pytest.raises(experiment_lib.ConfigError, match="FID is for image data sets"):
        experiment_lib.parse(toy, num_devices=1)
    experiment = experiment_lib.parse(digits_config(inception_weights=weights[0]), 1)
    assert experiment.eval.inception_weights == weights[0] and experiment.eval.fid_reference == ""


def test_fid_through_main_with_cached_reference_stats(tmp_path, weights, variables):
    workdir = str(tmp_path)
    config = digits_config(inception_weights=weights[0], num_samples=4)
    result = main.run(config, workdir, "train")
    with open(os.path.join(workdir, "metrics.json")) as f:
        written = json.load(f)
    assert written["fid"] == pytest.approx(result["fid"]) and result["fid"] > 0
    assert result["fid_num_samples"] == 4
    assert result["fid_reference"] == "digits/test: 4 images"
    assert f"FID {result['fid']:.2f} (4 samples vs digits/test" in image_eval.summary_line(result)
    # The cached reference statistics are those of the first 4 test images, and the FID is
    # that of the saved samples against them.
    cache = os.path.join(workdir, fid.REFERENCE_CACHE)
    mu, sigma = fid.load_stats(cache)
    assert fid.read_metadata(cache) == {"dataset": "digits", "split": "test", "num_images": 4,
                                        "weights": inception.WEIGHTS_FILE}
    experiment = experiment_lib.parse(config, num_devices=1)
    extractor = inception.FeatureExtractor(variables)
    reference = extractor(experiment.image_data.examples(4, "test"))
    np.testing.assert_allclose(mu, reference.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(reference.astype(np.float64), rowvar=False),
                               rtol=1e-4, atol=1e-6)
    samples = np.load(os.path.join(workdir, "samples.npy"))
    sample_features = extractor(samples)
    assert fid.fid_from_features(sample_features, mu, sigma) == pytest.approx(result["fid"],
                                                                               rel=1e-4)
    # A given reference file is used as it is: shifting its mean by 1 in every feature moves
    # the FID by 2048 - 2 sum(mean(samples) - mu).
    stats = fid.save_stats(str(tmp_path / "given.npz"), mu + 1.0, sigma)
    config.eval.fid_reference = stats
    given = experiment_lib.parse(config, num_devices=1).evaluator.quality(samples, None)
    assert given["fid_reference"] == stats
    expected = result["fid"] + 2048 - 2 * np.sum(sample_features.mean(0) - mu)
    assert given["fid"] == pytest.approx(expected, rel=1e-4)
