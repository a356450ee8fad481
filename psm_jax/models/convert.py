"""Name-based conversion between MAT/StyleGAN2 PyTorch state dicts and the Flax variables of psm_jax modules.

Supports the parity tests against MAT (/work/shared/golden/README.md, "Torch -> JAX/Flax layout") and loading
MAT-style checkpoints. Usage:

    spec = ConversionSpec.from_module(module, *example_args, **call_kwargs)   # shapes only (jax.eval_shape)
    variables = torch_to_flax(spec, state_dict)        # {"params": ..., "buffers": ...}, numpy arrays
    state_dict = flax_to_torch(spec, variables)        # exact inverse (transposes only)

Naming rule: a Flax module path maps to the torch name by joining with "." and turning a trailing "_<digits>"
of a component into ".<digits>" (`Dis_1/conv0/kernel` -> `Dis.1.conv0.weight`, `conv_0` -> `conv.0`).
Leaf names are kept except `kernel` -> `weight`. Layouts follow the class of the owning module (recorded while
tracing `init`): FullyConnected [in,out] <-> [out,in]; Conv2dLayer HWIO <-> OIHW; ModulatedConv2d HWIO <->
[1,O,I,kh,kw]. Every Conv2dLayer, ModulatedConv2d and ToRGB has a MAT `resample_filter` buffer; on import it must
equal `ops.fir_filter_2d()` and is dropped (the ops use the fixed filter); on export it is re-created.
Any missing key, unexpected key or shape mismatch raises a ValueError naming the key.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from psm_jax.models.layers import Conv2dLayer, FullyConnected, ModulatedConv2d, StyleConv, ToRGB
from psm_jax.models.mapping import MappingNetwork
from psm_jax.models.ops import fir_filter_2d

FILTER = "filter"  # layout tag of resample_filter buffers (no Flax variable)

# torch layout -> Flax layout, and back.
_TO_FLAX = {
    "identity": lambda a: a,
    "linear": lambda a: a.T,
    "conv": lambda a: a.transpose(2, 3, 1, 0),
    "modconv": lambda a: a[0].transpose(2, 3, 1, 0),
}
_TO_TORCH = {
    "identity": lambda a: a,
    "linear": lambda a: a.T,
    "conv": lambda a: a.transpose(3, 2, 0, 1),
    "modconv": lambda a: a.transpose(3, 2, 0, 1)[None],
}

# (owning module class, collection, Flax leaf name) -> layout. Anything else in a spec is an error.
_LEAF_LAYOUTS: dict[tuple[type, str, str], str] = {
    (FullyConnected, "params", "kernel"): "linear",
    (FullyConnected, "params", "bias"): "identity",
    (Conv2dLayer, "params", "kernel"): "conv",
    (Conv2dLayer, "params", "bias"): "identity",
    (ModulatedConv2d, "params", "kernel"): "modconv",
    (StyleConv, "params", "bias"): "identity",
    (StyleConv, "params", "noise_strength"): "identity",
    (StyleConv, "buffers", "noise_const"): "identity",
    (ToRGB, "params", "bias"): "identity",
    (MappingNetwork, "buffers", "w_avg"): "identity",
}
_HAS_RESAMPLE_FILTER = (Conv2dLayer, ModulatedConv2d, ToRGB)


def torch_to_flax_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """One array from torch layout ("linear", "conv", "modconv", "identity") to the Flax layout."""
    return np.asarray(_TO_FLAX[layout](np.asarray(array)))


def flax_to_torch_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """Inverse of `torch_to_flax_layout`."""
    return np.asarray(_TO_TORCH[layout](np.asarray(array)))


def _torch_component(name: str) -> str:
    return re.sub(r"_(\d+)$", r".\1", name)


def torch_name(path: Iterable[str]) -> str:
    """Flax path (module names + leaf) -> torch state-dict name."""
    parts = [_torch_component(p) for p in path]
    if parts and parts[-1] == "kernel":
        parts[-1] = "weight"
    return ".".join(parts)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One torch state-dict key. `collection`/`path` locate the Flax variable (None for resample filters)."""

    torch_name: str
    layout: str
    torch_shape: tuple[int, ...]
    collection: str | None = None
    path: tuple[str, ...] = ()
    flax_shape: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class ConversionSpec:
    """Every torch key of a module with its Flax location, layout and shapes."""

    entries: tuple[Entry, ...]

    @classmethod
    def from_module(cls, module: nn.Module, *example_args: Any, **call_kwargs: Any) -> ConversionSpec:
        """Traces `module.init(rngs, *example_args, **call_kwargs)` abstractly (arrays or ShapeDtypeStructs)."""
        owners: dict[tuple[str, ...], type] = {}

        def record(next_fun, args, kwargs, context):
            owners[tuple(context.module.scope.path)] = type(context.module)
            return next_fun(*args, **kwargs)

        rngs = {"params": jax.random.key(0), "noise": jax.random.key(1)}
        with nn.intercept_methods(record):
            shapes = jax.eval_shape(lambda a: module.init(rngs, *a, **call_kwargs), example_args)

        entries = []
        for (collection, *path), leaf in traverse_util.flatten_dict(dict(shapes)).items():
            path = tuple(path)
            owner = owners.get(path[:-1])
            layout = _LEAF_LAYOUTS.get((owner, collection, path[-1]))
            if layout is None:
                raise ValueError(f"no torch mapping for variable {collection}/{'/'.join(path)} "
                                 f"(owner {getattr(owner, '__name__', owner)})")
            flax_shape = tuple(leaf.shape)
            torch_shape = flax_to_torch_layout(np.empty(flax_shape, np.bool_), layout).shape
            entries.append(Entry(torch_name(path), layout, tuple(torch_shape), collection, path, flax_shape))
        for path, owner in owners.items():
            if issubclass(owner, _HAS_RESAMPLE_FILTER):
                entries.append(Entry(torch_name((*path, "resample_filter")), FILTER, (4, 4)))
        names = [e.torch_name for e in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"two Flax variables map to the same torch name in {sorted(names)}")
        return cls(tuple(sorted(entries, key=lambda e: e.torch_name)))

    @property
    def collections(self) -> tuple[str, ...]:
        return tuple(sorted({e.collection for e in self.entries if e.collection is not None}))

    def torch_names(self) -> list[str]:
        return [e.torch_name for e in self.entries]


def torch_to_flax(spec: ConversionSpec, state_dict: Mapping[str, Any], dtype: Any = None) -> dict[str, Any]:
    """Torch state dict (name -> array in torch layout) -> Flax variables {collection: nested dict}.

    Raises ValueError on a missing key, an unexpected key, a shape mismatch or a resample_filter that is not the
    [1,3,3,1] FIR. `dtype` optionally casts every array (e.g. np.float64 for x64 parity runs).
    """
    expected = {e.torch_name: e for e in spec.entries}
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        raise ValueError(f"unexpected key(s) in state dict: {unexpected}")
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        raise ValueError(f"missing key(s) in state dict: {missing}")
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for name, entry in expected.items():
        array = np.asarray(state_dict[name])
        if array.shape != entry.torch_shape:
            raise ValueError(f"shape mismatch for {name!r}: got {array.shape}, expected {entry.torch_shape}")
        if entry.layout == FILTER:
            if not np.array_equal(array, fir_filter_2d()):
                raise ValueError(f"{name!r} is not the [1,3,3,1] FIR filter this port hard-codes")
            continue
        array = torch_to_flax_layout(array, entry.layout)
        flat[(entry.collection, *entry.path)] = array if dtype is None else array.astype(dtype)
    return traverse_util.unflatten_dict(flat)


def flax_to_torch(spec: ConversionSpec, variables: Mapping[str, Any], collections: Iterable[str] | None = None,
                  include_filters: bool = True) -> dict[str, np.ndarray]:
    """Flax variables -> torch state dict; the exact inverse of `torch_to_flax`.

    `collections` (default: all of the spec's) selects what to export and must be complete in `variables`;
    e.g. `flax_to_torch(spec, {"params": grads}, collections=["params"], include_filters=False)` names gradients.
    """
    wanted = set(spec.collections if collections is None else collections)
    extra = sorted(set(variables) - set(spec.collections)) if collections is None else []
    if extra:
        raise ValueError(f"unexpected Flax collection(s): {extra}")
    flat = {k: v for k, v in traverse_util.flatten_dict(dict(variables)).items() if k[0] in wanted}
    known = {(e.collection, *e.path): e for e in spec.entries if e.collection in wanted}
    unexpected = sorted("/".join(k) for k in set(flat) - set(known))
    if unexpected:
        raise ValueError(f"unexpected Flax variable(s): {unexpected}")
    out: dict[str, np.ndarray] = {}
    for key, entry in known.items():
        if key not in flat:
            raise ValueError(f"missing Flax variable {'/'.join(key)} (torch {entry.torch_name!r})")
        array = np.asarray(flat[key])
        if array.shape != entry.flax_shape:
            raise ValueError(f"shape mismatch for {'/'.join(key)}: got {array.shape}, expected {entry.flax_shape}")
        out[entry.torch_name] = flax_to_torch_layout(array, entry.layout)
    if include_filters:
        out.update({e.torch_name: fir_filter_2d() for e in spec.entries if e.layout == FILTER})
    return out
