"""Times the full pixel spread (paper Sec. 3.1.2) versus T; prints JSON lines.

    .venv/bin/python bench/spread.py [--model tiny|paper256] [--batch 4] [--iters 1 2 4 8] [--repeats 3]

For each T: compile time of the jitted spread (one lax.scan body, so it should be flat in T),
median wall time of a run, and the overhead ratio ``spread_s / (T * forward_s)`` against a
jitted single generator forward (the pick, i.e. one sort per image, and the sampling are the
overhead). A final line reports ``compile_ratio_8_over_2`` (target: within 1.2).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from psm_jax.models.generator import Generator, make_apply_fn, model_config
from psm_jax.spread import pixel_spread


def _median_time(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", choices=["tiny", "paper256", "paper512"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--iters", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or min(args.iters) < 1:
        print("bench/spread.py: need --batch >= 1, --repeats >= 1 and every --iters >= 1", file=sys.stderr)
        return 2
    gen = Generator(**model_config(args.model))
    r, b = gen.resolution, args.batch
    k = jax.random.split(jax.random.key(0), 4)
    image = jax.random.uniform(k[0], (b, r, r, 3)) * 2 - 1
    mask = (jax.random.uniform(k[1], (b, r, r, 1)) > 0.6).astype(jnp.float32)
    variables = jax.jit(lambda: gen.init({"params": k[2], "latent": k[3], "noise": k[3]},
                                         image, mask, mask, 1 - mask, 0.0))()
    device = jax.devices()[0].device_kind

    fwd = jax.jit(lambda v, i, m, key: make_apply_fn(gen, v)(i * m, m, m, 1 - m, jnp.zeros((b,)), key))
    forward_s = _median_time(fwd, (variables, image, mask, k[3]), args.repeats)
    print(json.dumps({"model": args.model, "batch": b, "forward_s": round(forward_s, 5),
                      "device": device}), flush=True)

    compile_s = {}
    for T in args.iters:
        spread = jax.jit(lambda v, i, m, key, T=T: pixel_spread(make_apply_fn(gen, v), i, m, key,
                                                               num_iters=T)["image"])
        t0 = time.perf_counter()
        compiled = spread.lower(variables, image, mask, k[3]).compile()
        compile_s[T] = time.perf_counter() - t0
        spread_s = _median_time(compiled, (variables, image, mask, k[3]), args.repeats)
        print(json.dumps({"model": args.model, "batch": b, "T": T, "compile_s": round(compile_s[T], 3),
                          "spread_s": round(spread_s, 5),
                          "overhead_ratio": round(spread_s / (T * forward_s), 3),
                          "device": device}), flush=True)
    if 2 in compile_s and 8 in compile_s:
        print(json.dumps({"compile_ratio_8_over_2": round(compile_s[8] / compile_s[2], 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
