"""A torch-free, restricted reader of PyTorch weight files (for the Inception and LPIPS converters).

Why: torch is an optional extra (``pip install .[convert]``) and CI has none, yet users hold
``.pth``/``.pt`` files. This reads the two on-disk formats ``torch.save`` has used:

* **zip** (torch >= 1.6, and every ``torch.jit.save`` archive): ``<root>/data.pkl`` plus one raw
  little-endian storage per tensor in ``<root>/data/<key>``;
* **legacy** (torch < 1.6, e.g. torchvision's 2017 AlexNet and the lpips v0.1 files): five
  consecutive pickles/blocks: magic number, protocol version, sys info, the object, the list of
  storage keys, then each storage as an int64 element count followed by its raw bytes.

Safety: unpickling runs only an explicit allow-list (``_ALLOWED``): ``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``, the ``torch.*Storage`` dtype
markers, a few ``torch.jit._pickle`` list builders, and, for TorchScript archives only, any
``__torch__.*`` module class, replaced by :class:`ScriptObject`, which only records its pickled
state. Any other global raises :class:`UnsafeCheckpointError`; nothing from the file is executed.
TorchScript ``code/`` and ``constants.pkl`` are not read.

If torch is importable, ``read_state_dict(..., use_torch=True)`` uses ``torch.load(weights_only=True,
map_location="cpu")`` (``torch.jit.load`` for TorchScript) instead; the default is this reader.
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": None,  # numpy has no bfloat16; widened to float32 below
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """The file's pickle names a global outside the allow-list."""


class StorageType:
    """Stands in for ``torch.FloatStorage`` etc.: only the element dtype matters."""

    def __init__(self, name: str):
        self.name = name

    @property
    def dtype(self):
        return _DTYPES[self.name]

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class ScriptObject:
    """A TorchScript module (``__torch__.*``) reduced to the state it pickled (a dict of attributes)."""

    def __init__(self, *args, **kwargs):
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _script_class(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[-1], (ScriptObject,), {"qualname": qualname})


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *_ignored) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` for numpy: a strided view, copied to an owned array."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if not size:
        return np.array(storage[offset])
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=tuple(s * item for s in stride), writeable=False)
    return np.array(view)


def _rebuild_parameter(data: np.ndarray, requires_grad: bool = False, *_ignored) -> np.ndarray:
    return data


def _identity(x=None, *_ignored):
    return x


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.jit._pickle", "restore_type_tag"): _identity,
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    ("torch.jit._pickle", "build_tensorlist"): list,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, load_storage, allow_script: bool, what: str):
        super().__init__(file, encoding="utf-8")
        self._load_storage, self._allow_script, self._what = load_storage, allow_script, what

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _DTYPES:
            return StorageType(name)
        if self._allow_script and (module == "__torch__" or module.startswith("__torch__.")):
            return _script_class(f"{module}.{name}")
        raise UnsafeCheckpointError(
            f"{self._what}: refusing to unpickle global {module}.{name} (not a plain tensor "
            "state dict; only tensors, OrderedDict and TorchScript module attributes are read)")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise UnsafeCheckpointError(f"{self._what}: unexpected persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if len(pid) > 5 and pid[5] is not None:
            # Legacy storage views (pre-1.0 files sharing one storage between tensors).
            raise ValueError(f"{self._what}: legacy storage views are not supported; re-save the file")
        if not isinstance(storage_type, StorageType):
            raise UnsafeCheckpointError(f"{self._what}: storage type {storage_type!r} is not a torch.*Storage")
        return self._load_storage(key, storage_type)


def _as_array(raw: bytes, storage_type: StorageType) -> np.ndarray:
    if storage_type.name == "BFloat16Storage":
        # bfloat16 = the top half of a float32.
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, np.dtype(storage_type.dtype).newbyteorder("<"))


def _load_zip(path: Path) -> tuple[Any, bool]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise ValueError(f"{path}: a PyTorch zip archive has one <root>/data.pkl; found {pkls or 'none'}")
        root = pkls[0][: -len("data.pkl")]
        is_script = any(n.startswith(root + "code/") for n in names)
        cache: dict[str, np.ndarray] = {}

        def load_storage(key: str, storage_type: StorageType) -> np.ndarray:
            if key not in cache:
                try:
                    raw = zf.read(f"{root}data/{key}")
                except KeyError:
                    raise ValueError(f"{path}: storage {key} missing from the archive") from None
                cache[key] = _as_array(raw, storage_type)
            return cache[key]

        with zf.open(pkls[0]) as f:
            obj = _Unpickler(io.BytesIO(f.read()), load_storage, is_script, str(path)).load()
    return obj, is_script


def _load_legacy(path: Path) -> Any:
    with open(path, "rb") as f:
        def plain_load():
            return _Unpickler(f, None, False, str(path)).load()

        try:   # a legacy file opens with a pickled magic number; anything else is another kind of file
            magic = plain_load()
        except Exception:  # noqa: BLE001 - arbitrary bytes fail the unpickler in many ways
            magic = None
        if magic != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a PyTorch checkpoint (expected a torch.save file: a zip archive or "
                             "the legacy format)")
        if plain_load() != _LEGACY_PROTOCOL:
            raise ValueError(f"{path}: unsupported legacy PyTorch protocol version")
        plain_load()  # sys info (endianness, type sizes); storages are little-endian in practice
        types: dict[str, StorageType] = {}
        placeholders: dict[str, _LazyStorage] = {}

        def load_storage(key: str, storage_type: StorageType) -> np.ndarray:
            # Storages follow the object; hand out a growable placeholder and fill it afterwards.
            types[key] = storage_type
            return placeholders.setdefault(key, _LazyStorage(key))

        obj = _Unpickler(f, load_storage, False, str(path)).load()
        keys = _Unpickler(f, None, False, str(path)).load()
        data = {}
        for key in keys:
            count = int(np.frombuffer(f.read(8), "<i8")[0])
            st = types[key]
            item = 2 if st.name == "BFloat16Storage" else np.dtype(st.dtype).itemsize
            data[key] = _as_array(f.read(count * item), st)
    return _resolve(obj, data)


class _LazyStorage:
    """Legacy files list storages after the object: tensors are rebuilt once the bytes are read."""

    def __init__(self, key: str):
        self.key = key


class _LazyTensor:
    def __init__(self, storage: _LazyStorage, args: tuple):
        self.storage, self.args = storage, args


def _resolve(obj: Any, data: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, _LazyTensor):
        return _rebuild_tensor(data[obj.storage.key], *obj.args)
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v, data)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v, data) for v in obj)
    if isinstance(obj, ScriptObject):
        obj.state = _resolve(obj.state, data)
    return obj


def _rebuild_maybe_lazy(storage, offset, size, stride, *rest):
    if isinstance(storage, _LazyStorage):
        return _LazyTensor(storage, (offset, size, stride))
    return _rebuild_tensor(storage, offset, size, stride, *rest)


_ALLOWED[("torch._utils", "_rebuild_tensor_v2")] = _rebuild_maybe_lazy
_ALLOWED[("torch._utils", "_rebuild_tensor")] = _rebuild_maybe_lazy


def _flatten(obj: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
    """Tensor leaves of nested dicts / TorchScript modules, named by their dotted attribute path."""
    if isinstance(obj, ScriptObject):
        obj = obj.state
    if isinstance(obj, np.ndarray):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str):
                _flatten(v, f"{prefix}.{k}" if prefix else k, out)


def read_state_dict(path: str | Path, *, use_torch: bool = False) -> dict[str, np.ndarray]:
    """``{name: numpy array}`` of a state dict file or a TorchScript archive's parameters/buffers.

    For a plain ``torch.save(state_dict)`` the names are the dict's keys (a top-level
    ``{"state_dict": ...}`` wrapper is unwrapped); for TorchScript they are the module attribute
    paths, the same names ``scripted.state_dict()`` gives (e.g. ``layers.conv.weight``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    if use_torch:
        return _read_with_torch(path)
    try:
        obj = _load_zip(path)[0] if zipfile.is_zipfile(path) else _load_legacy(path)
    except (UnsafeCheckpointError, ValueError):
        raise
    except (pickle.UnpicklingError, EOFError, IndexError, KeyError, TypeError, AttributeError,
            zipfile.BadZipFile, OSError) as e:
        detail = " ".join(str(e).split())[:200]
        raise ValueError(f"{path}: a damaged PyTorch checkpoint ({detail or 'truncated'}); download it again") from None
    if isinstance(obj, dict) and set(obj) == {"state_dict"}:
        obj = obj["state_dict"]
    out: dict[str, np.ndarray] = {}
    _flatten(obj, "", out)
    if not out:
        raise ValueError(f"{path}: no tensors found")
    return out


def _read_with_torch(path: Path) -> dict[str, np.ndarray]:
    import torch  # noqa: PLC0415  (optional extra)

    is_script = False
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            is_script = any(n.split("/")[1:2] == ["code"] for n in zf.namelist())
    if is_script:
        sd = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and set(sd) == {"state_dict"}:
            sd = sd["state_dict"]
    return {k: v.detach().cpu().numpy() for k, v in sd.items()}
