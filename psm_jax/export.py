"""Export the whole test-time spread (paper Sec. 3.1.2, Eq. 4-5: T iterations of G_ema, pick, sample) with jax.export.

    python -m psm_jax.export --workdir runs/places512 --out psm512.jaxexport [--step S] [--iters T] \
        [--platforms cpu,cuda,tpu] [--with_trajectory]

writes ``psm512.jaxexport`` (serialized ``jax.export.Exported``, EMA params embedded as constants) and the sidecar
``psm512.jaxexport.json`` (input contract, T, training resolution, versions, config, checkpoint step). Run it with
``psm_jax/serving.py``, which needs only jax and numpy.

Signature, shape-polymorphic in the batch and in H = 32*h, W = 32*w::

    (image f32[B,H,W,3] in [-1, 1], mask f32[B,H,W,1] 1 = known, key uint32[2]) -> f32[B,H,W,3]
    --with_trajectory: -> (f32[B,H,W,3], sigma f32[T,B,H,W,3])

``key`` is ``jax.random.key_data(jax.random.key(seed))`` (threefry2x32), the key ``Inpainter`` derives from
``seed`` (``inpaint.sample_key``), so both give the same result for the same inputs and seed.

Shape polymorphism. Two things depend on concrete H and W and are avoided here: the CPU row banding of stride-2
convs (``models/ops.py`` takes the one-conv path for symbolic shapes; banding is bit-identical, so the numbers do
not change) and a ``lax.top_k`` picker, whose static k cannot come from symbolic H, W (the export always ranks
with the stable sort, ``EXPORT_SPREAD_OVERRIDES``; it picks the same pixels as top_k).
"""
from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax import export as jax_export

import psm_jax
from psm_jax import checkpoint, cli
from psm_jax.inpaint.run import run_spread
from psm_jax.inpaint.sizing import MULTIPLE

FORMAT = "psm-jax.export/1"
PRNG_IMPL = "threefry2x32"
# pixel_spread overrides of the exported spread: the stable-sort picker, because top_k's static k cannot be
# derived from symbolic H, W. Both pickers pick the same pixels, so the artifact matches an Inpainter whose
# config uses top_k.
EXPORT_SPREAD_OVERRIDES: dict[str, Any] = {"picker": "sort"}


def spread_fn(config: ml_collections.ConfigDict, variables: Any, num_iters: int, with_trajectory: bool = False):
    """``f(image, mask, key_data)``: the exported computation, with ``variables`` closed over (embedded)."""
    def f(image, mask, key_data):
        key = jax.random.wrap_key_data(key_data, impl=PRNG_IMPL)
        out = run_spread(config, variables, image, mask, key, num_iters=num_iters,
                         return_trajectory=with_trajectory, **EXPORT_SPREAD_OVERRIDES)
        if with_trajectory:
            return out["image"], out["trajectory"]["std"]
        return out["image"]
    return f


def input_specs() -> tuple[jax.ShapeDtypeStruct, ...]:
    """Symbolic batch and H = 32*h, W = 32*w (the generator's five stride-2 stages)."""
    b, H, W = jax_export.symbolic_shape(f"b, {MULTIPLE}*h, {MULTIPLE}*w")
    return (jax.ShapeDtypeStruct((b, H, W, 3), jnp.float32), jax.ShapeDtypeStruct((b, H, W, 1), jnp.float32),
            jax.ShapeDtypeStruct((2,), jnp.uint32))


def export_spread(config: ml_collections.ConfigDict, variables: Any, *, num_iters: int | None = None,
                  platforms: tuple[str, ...] | None = None, with_trajectory: bool = False) -> jax_export.Exported:
    """The ``jax.export.Exported`` of the whole spread (see the module docstring)."""
    T = int(num_iters or config.spread.test_iters)
    f = jax.jit(spread_fn(config, variables, T, with_trajectory))
    return jax_export.export(f, platforms=platforms)(*input_specs())


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def sidecar(exp: jax_export.Exported, config: ml_collections.ConfigDict, *, num_iters: int, step: int | None,
            with_trajectory: bool, artifact: str) -> dict[str, Any]:
    """What a server must know about the artifact (``serving.py`` checks inputs against it)."""
    m = MULTIPLE
    outputs = [{"name": "image", "dtype": "float32", "shape": ["B", "H", "W", 3], "range": [-1.0, 1.0],
                "note": "known pixels equal the input bit for bit"}]
    if with_trajectory:
        outputs.append({"name": "sigma", "dtype": "float32", "shape": [num_iters, "B", "H", "W", 3],
                        "note": "sigma_t per iteration, in [-1, 1] image units"})
    return {
        "format": FORMAT,
        "artifact": artifact,
        "inputs": [
            {"name": "image", "dtype": "float32", "shape": ["B", "H", "W", 3], "range": [-1.0, 1.0]},
            {"name": "mask", "dtype": "float32", "shape": ["B", "H", "W", 1], "convention": "1 = known, 0 = hole",
             "note": "binarised with > 0.5"},
            {"name": "key", "dtype": "uint32", "shape": [2],
             "note": f"jax.random.key_data(jax.random.key(seed)), impl {PRNG_IMPL}"},
        ],
        "outputs": outputs,
        "size_multiple": m,
        "symbolic_shape": f"b, {m}*h, {m}*w",
        "iters": int(num_iters),
        "training_resolution": int(config.model.resolution),
        "with_trajectory": bool(with_trajectory),
        "platforms": list(exp.platforms),
        "calling_convention_version": int(exp.calling_convention_version),
        "prng_impl": PRNG_IMPL,
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
        "checkpoint_step": step,
        "versions": {n: _version(n) for n in ("jax", "jaxlib", "flax", "numpy")} | {
            "psm_jax": psm_jax.__version__},
        "config": config.to_dict(),
    }


def save(exp: jax_export.Exported, meta: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(exp.serialize())
    side = sidecar_path(out)
    side.write_text(json.dumps(meta, indent=1, default=_json_default) + "\n")
    return out, side


def sidecar_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def _json_default(x: Any) -> Any:
    if isinstance(x, tuple):
        return list(x)
    return str(x)


def _check_out(out: Path) -> None:
    """The artifact and its sidecar can be written (before the weights are loaded)."""
    cli.check_output(out, "--out", folder=False)
    if sidecar_path(out).is_dir():
        raise ValueError(f"--out {out}: its sidecar {sidecar_path(out)} is a folder")


def main(argv: list[str] | None = None) -> int:
    ap = cli.ArgumentParser(prog="python -m psm_jax.export", description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, help="training workdir (or a checkpoints/<step> folder)")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    ap.add_argument("--out", required=True, help="artifact file; the sidecar is FILE.json")
    ap.add_argument("--iters", type=int, default=None, help="spread iterations T (default: the config's)")
    ap.add_argument("--platforms", default=None,
                    help="comma-separated lowering platforms, e.g. cpu,cuda,tpu (default: this machine's)")
    ap.add_argument("--with_trajectory", action="store_true", help="also return sigma per iteration")
    args = ap.parse_args(argv)
    if args.iters is not None and args.iters < 1:
        ap.error(f"--iters must be >= 1, got {args.iters}")
    platforms = None
    if args.platforms:
        platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
        bad = [p for p in platforms if p not in ("cpu", "cuda", "rocm", "tpu")]
        if bad or not platforms:
            ap.error(f"--platforms: unknown platform(s) {bad or args.platforms!r}; expected cpu, cuda, rocm, tpu")
    out = Path(args.out)
    try:
        _check_out(out)
        config, variables, step = checkpoint.load_checkpoint(args.workdir, args.step)
    except checkpoint.CheckpointReadError as e:
        return cli.error(f"--workdir {e}", last_words=True)
    except (FileNotFoundError, ValueError) as e:
        return cli.error(str(e) if str(e).startswith("--out") else f"--workdir {e}")
    T = int(args.iters or config.spread.test_iters)
    exp = export_spread(config, variables, num_iters=T, platforms=platforms, with_trajectory=args.with_trajectory)
    meta = sidecar(exp, config, num_iters=T, step=step, with_trajectory=args.with_trajectory, artifact=out.name)
    art, side = save(exp, meta, out)
    print(f"wrote {art} ({art.stat().st_size / 2**20:.1f} MiB, T = {T}, platforms {','.join(exp.platforms)}) "
          f"and {side}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
