"""Device mesh and shardings for the train state and batches (Sec. 4.2 trains on 8 GPUs; we
target pods).

The mesh has two axes: ``data`` and ``fsdp``. Batches are split over both (every device sees a
distinct slice of the global batch). Parameters and optimizer state are replicated when
``fsdp == 1``; otherwise each array is split along its largest dimension that the fsdp axis
divides (small arrays such as biases stay replicated), which is ZeRO-3-style sharding that XLA
all-gathers on use.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
# Arrays smaller than this stay replicated even with fsdp: splitting them saves nothing.
_MIN_FSDP_SIZE = 2 ** 14


def make_mesh(fsdp: int = 1, devices: list | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"config.mesh.fsdp={fsdp} must divide the device count {len(devices)}")
    return Mesh(np.array(devices).reshape(len(devices) // fsdp, fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _spec_for(shape: tuple[int, ...], fsdp: int) -> P:
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < _MIN_FSDP_SIZE:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
    """NamedShardings for every leaf of an abstract (eval_shape) train state."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda a: NamedSharding(mesh, _spec_for(tuple(a.shape), fsdp)),
                        abstract_state)


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(f"config.batch_size={global_batch} must be a multiple of the "
                         f"device count {n}")
    if global_batch % jax.process_count():
        raise ValueError(f"config.batch_size={global_batch} must be a multiple of the "
                         f"process count {jax.process_count()}")
