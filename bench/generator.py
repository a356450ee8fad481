"""Times one PSM generator forward pass (paper Sec. 4.2 configs, project issue 7); JSON lines.

    .venv/bin/python bench/generator.py --json                       # 512 and 256, batch 1 and 8
    .venv/bin/python bench/generator.py --resolution 256 --batch_size 1 --repeats 5
    .venv/bin/python bench/generator.py --resolution 32 --batch_size 8    # the tiny config
    .venv/bin/python bench/generator.py --resolution 512 --batch_size 1 --dtype float32 bfloat16 --markdown

Resolution 512 uses model_config("paper512"), 256 "paper256", 32 "tiny". Keys: resolution, batch, dtype,
median_s (median wall time of the jitted forward after one warm-up call), compile_s, gflop (XLA cost analysis
of the compiled forward: 2 FLOPs per multiply-add, counting only taps that read real input, so neither the
'same' padding nor the zeros of the up-2 (lhs-dilated) convs are counted), gflop_per_s = gflop / median_s,
min_s, cpu_s (process CPU seconds per forward, all threads) and gflop_per_cpu_s = gflop / cpu_s (robust to
other jobs on a shared machine: an idle C-core machine reaches at most C x that), repeats, load1 (1-minute
load average, see bench/common.py), device. Without --json a readable line is printed
instead. ``--max_seconds`` stops the timed repeats of one configuration early (at least one is kept); on a
2-core CPU one 512 batch-8 forward takes ~20 s.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from psm_jax.models.generator import Generator, model_config  # noqa: E402

VARIANTS = {512: "paper512", 256: "paper256", 32: "tiny"}
MD_COLUMNS = ("device", "dtype", "resolution", "batch", "median_s", "gflop", "gflop_per_s", "gflop_per_cpu_s",
              "compile_s", "repeats", "load1")


def bench(resolution: int, batch: int, repeats: int, dtype: str = "float32",
          max_seconds: float | None = None) -> dict:
    gen = Generator(**model_config(VARIANTS[resolution]))
    dt = jnp.dtype(dtype)
    k = jax.random.split(jax.random.key(0), 4)
    x = (jax.random.uniform(k[0], (batch, resolution, resolution, 3)) * 2 - 1).astype(dt)
    m = (jax.random.uniform(k[1], (batch, resolution, resolution, 1)) > 0.5).astype(dt)
    u = 1.0 - m
    t = jnp.zeros((batch,), dt)
    variables = jax.jit(lambda: gen.init({"params": k[2], "latent": k[3], "noise": k[3]},
                                         x[:1], m[:1], m[:1], u[:1], t[:1]))()
    variables = jax.tree.map(lambda a: a.astype(dt) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                             variables)

    def fwd(variables, x, m, u, t, key):
        return gen.apply(variables, x, m, m, u, t, rngs={"latent": key, "noise": key})

    lowered = jax.jit(fwd).lower(variables, x, m, u, t, k[3])
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    gflop = common.xla_flops(compiled) / 1e9
    timing = common.time_fn(compiled, repeats=repeats, max_seconds=max_seconds,
                            args_fn=lambda i: (variables, x, m, u, t, jax.random.fold_in(k[3], i + 1)))
    median_s = timing["median_s"]
    return {"resolution": resolution, "batch": batch, "dtype": dtype, "median_s": common.sig(median_s),
            "min_s": common.sig(timing["min_s"]), "compile_s": round(compile_s, 3), "gflop": common.sig(gflop),
            "gflop_per_s": round(gflop / median_s, 2), "cpu_s": round(timing["cpu_s"], 4),
            "gflop_per_cpu_s": round(gflop / timing["cpu_s"], 2), "repeats": timing["repeats"],
            "load1": timing["load1"],
            "device": common.device_name()}


def main(argv: list[str] | None = None) -> int:
    ap = common.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, nargs="+", default=[512, 256],
                    help=f"one or more of {sorted(VARIANTS)}")
    ap.add_argument("--batch_size", type=int, nargs="+", default=[1, 8], help="one or more batch sizes")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    ap.add_argument("--max_seconds", type=float, default=None,
                    help="stop timing one configuration after this many seconds")
    ap.add_argument("--json", action="store_true", help="JSON lines (default: one readable line per config)")
    ap.add_argument("--markdown", action="store_true", help="update the generator table of docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    bad = [r for r in args.resolution if r not in VARIANTS]
    if bad or args.repeats < 1 or min(args.batch_size) < 1:
        common.fail("bench/generator.py", f"need --resolution in {sorted(VARIANTS)} (got {args.resolution}), "
                                          f"--batch_size >= 1, --repeats >= 1")
    rows = []
    for dtype in args.dtype:
        for r in args.resolution:
            for b in args.batch_size:
                row = bench(r, b, args.repeats, dtype, args.max_seconds)
                rows.append(row)
                if args.json:
                    common.emit(row)
                else:
                    print(f"{row['device']} {dtype} {r}x{r} batch {b}: {row['median_s']:.4f} s median of "
                          f"{row['repeats']}, {row['gflop']:.1f} GFLOP (XLA), {row['gflop_per_s']:.1f} GFLOP/s "
                          f"(compile {row['compile_s']:.1f} s, load {row['load1']})", flush=True)
    if args.markdown:
        common.update_markdown("generator", rows, key=("device", "dtype", "resolution", "batch"),
                               columns=MD_COLUMNS, title="Generator forward (bench/generator.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
