"""Times the full pixel spread (paper Sec. 3.1.2, project issue 7) versus T; prints JSON lines.

    .venv/bin/python bench/spread.py [--model tiny|paper256|paper512] [--batch_size 4] [--iters 1 2 4 8] [--repeats 3]
    .venv/bin/python bench/spread.py --model paper512 --batch_size 1 --iters 4 --repeats 2   # 512 latency at T = 4
    .venv/bin/python bench/spread.py --picker top_k sort --pick_only       # the two pickers alone

For each T: compile time of the jitted spread (one lax.scan body, so it should be flat in T), median wall time
of a run (the whole spread is one jitted program: no host sync between iterations), and the overhead ratio
``spread_s / (T * forward_s)`` against a jitted single generator forward (the pick, i.e. one sort per image, and
the sampling are the overhead). A final line reports ``compile_ratio_8_over_2`` (target: within 1.2).
``--picker top_k sort`` times each picker (``spread.picker``; identical picks); ``--pick_only`` times
the pick step alone (``pick_lowest`` on one iteration's scores, k from the linear schedule).
Every row carries device, dtype and load1 (bench/common.py).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from psm_jax.models.generator import Generator, make_apply_fn, model_config  # noqa: E402
from psm_jax.spread import PICKERS, max_pick_increment, pick_lowest, pixel_spread, schedule_counts  # noqa: E402

MD_COLUMNS = ("device", "dtype", "model", "batch", "T", "picker", "spread_s", "forward_s", "overhead_ratio",
              "compile_s", "load1")


def main(argv: list[str] | None = None) -> int:
    ap = common.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", choices=["tiny", "paper256", "paper512"])
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--iters", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--max_seconds", type=float, default=None, help="cap on the timed repeats of each T")
    ap.add_argument("--picker", nargs="+", default=["top_k"], choices=PICKERS, help="pickers to time")
    ap.add_argument("--pick_only", action="store_true", help="time only the pick step of each picker")
    ap.add_argument("--markdown", action="store_true", help="update the spread table of docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1 or min(args.iters) < 1:
        common.fail("bench/spread.py", "need --batch_size >= 1, --repeats >= 1 and every --iters >= 1")
    gen = Generator(**model_config(args.model))
    r, b, dt = gen.resolution, args.batch_size, jnp.dtype(args.dtype)
    k = jax.random.split(jax.random.key(0), 4)
    image = (jax.random.uniform(k[0], (b, r, r, 3)) * 2 - 1).astype(dt)
    mask = (jax.random.uniform(k[1], (b, r, r, 1)) > 0.6).astype(dt)
    base = {"model": args.model, "batch": b, "dtype": args.dtype, "device": common.device_name()}

    if args.pick_only:
        score = jax.random.uniform(k[2], (b, r, r, 1))
        for T in args.iters:
            k_B = schedule_counts(jnp.sum(mask < 0.5, axis=(1, 2, 3)), T)[:, 0]
            for picker in args.picker:
                fn = jax.jit(lambda s, m, kb, p=picker, T=T: pick_lowest(
                    s, m, kb, picker=p, k_max=max_pick_increment(r * r, T, "linear")))
                t = common.time_fn(fn, score, mask, k_B, repeats=args.repeats, max_seconds=args.max_seconds)
                common.emit({**base, "T": T, "picker": picker, "pick_s": round(t["median_s"], 6),
                             "load1": t["load1"]})
        return 0

    variables = jax.jit(lambda: gen.init({"params": k[2], "latent": k[3], "noise": k[3]},
                                         image, mask, mask, 1 - mask, 0.0))()
    variables = jax.tree.map(lambda a: a.astype(dt) if jnp.issubdtype(a.dtype, jnp.floating) else a, variables)

    fwd = jax.jit(lambda v, i, m, key: make_apply_fn(gen, v)(i * m, m, m, 1 - m, jnp.zeros((b,), dt), key))
    t = common.time_fn(fwd, variables, image, mask, k[3], repeats=args.repeats, max_seconds=args.max_seconds)
    forward_s = t["median_s"]
    common.emit({**base, "forward_s": round(forward_s, 5), "load1": t["load1"]})

    compile_s, rows = {}, []
    for T in args.iters:
        for picker in args.picker:
            spread = jax.jit(lambda v, i, m, key, T=T, p=picker: pixel_spread(
                make_apply_fn(gen, v), i, m, key, num_iters=T, picker=p)["image"])
            t0 = time.perf_counter()
            compiled = spread.lower(variables, image, mask, k[3]).compile()
            compile_s[T] = time.perf_counter() - t0
            t = common.time_fn(compiled, variables, image, mask, k[3], repeats=args.repeats,
                               max_seconds=args.max_seconds)
            row = {**base, "T": T, "picker": picker, "compile_s": round(compile_s[T], 3),
                   "spread_s": round(t["median_s"], 5), "forward_s": round(forward_s, 5),
                   "overhead_ratio": round(t["median_s"] / (T * forward_s), 3), "load1": t["load1"]}
            rows.append(row)
            common.emit(row)
    if 2 in compile_s and 8 in compile_s:
        common.emit({**base, "compile_ratio_8_over_2": round(compile_s[8] / compile_s[2], 3)})
    if args.markdown:
        common.update_markdown("spread", rows, key=("device", "dtype", "model", "batch", "T", "picker"), columns=MD_COLUMNS,
                               title="Pixel spread vs T (bench/spread.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
