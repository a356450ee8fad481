"""Cold compile time of each program a training run builds (project issue 26): init, train step, lazy R1 step.

    .venv/bin/python bench/compile_time.py                                   # configs/demo.py:tiny and psm.py:tiny
    .venv/bin/python bench/compile_time.py --configs configs/psm.py:tiny --repeats 2
    XLA_FLAGS=--xla_backend_optimization_level=0 .venv/bin/python bench/compile_time.py   # the test suite's flags

The programs are built exactly as ``psm_jax.train`` builds them (``train.compiled_program`` on a one-device mesh)
and compiled from shapes (``lower(...).compile()``), so nothing runs. The persistent compilation cache is off
(``jax_enable_compilation_cache = False``) unless ``--cache`` is given, so every figure is a cold compile; with
``--cache`` and ``JAX_COMPILATION_CACHE_DIR`` set, a second run measures a cache read instead. One JSON line per
(config, repeat): ``init_s``, ``train_step_s``, ``r1_step_s``, ``total_s``, the generator's parameter count,
``xla_flags`` and ``load1`` (max of before/after; the CPU may be shared). ``--repeats`` > 1 re-lowers with fresh
jit wrappers, so the later repeats still compile (XLA's own in-memory cache is keyed on the wrapper).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from psm_jax import config_lib  # noqa: E402
from psm_jax import sharding as shd  # noqa: E402
from psm_jax import train as trainer  # noqa: E402
from psm_jax import train_step as ts  # noqa: E402

DEFAULT_CONFIGS = "configs/demo.py:tiny,configs/psm.py:tiny"


def _timed_compile(jitted, *args) -> float:
    t0 = time.perf_counter()
    jitted.lower(*args).compile()
    return time.perf_counter() - t0


def bench(spec: str, overrides: dict | None = None) -> dict:
    config = config_lib.load_config(spec, overrides)
    mesh = shd.make_mesh(1, devices=jax.devices()[:1])
    pc = trainer.program_config(config)
    models = trainer.build_models(pc)
    key = jax.random.key(0)
    state = jax.eval_shape(lambda k: trainer.init_state(pc, models, k), key)
    state_sh = shd.state_shardings(state, mesh)
    batch_sh, rep = shd.batch_sharding(mesh), shd.replicated(mesh)
    init = jax.jit(lambda k: trainer.init_state(pc, models, k), out_shardings=state_sh)
    step = jax.jit(ts.make_train_step(pc, models), in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, rep),
                   donate_argnums=0)
    r1 = jax.jit(ts.make_r1_step(pc, models), in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, rep),
                 donate_argnums=0)
    r, b = config.model.resolution, config.batch_size
    batch = {"image": jax.ShapeDtypeStruct((b, r, r, 3), jnp.float32),
             "mask": jax.ShapeDtypeStruct((b, r, r, 1), jnp.float32)}
    load_before = common.load1()
    init_s = _timed_compile(init, key)
    step_s = _timed_compile(step, state, batch)
    r1_s = _timed_compile(r1, state, batch)
    loads = [x for x in (load_before, common.load1()) if x is not None]
    g_params = sum(x.size for x in jax.tree.leaves(state["g_params"]))
    return {"bench": "compile_time", "config": spec, "resolution": r, "batch": b,
            "num_down": config.model.get("num_down", 5), "g_params": int(g_params),
            "init_s": round(init_s, 2), "train_step_s": round(step_s, 2), "r1_step_s": round(r1_s, 2),
            "total_s": round(init_s + step_s + r1_s, 2), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "cache": bool(jax.config.jax_enable_compilation_cache), "load1": max(loads) if loads else None,
            "device": common.device_name()}


def main(argv: list[str] | None = None) -> int:
    ap = common.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated config specs (file[:variant])")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--cache", action="store_true", help="keep the persistent compilation cache on (a warm read)")
    args = ap.parse_args(argv)
    specs = [s.strip() for s in args.configs.split(",") if s.strip()]
    missing = [s for s in specs if not Path(s.split(":", 1)[0]).is_file()]
    if missing or not specs:
        common.fail("bench/compile_time.py", f"--configs: no config file {missing[0] if missing else '(empty)'}")
    if args.repeats < 1:
        common.fail("bench/compile_time.py", f"--repeats must be >= 1, got {args.repeats}")
    if not args.cache:
        jax.config.update("jax_enable_compilation_cache", False)
    jax.config.update("jax_threefry_partitionable", True)   # as train_and_evaluate sets it
    for spec in specs:
        for i in range(args.repeats):
            common.emit({**bench(spec), "repeat": i})
    return 0


if __name__ == "__main__":
    sys.exit(main())
