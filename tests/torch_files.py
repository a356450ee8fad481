"""Test helper: write PyTorch checkpoint files without torch (zip, legacy and TorchScript layouts).

Mirrors what ``torch.save`` / ``torch.jit.save`` put on disk (see ``psm_jax/evaluators/torch_io.py``):
pickle protocol 2, tensors as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
with a persistent id ``("storage", torch.FloatStorage, key, "cpu", numel)``. It uses the pure-Python
pickler so that ``torch.*`` globals can be written without importing torch.
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

_STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                  np.dtype(np.int64): "LongStorage", np.dtype(np.float16): "HalfStorage"}


class _Global:
    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle only checks that a reduce function is callable
        raise TypeError("marker")


class _Storage:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


class _Tensor:
    def __init__(self, storage: _Storage, shape: tuple[int, ...]):
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
        return (_Global("torch._utils", "_rebuild_tensor_v2"),
                (self.storage, 0, self.shape, stride, False, collections.OrderedDict()))


class Module:
    """A TorchScript module object: ``__torch__.<qualname>`` with attributes ``attrs``."""

    def __init__(self, qualname: str, attrs: dict):
        self.qualname, self.attrs = qualname, attrs

    def __reduce__(self):
        module, name = self.qualname.rsplit(".", 1)
        return _Global(module, name), (), {"training": False, **self.attrs}


class _Writer(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file, legacy: bool, location: str = "cpu"):
        super().__init__(file, protocol=2)
        self.legacy, self.storages, self.location = legacy, [], location

    def _save_global(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[_Global] = _save_global

    def persistent_id(self, obj):
        if not isinstance(obj, _Storage):
            return None
        self.storages.append(obj)
        pid = ("storage", _Global("torch", _STORAGE_NAMES[obj.array.dtype]), obj.key, self.location, obj.array.size)
        return pid + (None,) if self.legacy else pid


def _wrap(obj, counter: list[int]):
    """Arrays -> _Tensor with a fresh storage key; dicts/Modules recursively."""
    if isinstance(obj, np.ndarray):
        key = str(counter[0])
        counter[0] += 1
        a = np.array(obj, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        return _Tensor(_Storage(key, a), tuple(a.shape))
    if isinstance(obj, Module):
        return Module(obj.qualname, {k: _wrap(v, counter) for k, v in obj.attrs.items()})
    if isinstance(obj, dict):
        out = collections.OrderedDict((k, _wrap(v, counter)) for k, v in obj.items())
        return out
    return obj


def _pickle(obj, legacy: bool, location: str = "cpu") -> tuple[bytes, list[_Storage]]:
    buf = io.BytesIO()
    w = _Writer(buf, legacy, location)
    w.dump(_wrap(obj, [0]))
    return buf.getvalue(), w.storages


def write_zip(path: str | Path, obj, *, root: str = "archive", script: bool = False) -> Path:
    """``torch.save(obj)`` (zip format) or, with ``script=True``, a ``torch.jit.save`` archive."""
    data, storages = _pickle(obj, legacy=False)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{root}/data.pkl", data)
        zf.writestr(f"{root}/byteorder", "little")
        for s in storages:
            zf.writestr(f"{root}/data/{s.key}", s.array.astype(s.array.dtype.newbyteorder("<")).tobytes())
        zf.writestr(f"{root}/version", "3\n")
        if script:
            zf.writestr(f"{root}/code/__torch__.py", "# TorchScript code is not read by psm_jax\n")
            zf.writestr(f"{root}/constants.pkl", pickle.dumps((), protocol=2))
    return Path(path)


def write_legacy(path: str | Path, obj, location: str = "cpu") -> Path:
    """``torch.save(obj, _use_new_zipfile_serialization=False)``: the pre-1.6 format.

    ``location="cuda:0"`` mimics a file saved from a GPU (the lpips weights)."""
    data, storages = _pickle(obj, legacy=True, location=location)
    with open(path, "wb") as f:
        for header in (0x1950a86a20f9469cfc6c, 1001,
                       {"protocol_version": 1001, "little_endian": True,
                        "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            f.write(pickle.dumps(header, protocol=2))
        f.write(data)
        f.write(pickle.dumps([s.key for s in storages], protocol=2))
        for s in storages:
            f.write(np.int64(s.array.size).tobytes())
            f.write(s.array.tobytes())
    return Path(path)


def write_malicious(path: str | Path) -> Path:
    """A zip checkpoint whose pickle calls ``os.system``: the reader must refuse it."""
    buf = io.BytesIO()
    w = _Writer(buf, legacy=False)

    class Evil:
        def __reduce__(self):
            return _Global("os", "system"), ("echo pwned",)

    w.dump(Evil())
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
    return Path(path)
