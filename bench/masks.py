"""Throughput of the MAT-style free-form mask generator (psm_jax.data.masks), single process.

    .venv/bin/python bench/masks.py                 # JSON lines, one per (kind, resolution, rng)
    .venv/bin/python bench/masks.py --seconds 1 --rng generator

Targets from the project issue (large masks, one process): >= 1,100 masks/s at 512 and >= 2,000
at 256; MAT's own generator does about 750 and 1,300 on the reference machine. Each mask is
generated and dropped, as a data pipeline that copies it into a batch would; keeping thousands of
fresh 1 MiB arrays alive instead measures page faults, not the generator. ``masks_per_s`` is
wall-clock (what the targets mean); ``cpu_masks_per_s`` uses process CPU time and is the better
estimate on a shared, loaded machine.

bench/data_pipeline.py can ``from bench.masks import bench_masks`` (run from the repo root).
"""
from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
try:
    import common  # noqa: E402  (as a script: bench/ is on sys.path)
except ImportError:  # imported as bench.masks from the repo root
    from bench import common  # noqa: E402
from psm_jax.data.masks import random_mask  # noqa: E402

MD_COLUMNS = ("device", "kind", "resolution", "rng", "masks_per_s", "cpu_masks_per_s", "target_masks_per_s",
              "meets_target", "load1")

TARGET_MASKS_PER_S = {512: 1100.0, 256: 2000.0}


def _make_rng(kind: str, seed: int):
    return np.random.RandomState(seed) if kind == "legacy" else np.random.default_rng(seed)


def bench_one(kind: str, resolution: int, rng: str = "generator", seconds: float = 2.0, seed: int = 0) -> dict:
    """Masks per second for one configuration: warm up, then time whole masks for ~``seconds``."""
    gen = _make_rng(rng, seed)
    for _ in range(20):  # warm-up: imports, Pillow/numpy first-call costs
        random_mask(gen, resolution, kind)
    n, hole = 0, 0.0
    load_before = common.load1()
    cpu_start = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):
            m = random_mask(gen, resolution, kind)
            hole += 1.0 - float(m.mean()) if n % 10 == 0 else 0.0
            n += 1
        now = time.perf_counter()
        if now >= deadline:
            break
    rate = n / (now - start)
    # CPU time of this process: closer to the uncontended rate when other jobs share the cores.
    cpu_rate = n / max(time.process_time() - cpu_start, 1e-9)
    target = TARGET_MASKS_PER_S.get(resolution) if kind == "large" else None
    return {
        "bench": "masks",
        "kind": kind,
        "resolution": resolution,
        "rng": rng,
        "masks": n,
        "masks_per_s": round(rate, 1),
        "ms_per_mask": round(1000.0 / rate, 4),
        "cpu_masks_per_s": round(cpu_rate, 1),
        "mean_hole_ratio_sampled": round(hole / ((n + 9) // 10), 4),
        "target_masks_per_s": target,
        "meets_target": None if target is None else rate >= target,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load1": max(x for x in (load_before, common.load1(), 0.0) if x is not None),
        "device": common.device_name(),
    }


def bench_masks(
    kinds=("large", "small"), resolutions=(256, 512), rngs=("generator",), seconds: float = 2.0
) -> list[dict]:
    """One result dict per (kind, resolution, rng)."""
    return [bench_one(k, r, g, seconds) for g in rngs for r in resolutions for k in kinds]


def main(argv: list[str] | None = None) -> int:
    p = common.ArgumentParser(description="masks/s of psm_jax.data.masks.random_mask (JSON lines)")
    p.add_argument("--kinds", nargs="+", choices=["large", "small"], default=["large", "small"])
    p.add_argument("--resolutions", nargs="+", type=int, default=[256, 512])
    p.add_argument("--rng", nargs="+", choices=["generator", "legacy"], default=["generator", "legacy"],
                   help="generator: numpy Generator (grain's path); legacy: RandomState (MAT's exact stream)")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per configuration")
    p.add_argument("--markdown", action="store_true", help="update the masks table of docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    if args.seconds <= 0 or any(r < 8 for r in args.resolutions):
        common.fail("bench/masks.py", "--seconds must be > 0 and --resolutions >= 8")
    rows = []
    for g in args.rng:
        for r in args.resolutions:
            for k in args.kinds:
                rows.append(bench_one(k, r, g, args.seconds))
                common.emit(rows[-1])
    if args.markdown:
        update_docs(rows)
    return 0


def update_docs(rows: list[dict]) -> None:
    common.update_markdown("masks", rows, key=("device", "kind", "resolution", "rng"), columns=MD_COLUMNS,
                           title="Mask generation, one process (bench/masks.py)")


if __name__ == "__main__":
    sys.exit(main())
