"""Shared test helpers.

Tests that read ``../shared`` (golden cases, reference statistics) find it through
``PSM_SHARED_DIR`` (default: ``../shared`` beside the repository). When it is missing they
skip with a reason, except under ``CI=true``, where a missing reference is a failure: CI
must never go green by skipping the parity checks.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import threadpoolctl

REPO_ROOT = Path(__file__).resolve().parents[1]

# Compile once, test many times. On 2 CPU cores the suite is dominated by XLA compiling the tiny
# train step (~80 s each), and many tests, and the subprocesses they start, compile the very same
# program. These settings reach the subprocesses through the environment; each can be overridden
# from outside. They change how fast programs compile, never what they compute or what a test
# asserts:
# * the persistent compilation cache, shared by the xdist workers: a second identical program is a
#   cache read (a partly written entry fails its checksum and is recompiled, never misread);
# * --xla_backend_optimization_level=0: LLVM without its optimisation passes halves the compile
#   time of the tiny programs, whose run time (convolutions are library calls) does not change.
# * one BLAS thread per process: `make test` runs one xdist worker per core, and OpenBLAS's threads
#   spin-wait for a core that another worker holds (a 2048x2048 eigh of the FID: 1.8 s on one thread,
#   24 s on two under the suite's load; docs/TESTING.md).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO_ROOT / ".cache" / "jax-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
TEST_XLA_FLAGS = os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
# A plugin may have loaded numpy (and with it OpenBLAS) before this file set the variable above.
threadpoolctl.threadpool_limits(int(os.environ["OPENBLAS_NUM_THREADS"]), user_api="blas")


def xla_flags(devices: int) -> str:
    """``XLA_FLAGS`` for a subprocess with ``devices`` CPU devices (keeps the suite's flags).

    One device adds no flag: every single-device run of the suite (tests/test_train.py,
    test_faults.py, the sweep's runs, ...) then has the same flags, and so the same
    compilation-cache keys, and the first run's compile serves all the others."""
    if devices == 1:
        return TEST_XLA_FLAGS
    return f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={devices}".strip()


def shared_dir() -> Path:
    return Path(os.environ.get("PSM_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_path(path: Path, what: str) -> Path:
    """Returns ``path`` if it exists; otherwise skips (locally) or fails (CI)."""
    if path.exists():
        return path
    msg = f"{what} not found at {path} (set PSM_SHARED_DIR)"
    if in_ci():
        pytest.fail(msg)
    pytest.skip(msg)


def require_shared(*parts: str) -> Path:
    return require_path(shared_dir().joinpath(*parts), "/".join(parts))


def train_in_process(spec: str, workdir: Path, overrides: dict | None = None) -> dict:
    """``train_and_evaluate`` in the test process, for runs that need no process boundary.

    A later run of the same model in this worker reuses its traced and compiled steps
    (``psm_jax.train.compiled_program``): about 6 s for a 6-step tiny run instead of about 35 s
    for a fresh ``python -m psm_jax.main`` that loads them from the compilation cache. Runs
    whose point is the process (a kill, a signal, an exit code, a device count) stay subprocesses.
    """
    from psm_jax import train
    from psm_jax.config_lib import load_config

    return train.train_and_evaluate(load_config(spec, {"progress_bar": False, **(overrides or {})}), workdir)


# `make test` hands whole files to the two xdist workers in collection order (--dist loadfile), so
# the slowest files go first (the longest-first rule keeps a long file from starting last and
# running alone), and a file that compiles a program starts before the file that reuses it from
# the compilation cache (test_configs compiles psm.py:tiny, which the smoke sweep then loads).
SLOW_FILES_FIRST = ("test_multihost.py", "test_train.py", "test_demo.py", "test_configs.py",
                    "test_faults.py", "test_train_step.py", "test_evaluate_cli.py", "test_sweep.py",
                    "test_bad_input.py", "test_fid_ids.py", "test_generator.py", "test_inpaint.py",
                    "test_spread.py", "test_bench.py", "test_mat_parity.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), order[id(item)]))
