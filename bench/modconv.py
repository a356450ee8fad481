"""Times the modulated-conv implementations (psm_jax/models/layers.py `ModulatedConv2d.impl`).

Run: .venv/bin/python bench/modconv.py            # quick sizes, well under a minute on a 2-core CPU
     .venv/bin/python bench/modconv.py --full     # B=4 64x64 256->256 and B=1/8 32x32 512->512 (minutes on CPU:
                                                  # XLA CPU expands grouped convs, see layers.py)
Prints one JSON line per (config, impl): median forward and forward+backward wall time in ms (after compile).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from psm_jax.models.layers import MODCONV_IMPLS, ModulatedConv2d

FULL_CONFIGS = [  # batch, size, in, out, k
    (4, 64, 256, 256, 3),
    (1, 32, 512, 512, 3),
    (8, 32, 512, 512, 3),
]
QUICK_CONFIGS = [
    (4, 32, 128, 128, 3),
    (1, 16, 256, 256, 3),
    (8, 16, 256, 256, 3),
]


def _median_ms(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="the realistic (slow on CPU) sizes")
    parser.add_argument("--impls", default=",".join(MODCONV_IMPLS))
    parser.add_argument("--up", type=int, default=1, choices=(1, 2))
    args = parser.parse_args(argv)
    for batch, size, fan_in, fan_out, k in FULL_CONFIGS if args.full else QUICK_CONFIGS:
        kx, ks = jax.random.split(jax.random.key(0))
        x = jax.random.normal(kx, (batch, size, size, fan_in))
        style = jax.random.normal(ks, (batch, 512))
        for impl in args.impls.split(","):
            module = ModulatedConv2d(fan_out, k, up=args.up, impl=impl)
            variables = jax.jit(module.init)(jax.random.key(1), x, style)
            fwd = jax.jit(module.apply)
            loss = lambda v, x, s: jnp.sum(module.apply(v, x, s))  # noqa: E731
            fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
            print(json.dumps({
                "batch": batch, "size": size, "in": fan_in, "out": fan_out, "k": k, "up": args.up, "impl": impl,
                "fwd_ms": round(_median_ms(fwd, variables, x, style, repeats=args.repeats), 2),
                "fwd_bwd_ms": round(_median_ms(fwd_bwd, variables, x, style, repeats=args.repeats), 2),
                "device": jax.devices()[0].platform,
            }), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
