"""Per-device memory and FLOPs of the training programs on a device mesh, before renting the
pod (paper Sec. 4.2's batch-32 training; project issue 25).

:func:`analyze` builds ``train.compiled_program(config, mesh)``, the jitted G + D step and lazy-R1
step that training runs, with the same shardings and donation, lowers them from abstract
sharded arguments and compiles them. Nothing is allocated or run. It reads XLA's
``memory_analysis()`` and ``cost_analysis()`` of each compiled program and sums the train state's
per-device shards (parameters, Adam moments, EMA) from the state shardings.

The mesh is usually made of simulated CPU devices (:func:`use_cpu_devices`), so the figures are
XLA:CPU's: the CPU compiler fuses and schedules differently from the TPU and GPU compilers, so
its temporaries are an estimate of theirs. docs/SCALING.md gives the measured gaps. The
argument, output and state bytes are exact on every backend, because they follow from shapes and
shardings alone.

Used by ``bench/scaling.py`` (the tables of docs/SCALING.md) and by
``python -m psm_jax.models.summary --mesh`` (one configuration, one line).
"""
from __future__ import annotations

import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from psm_jax import sharding as shd
from psm_jax import train

GIB = 2.0 ** 30
CPU_NOTE = ("XLA:CPU estimate: the TPU/GPU compilers fuse and schedule differently, so temporaries "
            "differ on those backends (docs/SCALING.md); arguments, outputs and state are exact")
# Which train-state entries are which (train.init_state's dict).
STATE_GROUPS = {"params": ("g_params", "d_params"), "opt": ("g_opt", "d_opt"), "ema": ("g_ema_params",)}
# XLA:CPU's buffer assignment and cost analysis run on the optimised HLO, before LLVM compiles it
# to machine code, so a program that is only planned skips LLVM's optimisation passes: the same
# memory and FLOP figures in a fraction of the compile time (docs/SCALING.md compares both).
PLAN_ONLY_OPTIONS = {"xla_backend_optimization_level": 0}
_MESH_RE = re.compile(r"(data|fsdp)=([0-9]+)")


def parse_mesh(text: str) -> tuple[int, int]:
    """``"data=4,fsdp=2"`` -> ``(4, 2)``; an axis left out is 1 (``"data=8"`` -> ``(8, 1)``).

    Raises ValueError saying what was expected.
    """
    expected = "expected data=N[,fsdp=M] with positive integers, e.g. data=4,fsdp=2"
    sizes: dict[str, int] = {}
    for part in str(text).split(","):
        m = _MESH_RE.fullmatch(part.strip())
        if m is None or m.group(1) in sizes or int(m.group(2)) < 1:
            raise ValueError(f"mesh {text!r}: {expected}")
        sizes[m.group(1)] = int(m.group(2))
    return sizes.get("data", 1), sizes.get("fsdp", 1)


def mesh_name(data: int, fsdp: int) -> str:
    return f"data={data},fsdp={fsdp}"


def use_cpu_devices(n: int) -> None:
    """Asks JAX for ``n`` CPU devices (``jax_num_cpu_devices``, the config form of
    ``--xla_force_host_platform_device_count``). It takes effect only before JAX's first
    computation; afterwards it raises ValueError unless the CPU already has ``n`` or more."""
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        have = len(jax.devices("cpu"))
        if have < n:
            raise ValueError(f"{n} CPU devices are needed but JAX already started with {have}; "
                             f"set the device count before the first JAX computation") from None


def make_mesh(data: int, fsdp: int, platform: str = "cpu") -> Mesh:
    """train.py's (data, fsdp) mesh over the first ``data * fsdp`` devices of ``platform``."""
    devices = jax.devices(platform)
    if len(devices) < data * fsdp:
        raise ValueError(f"mesh {mesh_name(data, fsdp)} needs {data * fsdp} {platform} devices, "
                         f"found {len(devices)}")
    return shd.make_mesh(fsdp, devices[:data * fsdp])


def _shard_bytes(leaf: Any, sharding: Any) -> int:
    return int(np.prod(sharding.shard_shape(tuple(leaf.shape)), dtype=np.int64)) * leaf.dtype.itemsize


def state_bytes(abstract: dict, shardings: dict) -> dict[str, int]:
    """Bytes one device holds of each part of the train state (its shard of every leaf).

    ``params`` is G + D, ``opt`` their Adam moments, ``ema`` G's EMA copy and ``other`` the
    rest (step, buffers, ADA); ``params_replicated`` is the part of ``params`` in leaves that
    stay whole on every device (biases and other arrays below sharding's size threshold, or
    with no dimension the fsdp axis divides).
    """
    out = {}
    grouped = set()
    for group, keys in STATE_GROUPS.items():
        out[group] = sum(_shard_bytes(a, s) for k in keys
                         for a, s in zip(jax.tree.leaves(abstract[k]), jax.tree.leaves(shardings[k])))
        grouped.update(keys)
    out["other"] = sum(_shard_bytes(a, s) for k in abstract if k not in grouped
                       for a, s in zip(jax.tree.leaves(abstract[k]), jax.tree.leaves(shardings[k])))
    out["params_replicated"] = sum(
        _shard_bytes(a, s) for k in STATE_GROUPS["params"]
        for a, s in zip(jax.tree.leaves(abstract[k]), jax.tree.leaves(shardings[k]))
        if s.is_fully_replicated)
    out["total"] = out["params"] + out["opt"] + out["ema"] + out["other"]
    return out


def compiled_memory(compiled: Any, constant_bytes: int = 0) -> dict[str, float]:
    """Per-device bytes of one compiled program (``memory_analysis()``) and its FLOPs
    (``cost_analysis()``, 2 per multiply-add). ``total`` = arguments + outputs + temporaries -
    aliased (the donated state is written in place, so its outputs cost nothing extra) +
    ``constant_bytes``, arrays the program closes over (the analysis counts none of them)."""
    m = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):   # older jax: one dict per computation
        cost = cost[0] if cost else {}
    out = {"argument": int(m.argument_size_in_bytes), "output": int(m.output_size_in_bytes),
           "temp": int(m.temp_size_in_bytes), "alias": int(m.alias_size_in_bytes),
           "constant": int(constant_bytes)}
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"] + out["constant"]
    out["flops"] = float((cost or {}).get("flops", 0.0))
    return out


def for_planning(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config``, with random perceptual ResNet weights if it names no weights file: the same
    shapes and FLOPs, and the weights (never downloaded) are not needed to plan memory."""
    config = config.copy_and_resolve_references()
    if config.loss.pcp_weight and not config.loss.perceptual_weights:
        config.loss.perceptual_random_init = True
    return config


def abstract_arguments(program: train.Program, config: ml_collections.ConfigDict) -> tuple[Any, dict]:
    """The (state, batch) a step is lowered with: shapes, dtypes and shardings, no data."""
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         program.abstract, program.state_sh)
    r, b = config.model.resolution, config.batch_size
    batch = {"image": jax.ShapeDtypeStruct((b, r, r, 3), jnp.float32, sharding=program.batch_sharding),
             "mask": jax.ShapeDtypeStruct((b, r, r, 1), jnp.float32, sharding=program.batch_sharding)}
    return state, batch


def analyze(config: ml_collections.ConfigDict, mesh: Mesh, *, steps: tuple[str, ...] = ("train", "r1"),
            keep_compiled: bool = False, plan_only: bool = True) -> dict[str, Any]:
    """Compiles ``steps`` (of "train", "r1") of ``config`` on ``mesh``; one flat dict of figures.

    Keys: ``data``, ``fsdp``, ``devices``, ``batch``, ``per_device_batch``; ``state_*_bytes``
    (:func:`state_bytes`); for each step ``<step>_{argument,output,temp,alias,total}_bytes``,
    ``<step>_gflop`` (per device) and ``<step>_compile_s``; ``train_constant_bytes`` are the frozen
    perceptual ResNet's weights, which the G step closes over (constants in every device's copy
    of the program, not arguments); ``peak_bytes``, the larger step total
    (the two programs never run at once, and the state is an argument of both). With
    ``keep_compiled`` the compiled programs are returned too, under ``"compiled"``.

    ``plan_only`` (programs that will never run) compiles XLA:CPU programs without LLVM's
    optimisation passes (:data:`PLAN_ONLY_OPTIONS`).
    """
    jax.config.update("jax_threefry_partitionable", True)   # as train_and_evaluate sets it
    config = for_planning(config)
    shd.check_batch_size(config.batch_size, mesh)
    program = train.compiled_program(config, mesh)
    data, fsdp = mesh.shape["data"], mesh.shape["fsdp"]
    row: dict[str, Any] = {"data": data, "fsdp": fsdp, "devices": data * fsdp, "batch": config.batch_size,
                           "per_device_batch": config.batch_size // (data * fsdp)}
    row.update({f"state_{k}_bytes": v for k, v in state_bytes(program.abstract, program.state_sh).items()})
    state, batch = abstract_arguments(program, config)
    jitted = {"train": program.train_step, "r1": program.r1_step}
    constants = {"train": sum(int(a.nbytes) for a in jax.tree.leaves(program.models.perceptual_params)),
                 "r1": 0}
    compiled = {}
    options = PLAN_ONLY_OPTIONS if plan_only and mesh.devices.flat[0].platform == "cpu" else None
    row["plan_only"] = options is not None
    for name in steps:
        t0 = time.perf_counter()
        compiled[name] = jitted[name].lower(state, batch).compile(compiler_options=options)
        row[f"{name}_compile_s"] = round(time.perf_counter() - t0, 2)
        mem = compiled_memory(compiled[name], constants[name])
        row.update({f"{name}_{k}_bytes": v for k, v in mem.items() if k != "flops"})
        row[f"{name}_gflop"] = round(mem["flops"] / 1e9, 3)
    row["peak_bytes"] = max(row[f"{name}_total_bytes"] for name in steps)
    if keep_compiled:
        row["compiled"] = compiled
    return row


def gib(n: float) -> float:
    return n / GIB


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= 0.1 * GIB else f"{n / 2 ** 20:.1f} MiB"


def memory_line(row: dict[str, Any]) -> str:
    """One line a person reads: per-device state, step totals and FLOPs of an :func:`analyze` row."""
    f = lambda key: _size(row[key])  # noqa: E731
    steps = [s for s in ("train", "r1") if f"{s}_total_bytes" in row]
    parts = []
    for s in steps:
        const = f" + constants {f(f'{s}_constant_bytes')}" if row[f"{s}_constant_bytes"] else ""
        parts.append(f"{s} step {f(f'{s}_total_bytes')} (args {f(f'{s}_argument_bytes')} + temp "
                     f"{f(f'{s}_temp_bytes')} + out {f(f'{s}_output_bytes')} - aliased "
                     f"{f(f'{s}_alias_bytes')}{const})")
    flops = ", ".join(f"{s} {row[f'{s}_gflop'] / 1e3:.4g} TFLOP" for s in steps)
    return (f"per device on {mesh_name(row['data'], row['fsdp'])} ({row['devices']} devices), global batch "
            f"{row['batch']} ({row['per_device_batch']}/device): state {f('state_total_bytes')} "
            f"(params {f('state_params_bytes')}, Adam {f('state_opt_bytes')}, EMA {f('state_ema_bytes')}); "
            f"{'; '.join(parts)}; peak {f('peak_bytes')}; per step per device {flops}")
