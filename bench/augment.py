"""Times psm_jax.augment (ADA, PSM Sec. 4.2) on one batch; prints one JSON line.

    .venv/bin/python bench/augment.py [--batch_size 8] [--size 256] [--p 1.0] [--iters 10]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from psm_jax import augment as aug  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = common.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--p", type=float, default=1.0, help="augment probability (1.0 = every transform fires)")
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args(argv)
    if args.batch_size < 1 or args.size < 2 or args.iters < 1 or not 0.0 <= args.p <= 1.0:
        common.fail("bench/augment.py", "need --batch_size >= 1, --size >= 2, --iters >= 1, 0 <= --p <= 1")

    cfg = aug.default_ada_config()
    fn = jax.jit(lambda k, x, m, p: aug.augment(k, x, m, p, cfg))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (args.batch_size, args.size, args.size, 3)), jnp.float32)
    m = jnp.asarray(rng.uniform(size=(args.batch_size, args.size, args.size, 1)) > 0.5, jnp.float32)
    p = jnp.float32(args.p)

    t0 = time.perf_counter()
    jax.block_until_ready(fn(jax.random.key(0), x, m, p))
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(args.iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(jax.random.key(i + 1), x, m, p))
        times.append(time.perf_counter() - t0)
    common.emit({
        "bench": "augment", "backend": jax.default_backend(), "batch": args.batch_size, "size": args.size,
        "p": args.p, "first_call_s": round(compile_s, 3), "iters": args.iters,
        "median_ms": round(1e3 * float(np.median(times)), 2), "min_ms": round(1e3 * min(times), 2),
        "device": common.device_name(), "load1": common.load1(),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
