"""Measured matmul and 3x3-conv peak of this device in JAX (project issue 7), so efficiencies (MFU in
bench/train_step.py) are fractions of what XLA actually reaches here, not of a datasheet number.

    .venv/bin/python bench/peak.py                          # f32 and bf16, JSON lines
    .venv/bin/python bench/peak.py --dtypes float32 --repeats 5 --markdown

For each dtype: square matmuls and NHWC 3x3 'same' convs at the shapes the PSM generator runs (64..512
channels), FLOPs from XLA's cost analysis, median wall time. One row per shape, then one summary row per
(dtype, op) with the best ``gflop_per_s``; the summaries are also written to ``--out`` (default
bench/results/peak.jsonl, read by train_step.py). On CPU, bf16 matmuls/convs may be emulated (slower than f32).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

# (batch, size, channels_in, channels_out) of the 3x3 convs: the generator's scales at 256/512.
CONV_SHAPES = [(1, 256, 64, 64), (1, 128, 128, 128), (1, 64, 256, 256), (1, 32, 512, 512), (8, 16, 512, 512)]
CONV_SHAPES_ACCEL = [(8, 256, 64, 64), (8, 128, 128, 128), (8, 64, 256, 256), (8, 32, 512, 512),
                     (32, 32, 512, 512)]
MATMUL_SIZES = [1024, 2048]
MATMUL_SIZES_ACCEL = [4096, 8192]


def _rows_for(dtype: str, repeats: int, accel: bool) -> list[dict]:
    dt = jnp.dtype(dtype)
    key = jax.random.key(0)
    rows = []
    for n in MATMUL_SIZES_ACCEL if accel else MATMUL_SIZES:
        a = jax.random.normal(key, (n, n), dt)
        fn = jax.jit(lambda a, b: a @ b)
        flops = common.xla_flops(fn.lower(a, a))
        t = common.time_fn(fn, a, a, repeats=repeats)
        rows.append({"op": "matmul", "dtype": dtype, "shape": f"{n}x{n}x{n}", "median_s": round(t["median_s"], 6),
                     "gflop": round(flops / 1e9, 3), "gflop_per_s": round(flops / 1e9 / t["median_s"], 1),
                     "load1": t["load1"]})
    for b, s, cin, cout in CONV_SHAPES_ACCEL if accel else CONV_SHAPES:
        x = jax.random.normal(key, (b, s, s, cin), dt)
        w = jax.random.normal(key, (3, 3, cin, cout), dt)
        fn = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                           dimension_numbers=("NHWC", "HWIO", "NHWC")))
        flops = common.xla_flops(fn.lower(x, w))
        t = common.time_fn(fn, x, w, repeats=repeats)
        rows.append({"op": "conv3x3", "dtype": dtype, "shape": f"{b}x{s}x{s}x{cin}->{cout}",
                     "median_s": round(t["median_s"], 6), "gflop": round(flops / 1e9, 3),
                     "gflop_per_s": round(flops / 1e9 / t["median_s"], 1), "load1": t["load1"]})
    return rows


def measure(dtypes: list[str], repeats: int = 3) -> tuple[list[dict], list[dict]]:
    """(per-shape rows, one summary row per (dtype, op) with the best GFLOP/s), each with the device fields."""
    info = common.device_info()
    accel = info["platform"] != "cpu"
    rows, summary = [], []
    for dtype in dtypes:
        dtype_rows = [dict(r, **info) for r in _rows_for(dtype, repeats, accel)]
        rows += dtype_rows
        for op in ("matmul", "conv3x3"):
            best = max((r for r in dtype_rows if r["op"] == op), key=lambda r: r["gflop_per_s"])
            summary.append({"bench": "peak", "op": op, "dtype": dtype, "peak_gflop_per_s": best["gflop_per_s"],
                            "shape": best["shape"], "load1": best["load1"], **info})
    return rows, summary


def read_peak(dtype: str, device: str, path: Path = common.RESULTS_DIR / "peak.jsonl") -> float | None:
    """Best measured GFLOP/s (max of matmul and conv3x3) for ``dtype`` on ``device`` from peak.py's output file,
    or None if the file has no such row."""
    if not path.exists():
        return None
    best = None
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("dtype") == dtype and r.get("device") == device and "peak_gflop_per_s" in r:
            best = max(best or 0.0, float(r["peak_gflop_per_s"]))
    return best


def main(argv: list[str] | None = None) -> int:
    ap = common.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(common.RESULTS_DIR / "peak.jsonl"),
                    help="summary rows are written here (replacing this device's rows); '' to skip")
    ap.add_argument("--markdown", action="store_true", help="update the peak table of docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        common.fail("bench/peak.py", f"--repeats must be >= 1, got {args.repeats}")
    rows, summary = measure(args.dtypes, args.repeats)
    for r in rows + summary:
        common.emit(r)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        device = summary[0]["device"]
        kept = []
        if out.exists():  # keep other devices' and other dtypes' rows
            for line in out.read_text().splitlines():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not (r.get("device") == device and r.get("dtype") in args.dtypes):
                    kept.append(line)
        out.write_text("\n".join(kept + [json.dumps(r) for r in summary]) + "\n")
    if args.markdown:
        common.update_markdown("peak", summary, key=("device", "dtype", "op"), title="Measured peak (bench/peak.py)",
                               columns=("device", "dtype", "op", "peak_gflop_per_s", "shape", "load1"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
