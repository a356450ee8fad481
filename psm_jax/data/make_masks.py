"""Writes a fixed, seeded set of MAT-style evaluation masks as PNGs (notes mat_masks.md §1-§2).

MAT evaluates on fixed mask files, not on masks generated during evaluation; this CLI makes such a
set with psm_jax.data.masks, in MAT's file convention (8-bit grayscale, 255 = known, 0 = hole):

    python -m psm_jax.data.make_masks --kind large --resolution 512 --num 36500 --seed 0 --out DIR

Files are ``DIR/000000.png``, ``DIR/000001.png``, ... plus ``DIR/make_masks.json`` (the arguments).
Mask ``i`` comes from ``numpy.random.default_rng([seed, i])``, so the set does not depend on
``--workers`` and any single mask can be regenerated alone. ``--rng legacy`` instead draws all masks
in order from one ``RandomState(seed)``, as MAT's own generator would after ``np.random.seed(seed)``
(sequential only).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from psm_jax import cli
from psm_jax.data.mask_io import save_mask
from psm_jax.data.masks import random_mask

MANIFEST = "make_masks.json"


def _file_name(i: int, num: int) -> str:
    return f"{i:0{max(6, len(str(num - 1)))}d}.png"


def _write_range(job: tuple) -> int:
    """Worker: generates and writes masks ``start..stop-1``; returns how many it wrote."""
    out, kind, resolution, seed, num, hole_range, start, stop = job
    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])
        save_mask(Path(out) / _file_name(i, num), random_mask(rng, resolution, kind, hole_range))
    return stop - start


def _fail(msg: str) -> int:
    return cli.error(f"python -m psm_jax.data.make_masks: {msg}")


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m psm_jax.data.make_masks", description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=["large", "small"], default="large")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--num", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--hole_range", type=float, nargs=2, default=(0.0, 1.0), metavar=("LO", "HI"),
                   help="keep masks with LO < hole ratio < HI (MAT's hole_range)")
    p.add_argument("--rng", choices=["generator", "legacy"], default="generator",
                   help="generator: per-mask default_rng([seed, i]); legacy: one RandomState(seed) stream")
    p.add_argument("--workers", type=int, default=1, help="processes (generator rng only)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)

    if args.num < 1:
        return _fail(f"--num must be >= 1, got {args.num}")
    if args.resolution < 8:
        return _fail(f"--resolution must be an integer >= 8, got {args.resolution}")
    lo, hi = args.hole_range
    if not 0.0 <= lo < hi <= 1.0:
        return _fail(f"--hole_range must satisfy 0 <= LO < HI <= 1, got {lo} {hi}")
    if args.workers < 1:
        return _fail(f"--workers must be >= 1, got {args.workers}")
    if args.rng == "legacy" and args.workers > 1:
        return _fail("--rng legacy is one sequential stream; use --workers 1")
    out: Path = args.out
    try:
        cli.check_output(out, "--out", folder=True)
    except ValueError as e:
        return _fail(str(e))
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        return _fail(f"--out {out} is not empty; pass --overwrite to write into it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        # Validate kind/resolution/hole_range once, before spawning anything.
        random_mask(np.random.default_rng(0), args.resolution, args.kind, (lo, hi))
    except (OSError, ValueError, RuntimeError) as e:
        return _fail(str(e))

    hole_range = (lo, hi)
    bar = tqdm(total=args.num, unit="mask", disable=args.no_progress, desc=f"masks -> {out}")
    if args.rng == "legacy":
        rng = np.random.RandomState(args.seed)
        for i in range(args.num):
            save_mask(out / _file_name(i, args.num), random_mask(rng, args.resolution, args.kind, hole_range))
            bar.update(1)
    else:
        chunk = 256
        jobs = [(str(out), args.kind, args.resolution, args.seed, args.num, hole_range, a, min(a + chunk, args.num))
                for a in range(0, args.num, chunk)]
        if args.workers == 1:
            for job in jobs:
                bar.update(_write_range(job))
        else:
            # spawn: safe whatever the parent has imported (JAX threads do not survive a fork).
            with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
                for done in pool.imap_unordered(_write_range, jobs):
                    bar.update(done)
    bar.close()
    manifest = {"kind": args.kind, "resolution": args.resolution, "num": args.num, "seed": args.seed,
                "hole_range": [lo, hi], "rng": args.rng, "convention": "255 = known, 0 = hole",
                "generator": "psm_jax.data.masks.random_mask"}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    stray = sorted(set(p.name for p in out.glob("*.png")) - {_file_name(i, args.num) for i in range(args.num)})
    if stray:
        print(f"make_masks: warning: {out} also holds {len(stray)} other PNG files (e.g. {stray[0]})",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
