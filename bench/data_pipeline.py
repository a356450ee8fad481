"""Throughput of the training input pipeline (psm_jax.data.pipeline), one JAX process.

    .venv/bin/python bench/data_pipeline.py                       # JSON lines
    .venv/bin/python bench/data_pipeline.py --seconds 5 --workers 0,2,4 --resolutions 512

Measures full training batches (JPEG decode, EXIF/RGB handling, flip, crop, free-form mask from
psm_jax.data.masks, float conversion, batching) in images/s at each resolution with 0 and 2
grain workers, then masks/s for both mask presets (bench/masks.py). The images are a folder of
JPEGs written to a temp dir first: procedural images (psm_jax.data.synthetic) rendered small and
upscaled to 640x853 (Places-like size and smoothness), so decode cost is realistic. The worker
start-up (~3 s) is excluded: timing starts after the first batch.
"""
from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
import common  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from psm_jax.data import pipeline  # noqa: E402
from psm_jax.data.synthetic import SyntheticSource  # noqa: E402


def write_jpeg_folder(root: Path, num: int, size_hw: tuple[int, int] = (640, 853)) -> Path:
    src = SyntheticSource(num, 128, seed=0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(num):
        img = Image.fromarray(src[i]).resize((size_hw[1], size_hw[0]), Image.BICUBIC)
        img.save(root / f"{i:05d}.jpg", quality=90)
    return root


def bench_pipeline(folder: Path, resolution: int, workers: int, batch: int, seconds: float) -> dict:
    cfg = pipeline.default_data_config()
    cfg.update(source="folder", path=str(folder), resolution=resolution, num_workers=workers,
               mask_kind="large")
    it = pipeline.make_train_iterator(cfg, global_batch_size=batch, seed=0, process_index=0, process_count=1)
    load_before = common.load1()
    t0 = time.perf_counter()
    next(it)  # start-up: worker spawn, imports, first fills
    startup = time.perf_counter() - t0
    n, cpu0, start = 0, time.process_time(), time.perf_counter()
    while True:
        b = next(it)
        n += b["image"].shape[0]
        now = time.perf_counter()
        if now - start >= seconds:
            break
    cpu = time.process_time() - cpu0
    it.close()
    rate = n / (now - start)
    return {
        "bench": "data_pipeline",
        "resolution": resolution,
        "workers": workers,
        "batch": batch,
        "images": n,
        "images_per_s": round(rate, 1),
        "ms_per_batch": round(1000.0 * batch / rate, 2),
        "startup_s": round(startup, 2),
        # Main-process CPU per image (with workers, the rest is spent in the workers).
        "main_cpu_ms_per_image": round(1000.0 * cpu / n, 3),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load1": max(x for x in (load_before, common.load1(), 0.0) if x is not None),
        "device": common.device_name(),
    }

MD_COLUMNS = ("device", "resolution", "workers", "batch", "images_per_s", "ms_per_batch", "main_cpu_ms_per_image",
              "load1")


def main() -> None:
    parser = common.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", default="256,512")
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--skip_masks", action="store_true", help="do not run bench/masks.py")
    parser.add_argument("--markdown", action="store_true", help="update the data tables of docs/BENCHMARKS.md")
    args = parser.parse_args()
    try:
        resolutions = [int(r) for r in args.resolutions.split(",")]
        workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        parser.exit(2, "data_pipeline: error: --resolutions and --workers take comma-separated integers\n")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_jpeg_folder(Path(tmp) / "images", args.num_images)
        for res in resolutions:
            for w in workers:
                rows.append(bench_pipeline(folder, res, w, args.batch_size, args.seconds))
                common.emit(rows[-1])
    if args.markdown:
        common.update_markdown("data_pipeline", rows, key=("device", "resolution", "workers", "batch"),
                               columns=MD_COLUMNS, title="Training input pipeline (bench/data_pipeline.py)")

    if not args.skip_masks:
        try:
            from bench.masks import bench_masks
        except ImportError:  # bench/masks.py absent: time the generator directly
            bench_masks = None
        if bench_masks is not None:
            mask_rows = bench_masks(kinds=("large", "small"), resolutions=tuple(resolutions), seconds=args.seconds)
            for row in mask_rows:
                common.emit(row)
            if args.markdown:
                from bench.masks import update_docs
                update_docs(mask_rows)
        else:
            from psm_jax.data.masks import random_mask

            for kind in ("large", "small"):
                for res in resolutions:
                    rng, n, start = np.random.default_rng(0), 0, time.perf_counter()
                    while time.perf_counter() - start < args.seconds:
                        random_mask(rng, res, kind)
                        n += 1
                    common.emit({"bench": "masks", "kind": kind, "resolution": res,
                                 "masks_per_s": round(n / (time.perf_counter() - start), 1)})


if __name__ == "__main__":
    main()
