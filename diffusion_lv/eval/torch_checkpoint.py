"""Read PyTorch ``state_dict`` files into numpy arrays, without PyTorch.

``load_state_dict(path) -> {name: np.ndarray}`` reads both of ``torch.save``'s layouts:

* **zip** (PyTorch >= 1.6): an archive ``<prefix>/data.pkl`` (the pickled object) with one raw
  storage per entry ``<prefix>/data/<key>``; tensors refer to storages by the persistent id
  ``('storage', storage_type, key, location, numel)``;
* **legacy**: five pickles back to back (magic number, protocol version, system info, the
  object, the sorted list of storage keys), then each storage's raw bytes preceded by its
  element count as a little-endian int64. Persistent ids are
  ``('storage', storage_type, key, location, numel, view_metadata)``.

A tensor is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``: a strided
view into its storage (offsets and strides count elements), copied here into a contiguous array.

Unpickling runs code named by the file, so the unpickler is restricted: it builds only the
globals a state dict needs (``collections.OrderedDict``, the tensor rebuild functions and the
typed storage classes) and refuses anything else with :class:`TorchCheckpointError`.
An ``.npz`` with the same key names (a file converted once) is read as well.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import zipfile
from collections import OrderedDict

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001


def _bfloat16():
    import ml_dtypes  # ships with JAX

    return np.dtype(ml_dtypes.bfloat16)


STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": None,  # resolved lazily: ml_dtypes.bfloat16
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchCheckpointError(ValueError):
    """A file that is not a readable torch state dict, or one that asks for a refused global."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return _bfloat16() if self.name == "BFloat16Storage" else STORAGE_DTYPES[self.name]


@dataclasses.dataclass
class _Storage:
    """A storage named by a persistent id; ``data`` (flat numpy) is filled when read."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class _StorageView:
    """A legacy view: ``numel`` elements of ``root`` from ``offset`` on."""

    root: _Storage
    offset: int
    numel: int


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """A strided view of a storage, materialised once every storage is read."""

    storage: _Storage | _StorageView
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> np.ndarray:
        storage, offset = self.storage, self.offset
        if isinstance(storage, _StorageView):
            flat = storage.root.data[storage.offset:storage.offset + storage.numel]
        else:
            flat = storage.data
        if flat is None:
            raise TorchCheckpointError(f"storage {storage.key!r} has no data in the file")
        if any(n < 0 for n in self.size) or any(s < 0 for s in self.stride):
            raise TorchCheckpointError(f"negative size or stride {self.size}, {self.stride}")
        if len(self.size) != len(self.stride):
            raise TorchCheckpointError(f"size {self.size} and stride {self.stride} differ in rank")
        if 0 in self.size:
            return np.zeros(self.size, flat.dtype)
        last = offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if offset < 0 or last >= flat.size:
            raise TorchCheckpointError(
                f"tensor of size {self.size}, stride {self.stride}, offset {offset} reaches "
                f"element {last} of a storage of {flat.size}"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=self.size, strides=[s * flat.itemsize for s in self.stride],
            writeable=False,
        )
        return np.array(view, order="C")  # a contiguous copy that owns its memory


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _Tensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks, metadata  # training state: irrelevant to the values
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    del requires_grad, backward_hooks
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only the allowed globals; storages come back as :class:`_Storage` placeholders."""

    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            allowed = sorted(f"{m}.{n}" for m, n in _ALLOWED_GLOBALS)
            raise TorchCheckpointError(
                f"refusing to load the global {module}.{name}: a state dict of tensors needs "
                f"only {allowed}"
            )
        return _ALLOWED_GLOBALS[(module, name)]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise TorchCheckpointError(f"unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise TorchCheckpointError(f"persistent id {pid!r} names no typed storage")
        key = str(key)
        storage = self.storages.setdefault(key, _Storage(key, storage_type.dtype, int(numel)))
        view = pid[5] if len(pid) == 6 else None
        if view is not None:  # (view_key, offset, view_numel): a slice of the root storage
            _view_key, offset, view_numel = view
            return _StorageView(storage, int(offset), int(view_numel))
        return storage


def _unpickle(data: bytes | io.BufferedIOBase, storages: dict[str, _Storage]):
    file = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        return _RestrictedUnpickler(file, storages).load()
    except TorchCheckpointError:
        raise
    except Exception as err:  # truncated or foreign pickles
        raise TorchCheckpointError(f"cannot unpickle: {type(err).__name__}: {err}") from None


def _materialize(obj):
    if isinstance(obj, _Tensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _read_zip(path: str):
    with zipfile.ZipFile(path) as archive:
        pickles = _data_pickles(archive)
        if len(pickles) != 1:
            raise TorchCheckpointError(f"{path}: expected one data.pkl in the archive, found "
                                       f"{pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        obj = _unpickle(archive.read(pickles[0]), storages)
        for key, storage in storages.items():
            name = f"{prefix}data/{key}"
            try:
                raw = archive.read(name)
            except KeyError:
                raise TorchCheckpointError(f"{path}: storage {name!r} is missing") from None
            _fill(storage, raw, path)
    return obj, storages


def _fill(storage: _Storage, raw: bytes, path: str) -> None:
    expected = storage.numel * storage.dtype.itemsize
    if len(raw) < expected:
        raise TorchCheckpointError(
            f"{path}: storage {storage.key!r} has {len(raw)} bytes, needs {expected}"
        )
    storage.data = np.frombuffer(raw, storage.dtype, count=storage.numel)


def _read_legacy(path: str):
    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
            version = pickle.load(f)
            sys_info = pickle.load(f)
        except Exception as err:
            raise TorchCheckpointError(
                f"{path} is neither a torch zip archive, a legacy torch file nor an .npz "
                f"({type(err).__name__}: {err})"
            ) from None
        if magic != LEGACY_MAGIC_NUMBER:
            raise TorchCheckpointError(f"{path}: not a torch file (magic number {magic!r})")
        if version != LEGACY_PROTOCOL_VERSION:
            raise TorchCheckpointError(
                f"{path}: legacy protocol {version!r}; only {LEGACY_PROTOCOL_VERSION} is known"
            )
        if not (isinstance(sys_info, dict) and sys_info.get("little_endian", True)):
            raise TorchCheckpointError(f"{path}: big-endian files are not supported ({sys_info})")
        storages: dict[str, _Storage] = {}
        obj = _unpickle(f, storages)
        keys = _unpickle(f, {})
        if sorted(map(str, keys)) != sorted(storages):
            raise TorchCheckpointError(
                f"{path}: the storage list {keys} does not match the storages the object uses"
            )
        for key in keys:
            storage = storages[str(key)]
            head = f.read(8)
            if len(head) != 8:
                raise TorchCheckpointError(f"{path}: truncated before storage {key!r}")
            numel = int(np.frombuffer(head, "<i8")[0])
            if numel != storage.numel:
                raise TorchCheckpointError(
                    f"{path}: storage {key!r} holds {numel} elements, its id says {storage.numel}"
                )
            _fill(storage, f.read(numel * storage.dtype.itemsize), path)
    return obj, storages


def load_object(path: str):
    """The object a torch file holds, with every tensor as a numpy array."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    reader = _read_zip if zipfile.is_zipfile(path) else _read_legacy
    obj, _ = reader(path)
    return _materialize(obj)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """``{name: array}`` from a torch state-dict file (zip or legacy) or an ``.npz``.

    A checkpoint that wraps its state dict (``{'state_dict': {...}}``) is unwrapped.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    with open(path, "rb") as f:
        is_npz = f.read(4) == b"PK\x03\x04" and not _is_torch_zip(path)
    if is_npz:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    obj = load_object(path)
    if isinstance(obj, dict) and set(obj) == {"state_dict"}:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise TorchCheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    bad = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise TorchCheckpointError(f"{path}: entries {bad[:5]} are not tensors")
    return dict(obj)


def _data_pickles(archive: zipfile.ZipFile) -> list[str]:
    """The archive's ``[<prefix>/]data.pkl`` entries: what makes a zip a torch file."""
    return [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]


def _is_torch_zip(path: str) -> bool:
    with zipfile.ZipFile(path) as archive:
        return bool(_data_pickles(archive))
