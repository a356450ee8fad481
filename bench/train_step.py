"""Throughput, memory and MFU of the PSM training step (G + D, paper Sec. 3.3 / 4.2; project issue 7).

    .venv/bin/python bench/train_step.py                               # tiny and 256, batch 2, remat off/on
    .venv/bin/python bench/train_step.py --configs tiny --batch_size 4 8 --repeats 5
    .venv/bin/python bench/train_step.py --configs 512 --batch_size 2 --remat on --max_seconds 120 --dtype bfloat16
    .venv/bin/python bench/train_step.py --configs 512 --batch_size 1 2 --compile_only   # FLOPs + memory estimate only

The step is built exactly as psm_jax.train does it: ``build_models``, ``init_state``, ``make_train_step`` and
``make_r1_step``, jitted with the state donated, from ``configs/psm.py:tiny`` / ``:places256`` / ``:places512``
with the overrides ``batch_size``, ``spread.remat``, ``compute_dtype`` and ``loss.pcp_weight = 0`` (the
perceptual ResNet-50 needs weights; ``--pcp`` keeps it with random weights, same FLOPs). places256 trains with
T = 3 spread iterations (Table 1, model A), places512 with T = 2.

One JSON line per (config, dtype, batch, remat): step_s (median wall time of the G + D step after one warm-up
step), img_per_s = batch / step_s, r1_s (the lazy R1 step, run every ``loss.r1_interval`` steps) and
img_per_s_with_r1 (amortised), compile_s, gflop_step (XLA cost analysis of the compiled step), gflop_per_s,
peak_gflop_per_s (bench/peak.py's file for this device and dtype, else a quick matmul + conv measurement) and
mfu = gflop_per_s / peak_gflop_per_s; memory from ``compiled.memory_analysis()``: temp, argument and output
bytes and mem_est_gib = (temp + argument + output - alias) / 2**30; on GPU/TPU also peak_gib from
``device.memory_stats()["peak_bytes_in_use"]`` (process-wide, so run one configuration per process for a clean
figure). ``--max_seconds`` caps the timed steps of one configuration (at least one is kept).
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import peak  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from psm_jax import config_lib  # noqa: E402
from psm_jax import train as trainer  # noqa: E402
from psm_jax import train_step as ts  # noqa: E402

CONFIGS = {"tiny": "configs/psm.py:tiny", "256": "configs/psm.py:places256", "512": "configs/psm.py:places512"}
MD_COLUMNS = ("device", "dtype", "config", "batch", "remat", "T_train", "step_s", "img_per_s", "img_per_s_with_r1",
              "gflop_step", "gflop_per_s", "mfu", "mem_est_gib", "peak_gib", "compile_s", "load1")
GIB = 2.0**30


def _memory(compiled) -> dict:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        m = None
    if m is None:
        return {}
    temp, arg, out = m.temp_size_in_bytes, m.argument_size_in_bytes, m.output_size_in_bytes
    alias = getattr(m, "alias_size_in_bytes", 0)
    return {"temp_gib": round(temp / GIB, 3), "argument_gib": round(arg / GIB, 3), "output_gib": round(out / GIB, 3),
            "alias_gib": round(alias / GIB, 3), "mem_est_gib": round((temp + arg + out - alias) / GIB, 3)}


def _peak_gflop_per_s(dtype: str) -> tuple[float, str]:
    """This device's measured peak for ``dtype``: from bench/peak.py's file, else measured now (a few seconds)."""
    device = common.device_name()
    found = peak.read_peak(dtype, device)
    if found:
        return found, "bench/results/peak.jsonl"
    _, summary = peak.measure([dtype], repeats=2)
    return max(r["peak_gflop_per_s"] for r in summary), "measured now"


def bench(config_name: str, batch: int, remat: bool, dtype: str, repeats: int, max_seconds: float | None,
          pcp: bool, peak_gflop_per_s: float, compile_only: bool = False) -> dict:
    overrides = {"batch_size": batch, "spread.remat": remat, "compute_dtype": dtype}
    overrides.update({"loss.perceptual_random_init": True} if pcp else {"loss.pcp_weight": 0.0})
    config = config_lib.load_config(CONFIGS[config_name], overrides)
    models = trainer.build_models(config)
    r = config.model.resolution
    train_step = jax.jit(ts.make_train_step(config, models), donate_argnums=0)
    base = {"bench": "train_step", "config": config_name, "batch": batch, "remat": remat, "dtype": dtype,
            "T_train": config.spread.train_iters, "pcp": pcp}
    if compile_only:
        # Shapes only: nothing is allocated, so a config too large for this host's memory still
        # gets its FLOP count and XLA's memory estimate (e.g. 512 on a 24 GiB CPU machine).
        state = jax.eval_shape(lambda k: trainer.init_state(config, models, k), jax.random.key(config.seed))
        batch_data = {"image": jax.ShapeDtypeStruct((batch, r, r, 3), jnp.float32),
                      "mask": jax.ShapeDtypeStruct((batch, r, r, 1), jnp.float32)}
        t0 = time.perf_counter()
        compiled = train_step.lower(state, batch_data).compile()
        return {**base, "compile_only": True,
                "compile_s": round(time.perf_counter() - t0, 2),
                "gflop_step": round(common.xla_flops(compiled) / 1e9, 2), **_memory(compiled),
                "load1": common.load1(), "device": common.device_name()}
    state = jax.jit(lambda k: trainer.init_state(config, models, k))(jax.random.key(config.seed))
    rng = np.random.default_rng(0)
    batch_data = {"image": jnp.asarray(rng.uniform(-1, 1, (batch, r, r, 3)), jnp.float32),
                  "mask": jnp.asarray(rng.uniform(size=(batch, r, r, 1)) > 0.5, jnp.float32)}

    r1_step = jax.jit(ts.make_r1_step(config, models), donate_argnums=0)
    t0 = time.perf_counter()
    compiled = train_step.lower(state, batch_data).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled_r1 = r1_step.lower(state, batch_data).compile()
    compile_r1_s = time.perf_counter() - t0
    flops = common.xla_flops(compiled)

    load_before = common.load1()
    state, metrics = compiled(state, batch_data)  # warm-up
    jax.block_until_ready(metrics)
    times, start = [], time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch_data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    state, r1m = compiled_r1(state, batch_data)  # warm-up
    jax.block_until_ready(r1m)
    t0 = time.perf_counter()
    state, r1m = compiled_r1(state, batch_data)
    jax.block_until_ready(r1m)
    r1_s = time.perf_counter() - t0
    loads = [x for x in (load_before, common.load1()) if x is not None]

    step_s = statistics.median(times)
    interval = config.loss.r1_interval
    gflop_per_s = flops / 1e9 / step_s
    row = {**base, "step_s": round(step_s, 4),
           "img_per_s": round(batch / step_s, 3), "r1_s": round(r1_s, 4),
           "img_per_s_with_r1": round(batch / (step_s + r1_s / interval), 3), "repeats": len(times),
           "compile_s": round(compile_s, 2), "compile_r1_s": round(compile_r1_s, 2),
           "gflop_step": round(flops / 1e9, 2), "gflop_per_s": round(gflop_per_s, 2),
           "peak_gflop_per_s": peak_gflop_per_s, "mfu": round(gflop_per_s / peak_gflop_per_s, 4),
           "finite": bool(np.isfinite(float(metrics["g_loss"]))), **_memory(compiled),
           "load1": max(loads) if loads else None, "device": common.device_name()}
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            row["peak_gib"] = round(stats["peak_bytes_in_use"] / GIB, 3)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = common.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="tiny,256", help=f"comma-separated subset of {','.join(CONFIGS)}")
    ap.add_argument("--batch_size", type=int, nargs="+", default=[2])
    ap.add_argument("--remat", default="both", choices=["off", "on", "both"])
    ap.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max_seconds", type=float, default=None, help="cap on the timed steps of each configuration")
    ap.add_argument("--pcp", action="store_true", help="keep the perceptual loss (random ResNet-50 weights)")
    ap.add_argument("--markdown", action="store_true", help="update the train-step table of docs/BENCHMARKS.md")
    ap.add_argument("--compile_only", action="store_true",
                    help="compile from shapes only: FLOPs and memory estimate, no timing (configs too big for this host)")
    args = ap.parse_args(argv)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in names if c not in CONFIGS]
    if bad or not names:
        common.fail("bench/train_step.py", f"--configs takes a comma-separated subset of {','.join(CONFIGS)}, "
                                           f"got {args.configs!r}")
    if args.repeats < 1 or min(args.batch_size) < 1:
        common.fail("bench/train_step.py", "need --repeats >= 1 and --batch_size >= 1")
    remats = {"off": [False], "on": [True], "both": [False, True]}[args.remat]
    rows = []
    for dtype in args.dtype:
        peak_value, peak_source = _peak_gflop_per_s(dtype)
        common.emit({"bench": "train_step_peak", "dtype": dtype, "peak_gflop_per_s": peak_value,
                     "source": peak_source, "device": common.device_name()})
        for name in names:
            for b in args.batch_size:
                for remat in remats:
                    row = bench(name, b, remat, dtype, args.repeats, args.max_seconds, args.pcp, peak_value,
                                args.compile_only)
                    rows.append(row)
                    common.emit(row)
    if args.markdown:
        common.update_markdown("train_step", rows, key=("device", "dtype", "config", "batch", "remat"),
                               columns=MD_COLUMNS, title="Training step (bench/train_step.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
