"""Times one PSM generator forward pass (paper Sec. 4.2 configs); prints JSON lines.

    .venv/bin/python bench/generator.py --resolution 512 --batch 1 [--repeats 3] [--json]
    .venv/bin/python bench/generator.py --resolution 256 --batch 8 --repeats 2
    .venv/bin/python bench/generator.py --resolution 32 --batch 8      # the tiny config

Resolution 512 uses model_config("paper512"), 256 "paper256", 32 "tiny". Keys: resolution,
batch, median_s (median wall time of the jitted forward after one warm-up call), compile_s,
gflop (XLA cost analysis of the lowered forward; XLA counts 2 FLOPs per multiply-add and counts
the up-2 convs densely on the zero-inserted input) and gflop_per_s = gflop / median_s. On CPU the
512 batch-8 forward takes many seconds; lower --repeats.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from psm_jax.models.generator import Generator, model_config

VARIANTS = {512: "paper512", 256: "paper256", 32: "tiny"}


def bench(resolution: int, batch: int, repeats: int, dtype: str = "float32") -> dict:
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
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    gflop = float(cost["flops"]) / 1e9
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(variables, x, m, u, t, k[3]))  # warm-up
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(variables, x, m, u, t, jax.random.fold_in(k[3], i)))
        times.append(time.perf_counter() - t0)
    median_s = statistics.median(times)
    return {"resolution": resolution, "batch": batch, "dtype": dtype, "median_s": round(median_s, 5),
            "compile_s": round(compile_s, 3), "gflop": round(gflop, 3),
            "gflop_per_s": round(gflop / median_s, 2), "repeats": repeats,
            "device": jax.devices()[0].device_kind}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, nargs="+", default=[256],
                    help=f"one or more of {sorted(VARIANTS)}")
    ap.add_argument("--batch", type=int, nargs="+", default=[1], help="one or more batch sizes")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--json", action="store_true", help="JSON lines only (the default output too)")
    args = ap.parse_args(argv)
    bad = [r for r in args.resolution if r not in VARIANTS]
    if bad or args.repeats < 1 or min(args.batch) < 1:
        print(f"bench/generator.py: need --resolution in {sorted(VARIANTS)} (got {args.resolution}), "
              f"--batch >= 1, --repeats >= 1", file=sys.stderr)
        return 2
    for r in args.resolution:
        for b in args.batch:
            print(json.dumps(bench(r, b, args.repeats, args.dtype)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
