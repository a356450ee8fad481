"""Inference latency per image (project issue 19): the in-process ``Inpainter`` and the exported artifact.

    .venv/bin/python bench/inference.py [--sizes 256 512] [--iters 1 2 4] [--batch_size 1] [--repeats 2] [--markdown]
    .venv/bin/python bench/inference.py --sizes 32 --iters 1 --repeats 1          # smoke run, tiny model

For each size (the paper256 / paper512 generator of the same size, tiny for 32; random weights, which latency
does not depend on) and each T, two paths run the same whole spread on one [batch, size, size] input:

* ``inprocess``: ``Inpainter.run`` (a jitted spread compiled once per shape; on CPU, with the row banding of
  stride-2 convs);
* ``exported``: ``jax.export`` of the spread (symbolic B, 32h, 32w; EMA params embedded), serialized,
  deserialized and called as ``psm_jax/serving.py`` does (no banding: it needs concrete shapes).

Rows: ``per_image_s`` (median wall time / batch), ``compile_s`` (XLA compile of that shape: AOT for the
in-process path, of the deserialized artifact for the exported one) and, for the exported path, ``export_s``
(trace + lower + serialize) and the artifact size. Every row carries device and load1 (bench/common.py).
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
from jax import export as jax_export  # noqa: E402

from psm_jax import export as ex  # noqa: E402
from psm_jax import inpaint  # noqa: E402
from psm_jax.config_lib import base_config  # noqa: E402
from psm_jax.models.generator import Generator, model_config  # noqa: E402

VARIANTS = {32: "tiny", 256: "paper256", 512: "paper512"}
MD_COLUMNS = ("device", "path", "model", "size", "batch", "T", "per_image_s", "compile_s", "export_s", "artifact_mib",
              "repeats", "load1")


def _setup(size: int, batch: int):
    config = base_config()
    config.model = model_config(VARIANTS[size])
    gen = Generator(**config.model)
    k = jax.random.split(jax.random.key(0), 3)
    image = np.asarray(jax.random.uniform(k[0], (batch, size, size, 3)) * 2 - 1, np.float32)
    mask = np.asarray(jax.random.uniform(k[1], (batch, size, size, 1)) > 0.6, np.float32)
    variables = jax.jit(lambda: gen.init({"params": k[2], "latent": k[2], "noise": k[2]},
                                         image, mask, mask, 1 - mask, 0.0))()
    return config, variables, image, mask


def main(argv: list[str] | None = None) -> int:
    ap = common.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help=f"from {sorted(VARIANTS)}")
    ap.add_argument("--iters", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--batch_size", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls after the (AOT) compile")
    ap.add_argument("--paths", nargs="+", default=["inprocess", "exported"], choices=["inprocess", "exported"])
    ap.add_argument("--markdown", action="store_true", help="update the inference table of docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1 or min(args.iters) < 1 or args.warmup < 0:
        common.fail("bench/inference.py",
                    "need --batch_size >= 1, --repeats >= 1, --warmup >= 0 and every --iters >= 1")
    bad = [s for s in args.sizes if s not in VARIANTS]
    if bad:
        common.fail("bench/inference.py", f"--sizes {bad}: expected sizes from {sorted(VARIANTS)}")
    rows = []
    key = inpaint.sample_key(0)
    key_data = np.asarray(jax.random.key_data(key))
    for size in args.sizes:
        config, variables, image, mask = _setup(size, args.batch_size)
        base = {"device": common.device_name(), "model": VARIANTS[size], "size": size, "batch": args.batch_size}
        inp = inpaint.Inpainter(config, variables)
        for T in args.iters:
            if "inprocess" in args.paths:
                t0 = time.perf_counter()
                fn = inp._fn(T, False, image.shape[:3])       # AOT compile of this shape (cached)
                compile_s = time.perf_counter() - t0
                t = common.time_fn(fn, variables, image, mask, key, repeats=args.repeats, warmup=args.warmup)
                row = {**base, "path": "inprocess", "T": T, "per_image_s": round(t["median_s"] / args.batch_size, 4),
                       "compile_s": round(compile_s, 2), "repeats": t["repeats"], "load1": t["load1"]}
                rows.append(row)
                common.emit(row)
            if "exported" in args.paths:
                t0 = time.perf_counter()
                blob = ex.export_spread(config, variables, num_iters=T).serialize()
                export_s = time.perf_counter() - t0
                call = jax.jit(jax_export.deserialize(bytearray(blob)).call)
                t0 = time.perf_counter()
                compiled = call.lower(jnp.asarray(image), jnp.asarray(mask), jnp.asarray(key_data)).compile()
                compile_s = time.perf_counter() - t0
                t = common.time_fn(compiled, image, mask, key_data, repeats=args.repeats, warmup=args.warmup)
                row = {**base, "path": "exported", "T": T, "per_image_s": round(t["median_s"] / args.batch_size, 4),
                       "compile_s": round(compile_s, 2), "export_s": round(export_s, 2),
                       "artifact_mib": round(len(blob) / 2**20, 1), "repeats": t["repeats"], "load1": t["load1"]}
                rows.append(row)
                common.emit(row)
    if args.markdown:
        common.update_markdown("inference", rows, key=("device", "path", "model", "batch", "T"), columns=MD_COLUMNS,
                               title="Inference latency: in-process vs exported (bench/inference.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
