"""Multi-process runs: the ``jax.distributed`` setup, and lining the processes up after compiling.

Why the line-up (measured on jax 0.10.2; docs/TESTING.md, "Multi-process runs and the compilation
cache"): a process meets the others at its first collective on a new set of devices, and on CPU
(gloo) that first meeting waits only 30 s (``Gloo context initialization failed: DEADLINE_EXCEEDED``).
With the persistent compilation cache on, one process can load the train step from the cache while
another compiles it for minutes: on CPU the cache key holds each process's own topology
fingerprint, and jax writes entries from process 0 only, so process 0 finds its program and every
other process never does. Process 0 then reaches the step's first collective minutes early and the
run dies. :func:`compile_then_meet` compiles every step first, then waits at a barrier of the
coordination service (no device collective, a long timeout), so the processes start the first step
together whatever each found in the cache. ``jax_share_binary_between_hosts`` is no way out on CPU:
a process waits for a program published under its *own* key, which no other process computes.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import jax
from orbax.checkpoint import multihost as orbax_multihost

# A process waits this long at the barrier for the slowest compile (a 512 px step on a busy host).
BARRIER_TIMEOUT_S = 3600
_barrier_ids = itertools.count()


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """``jax.distributed.initialize``: explicit for a local cluster, auto-detected on a pod (all None)."""
    kwargs = {}
    if coordinator and coordinator.split(":")[0] in ("127.0.0.1", "localhost"):
        # A local cluster: keep the coordinator on loopback (it binds every interface otherwise).
        kwargs["coordinator_bind_address"] = coordinator
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, **kwargs)


def compile_then_meet(name: str, programs: Iterable[tuple[Any, tuple]]) -> None:
    """Compiles each ``(jitted_fn, example_args)`` (a later call reuses the executable), then, with
    several processes, waits until every process has done the same (see the module docstring)."""
    for fn, args in programs:
        fn.lower(*args).compile()
    if jax.process_count() > 1:
        sync = orbax_multihost.get_barrier_sync_fn()
        sync(key=f"psm_jax/{name}/{next(_barrier_ids)}", timeout_ms=BARRIER_TIMEOUT_S * 1000)
